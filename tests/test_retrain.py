"""`faultwatch retrain` and `promote --rollback` on the real broker: labelled history in, a
candidate promoted only when it is better, the previous model kept and put back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cli.main import main
from cli.retrain import METRICS, WORKDIR, read_metrics, write_metrics
from model import artifact as artifact_io
from model.promotion import previous_of
from model.recording import format_time
from tests.helpers import metric_samples, produce
from tests.synthetic import CHANNELS, normal_values
from worker.retraining import RetrainCollector

T0 = 1_700_000_000
ROWS, WINDOW = 1000, 10  # the tiny model's window
NUISANCES = [(100, 140), (250, 290), (400, 440), (700, 740), (850, 890)]  # rows: tank cleaned
FAULT = (550, 590)  # rows: the flow jumps


def at(row: int) -> str:
    return format_time(datetime.fromtimestamp(T0 + row, UTC))


@pytest.fixture
def plant(bootstrap, make_topic, monkeypatch, tmp_path, tiny_model_path, request) -> dict:
    """pump-1's history: windows (or, as the fixture's parameter, samples) with three
    nuisances and a fault, each an episode the live model (the tiny one, which never saw the
    nuisance) opened; a models directory holding it."""
    topics = {name: make_topic(name) for name in ("windows", "events", "control")}
    for name, value in (
        ("BOOTSTRAP_SERVERS", bootstrap),
        ("EVENTS_TOPIC", topics["events"]),
        ("CONTROL_TOPIC", topics["control"]),
        ("EPISODE_OPEN_SECONDS", "0"),
        ("EPISODE_CLEAR_SECONDS", "5"),
    ):
        monkeypatch.setenv(f"FAULTWATCH_{name}", value)
    rows = normal_values(ROWS, seed=3)
    for a, b in NUISANCES:
        rows[a:b, 3] += 1.5
    rows[FAULT[0] : FAULT[1], 0] += 25.0
    if getattr(request, "param", "windows") == "samples":
        records = [(b"pump-1", _sample(row, rows[row]), None) for row in range(ROWS)]
    else:
        records = [
            (b"pump-1", _window(end, rows[end - WINDOW + 1 : end + 1]), None)
            for end in range(WINDOW - 1, ROWS)
        ]
    produce(bootstrap, topics["windows"], records)
    events = []
    for n, (a, b) in enumerate([*NUISANCES, FAULT]):
        episode = {"machine_id": "pump-1", "episode_id": f"ep-{n}", "started_at": at(a)}
        events += [
            (b"pump-1", json.dumps(episode | {"kind": "opened"}).encode(), None),
            (
                b"pump-1",
                json.dumps(episode | {"kind": "closed", "ended_at": at(b + 10)}).encode(),
                None,
            ),
        ]
    produce(bootstrap, topics["events"], events)
    models = tmp_path / "models"
    models.mkdir()
    live = models / "pump.fwm"
    live.write_bytes(tiny_model_path.read_bytes())
    return {"topics": topics, "models": models, "live": live}


def _window(end: int, values: np.ndarray) -> bytes:
    document = {"machine_id": "pump-1", "timestamp": at(end), "channels": CHANNELS}
    return json.dumps(document | {"values": values.tolist()}).encode()


def _sample(row: int, values: np.ndarray) -> bytes:
    document = {"machine_id": "pump-1", "timestamp": at(row)}
    return json.dumps(
        document | {"values": dict(zip(CHANNELS, values.tolist(), strict=True))}
    ).encode()


def label(*labels: str) -> None:
    for n, kind in enumerate(labels):
        assert main(["label", f"ep-{n}", "--as", kind, "--by", "test"]) == 0


def retrain(plant: dict, *flags: str) -> dict:
    argv = ["retrain", "--from-topic", plant["topics"]["windows"], "--models", str(plant["models"])]
    assert main([*argv, "--epochs", "8", "--quiet", *flags]) == 0
    return json.loads((plant["models"] / WORKDIR / "report.json").read_text())


def test_a_better_candidate_is_promoted_and_a_rollback_puts_the_live_one_back(plant, capsys):
    label("false-alarm", "false-alarm", "false-alarm", "false-alarm", "false-alarm", "fault")
    before = artifact_io.load(plant["live"]).version
    report = retrain(plant, "--promote")
    (entry,) = report["models"]
    out = capsys.readouterr().out
    assert entry["decision"] == "promoted", out
    live, candidate = entry["evaluation"]["live"], entry["evaluation"]["candidate"]
    assert entry["evaluation"]["confirmed_faults"] == 1
    assert live["caught"] == candidate["caught"] == ["ep-5"]
    assert live["false_by_label"]["false-alarm"] >= 5  # each nuisance, at least once
    assert candidate["false_episodes"] < live["false_episodes"]
    assert entry["training"]["normal_episodes"] == 5
    assert "confirmed faults caught: live 1/1, candidate 1/1" in out
    # The candidate serves under the live name; the model it replaced is kept, hidden.
    assert artifact_io.load(plant["live"]).version == entry["candidate_version"] != before
    assert artifact_io.load(previous_of(plant["live"])).version == before
    assert sorted(p.name for p in plant["models"].glob("*.fwm")) == ["pump.fwm"]
    metrics = read_metrics(plant["models"] / WORKDIR / METRICS)
    assert metrics["faultwatch_retrain_promotions_total"] == 1
    assert metrics["faultwatch_retrain_refusals_total"] == 0

    assert main(["promote", "--rollback", str(plant["live"])]) == 0
    assert f"version {before} in service again" in capsys.readouterr().out
    assert artifact_io.load(plant["live"]).version == before
    kept = artifact_io.load(previous_of(plant["live"])).version
    assert kept == entry["candidate_version"]  # a second rollback would undo the first
    metrics = read_metrics(plant["models"] / WORKDIR / METRICS)
    assert metrics["faultwatch_retrain_rollbacks_total"] == 1
    assert metrics["faultwatch_retrain_runs_total"] == 1


@pytest.mark.parametrize("plant", ["samples"], indirect=True)
def test_samples_are_assembled_on_the_live_model_s_grid_as_its_workers_do(plant, capsys):
    label("false-alarm", "false-alarm", "false-alarm", "false-alarm", "false-alarm", "fault")
    report = retrain(plant, "--promote")
    (entry,) = report["models"]
    assert entry["decision"] == "promoted", capsys.readouterr().out
    # every window but the last ones, still open within the grace (5 s), as a worker has them
    assert ROWS - WINDOW + 1 - 6 <= entry["windows"] < ROWS - WINDOW + 1
    assert entry["evaluation"]["candidate"]["caught"] == ["ep-5"]


def test_a_candidate_that_would_miss_a_confirmed_fault_is_refused_and_nothing_changes(
    plant, capsys
):
    # The third nuisance called a fault: a candidate that learnt the first two as normal
    # no longer alarms on it, so it must not replace the model that did.
    label("false-alarm", "false-alarm", "false-alarm", "false-alarm", "fault", "fault")
    live_bytes = plant["live"].read_bytes()
    report = retrain(plant, "--promote")
    (entry,) = report["models"]
    assert entry["decision"] == "refused", capsys.readouterr().out
    assert "ep-4" in entry["evaluation"]["live"]["caught"]
    assert "ep-4" not in entry["evaluation"]["candidate"]["caught"]
    assert any("misses 1 confirmed fault" in r and "ep-4" in r for r in entry["reasons"])
    assert plant["live"].read_bytes() == live_bytes
    assert not previous_of(plant["live"]).exists()
    metrics = read_metrics(plant["models"] / WORKDIR / METRICS)
    assert metrics["faultwatch_retrain_refusals_total"] == 1
    assert metrics["faultwatch_retrain_promotions_total"] == 0


def test_a_rollback_without_a_kept_model_is_one_line(tmp_path: Path, tiny_model_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    (models / "pump.fwm").write_bytes(tiny_model_path.read_bytes())
    assert main(["promote", "--rollback", "pump", "--models", str(models)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to roll back to" in err


def test_workers_serve_the_retrain_job_s_counts_from_the_models_directory(tmp_path: Path):
    registry = CollectorRegistry()
    registry.register(RetrainCollector(tmp_path))
    assert "faultwatch_retrain" not in generate_latest(registry).decode()  # no run yet
    write_metrics(tmp_path / WORKDIR / METRICS, {"runs": 1, "refusals": 1}, last_run=1.7e9)
    write_metrics(tmp_path / WORKDIR / METRICS, {"runs": 1, "promotions": 1}, 1.8e9, True)
    samples = metric_samples(generate_latest(registry).decode())
    assert samples[("faultwatch_retrain_runs_total", ())] == 2
    assert samples[("faultwatch_retrain_promotions_total", ())] == 1
    assert samples[("faultwatch_retrain_refusals_total", ())] == 1
    assert samples[("faultwatch_retrain_rollbacks_total", ())] == 0
    assert samples[("faultwatch_retrain_last_run_timestamp_seconds", ())] == 1.8e9
    assert samples[("faultwatch_retrain_last_promotion_timestamp_seconds", ())] == 1.8e9
    (tmp_path / WORKDIR / METRICS).write_text("other_series 1\n")
    assert "other_series" not in generate_latest(registry).decode()  # only the job's pass
