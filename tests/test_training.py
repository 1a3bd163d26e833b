import dataclasses

import numpy as np
import pytest
import torch

from model import artifact as artifact_io
from model.errors import DataError
from model.preprocessing import sliding_windows
from model.scoring import Scorer
from model.training import _split_windows, summary, train
from tests.synthetic import TINY, normal_values, recording, tiny_model


def test_same_seed_gives_the_same_model():
    first = tiny_model().artifact
    again = train([recording(normal_values(600))], TINY).artifact
    assert first.version == again.version
    for name, tensor in first.state.items():
        assert torch.equal(tensor, again.state[name])


def test_calibration_holds_on_normal_data_the_model_has_not_seen():
    # Normal runs of the same process with other noise: no window took part in fitting,
    # stopping or calibrating, so this is what a deployed model meets on a good day.
    scorer = Scorer(tiny_model().artifact)
    unseen = [sliding_windows(normal_values(600, seed=seed), scorer.window) for seed in (21, 22)]
    flagged = np.concatenate([scorer.score(w).anomaly for w in unseen])
    assert flagged.mean() < 0.01


def test_the_slices_share_no_row_and_run_in_time_order():
    values = np.arange(600.0)[:, None].repeat(4, axis=1)  # each cell holds its own row number
    config = dataclasses.replace(TINY, window=10)
    split = _split_windows([values], [None], config)

    def first(w):
        return int(w[:, :, 0].min()), int(w[:, :, 0].max())

    fit, stop, ref = (first(w) for w in (split.fit, split.stop, split.reference))
    assert fit[1] < stop[0] and stop[1] < ref[0]  # no row in two slices: purged
    assert split.purged == 2 * (config.window - 1)
    assert len(split.fit) + len(split.stop) + len(split.reference) + split.purged == 591
    assert split.rows[:, 0].max() == fit[1]  # the standardiser's rows: the fitting ones only


def test_statistics_and_detectors_are_fitted_on_the_fitting_rows_only():
    values = normal_values(600)
    values[:, 3] = 70.0 + np.random.default_rng(3).normal(0, 1, 600)  # noise: never slow
    values[500:, 3] += 100.0  # inside the training rows, but in the held-out tail
    result = train([recording(values)], dataclasses.replace(TINY, epochs=1))
    artifact = result.artifact
    assert abs(artifact.standardizer.mean[3] - 70.0) < 0.5
    assert artifact.standardizer.scale[3] < 2.0  # fitted on the shifted rows: about 40
    # the shifted rows are unseen by every fit, so calibration meets them as a level shift
    assert artifact.references["level"] > 50


def test_labelled_windows_stay_out_of_the_normal_fit_and_train_to_reconstruct_badly():
    values = normal_values(600)
    labels = np.zeros(600, dtype=bool)
    values[200:260, 1] += 0.5  # a known fault inside the training rows
    labels[200:260] = True
    known = dataclasses.replace(recording(values), labels=labels)
    config = dataclasses.replace(TINY, epochs=4, detectors=("autoencoder",))
    with_labels = train([known], dataclasses.replace(config, anomaly_weight=1.0))
    assert with_labels.windows_labelled == 60 + config.window - 1
    assert with_labels.windows_train + with_labels.windows_holdout < 591 - 60
    faulty = sliding_windows(values[200:260], config.window)
    without = train([known], config)
    pushed = Scorer(with_labels.artifact).detector_scores(faulty)["autoencoder"].mean()
    plain = Scorer(without.artifact).detector_scores(faulty)["autoencoder"].mean()
    assert pushed > plain


def test_training_statistics_come_from_the_training_rows_only():
    values = normal_values(600)
    values[300:, 0] += 100.0  # rows past --train-rows must not move the statistics
    rec = recording(values)
    short = train([rec], TINY.__class__(**{**TINY.__dict__, "train_rows": 300, "epochs": 1}))
    assert abs(short.artifact.standardizer.mean[0] - 32.0) < 0.5


def test_long_gaps_are_excluded_and_counted():
    values = normal_values(600)
    values[100:102, 1] = np.nan  # short: interpolated
    values[400:420, 2] = np.nan  # long: its windows are dropped
    result = train([recording(values)], TINY.__class__(**{**TINY.__dict__, "epochs": 1}))
    figures = summary(result)
    assert figures["gaps_filled"] == 2
    assert figures["windows_skipped"] == 20 + TINY.window - 1


def test_too_few_rows_for_the_window_is_a_clear_error():
    with pytest.raises(DataError, match="too few normal windows"):
        train([recording(normal_values(10))], TINY)


def test_the_model_stores_its_sampling_interval_and_a_reload_keeps_it(tmp_path):
    # The rows' median step: one late row and one repeated time do not move it.
    rec = recording(normal_values(600))
    times = [float(t) for t in rec.timestamps]
    times[100] += 0.7
    times[200] = times[199]
    rec = dataclasses.replace(rec, timestamps=[str(t) for t in times])
    artifact = train([rec], TINY).artifact
    assert artifact.sampling_interval == pytest.approx(1.0)  # the synthetic rows are 1 s apart
    artifact_io.save(artifact, tmp_path / "m.fwm")
    loaded = artifact_io.load(tmp_path / "m.fwm")
    assert loaded.sampling_interval == artifact.sampling_interval
    assert loaded.summary()["sampling_interval"] == pytest.approx(1.0)
