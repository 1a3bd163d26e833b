import numpy as np
import pytest

from model.recording import read_recording
from model.simulator import CHANNELS, FAULTS, simulate, write_csv


def test_same_seed_same_run_and_normal_runs_have_no_labels():
    a, b = simulate(300, seed=4), simulate(300, seed=4)
    assert np.array_equal(a.values, b.values)
    assert a.labels.sum() == 0
    assert np.isfinite(a.values).all()


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_changes_only_its_labelled_rows(fault):
    normal = simulate(600, seed=2)
    faulty = simulate(600, seed=2, fault=fault, fault_start=300, fault_rows=200)
    assert (faulty.labels[300:500] == 1).all() and faulty.labels.sum() == 200
    changed = np.flatnonzero((normal.values != faulty.values).any(axis=1))
    assert changed.size > 0 and changed.min() >= 300 and changed.max() < 500


def test_written_csv_reads_back_as_a_recording(tmp_path):
    run = simulate(120, seed=1, fault="leak")
    recording = read_recording(write_csv(run, tmp_path / "run.csv"))
    assert recording.channels == CHANNELS
    assert np.allclose(recording.values, run.values, rtol=1e-5)


def test_the_plant_labels_its_fault_only_and_keeps_its_nuisances_unlabelled():
    from model.simulator import simulate_plant

    normal = simulate_plant(14, seed=3)
    assert normal.run.labels.sum() == 0 and normal.fault is None
    assert np.isnan(normal.run.values).any()  # the maintenance stop and dropouts: no readings
    assert "maintenance stop and restart" in normal.nuisances
    worn = simulate_plant(14, seed=3, scenario="bearing_wear")
    a, b = worn.fault
    assert worn.run.labels[a:b].all() and worn.run.labels.sum() == b - a
    same = np.isfinite(normal.run.values[:a]) & np.isfinite(worn.run.values[:a])
    assert np.array_equal(normal.run.values[:a][same], worn.run.values[:a][same])
    assert worn.run.values[b - 1, 0] > normal.run.values[b - 1, 0] + 0.005  # vibration crept up
