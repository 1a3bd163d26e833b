"""Models in a running worker, through the real broker: routing by machine, shadow scoring,
hot reload and rollback without a restart."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
from pathlib import Path

import numpy as np

from cli.main import main as cli_main
from demo.broker import free_port
from model import artifact as artifact_io
from model.artifact import Artifact
from model.preprocessing import sliding_windows
from model.scoring import Scorer
from tests.helpers import (
    committed,
    headers,
    http_get,
    metric_samples,
    metric_total,
    produce,
    read_topic,
    run_worker,
    start_worker,
    unique,
    wait_for,
    window_value,
    worker_env,
)
from tests.synthetic import PRESS_CHANNELS, normal_values, press_model, press_values, tiny_model
from tests.synthetic import write_csv as write_recording

T0 = 1_700_000_000


def pump(**changes) -> Artifact:
    return dataclasses.replace(tiny_model().artifact, **({"machines": ("pump-*",)} | changes))


def install(path: Path, artifact: Artifact) -> Path:
    """Write next to it and rename over it: a worker never sees half a file."""
    hidden = path.with_name("." + path.name + ".tmp")
    artifact_io.save(artifact, hidden)
    os.replace(hidden, path)
    return path


def records_of(machine: str, windows: np.ndarray, start: int = 0) -> list[tuple]:
    key = machine.encode()
    return [(key, window_value(machine, T0 + start + b, w), None) for b, w in enumerate(windows)]


def offline_scores(tmp_path: Path, model: Path, values: np.ndarray, channels: list[str]):
    """`faultwatch score` of a recording: one score per window, in order."""
    data = write_recording(tmp_path / f"{model.stem}.csv", values, channels)
    out = tmp_path / f"{model.stem}-scores.csv"
    assert cli_main(["score", str(data), "--model", str(model), "--out", str(out)]) == 0
    with out.open() as f:
        return np.array([float(row["score"]) for row in csv.DictReader(f)])


def test_machines_go_to_their_models_and_a_candidate_shadows_them(bootstrap, make_topic, tmp_path):
    live, candidates = tmp_path / "models", tmp_path / "candidates"
    live.mkdir(), candidates.mkdir()
    install(live / "pump.fwm", pump())
    install(live / "press.fwm", press_model().artifact)
    # A stricter candidate for the pumps, and a file that is no model: refused, never fatal.
    candidate = install(candidates / "pump-next.fwm", pump(threshold=0.3, training={"next": 1}))
    (candidates / "broken.fwm").write_bytes(b"not a model")
    pumps = normal_values(60, seed=21)
    pumps[45:, 1] += 1.0  # a pressure fault
    presses = press_values(50, seed=22)
    presses[40:] *= 1.5
    pump_windows = sliding_windows(pumps, 10)  # (51, 10, 4)
    press_windows = sliding_windows(presses, 6)  # (45, 6, 3)
    topics = {n: make_topic(n, 2 if n == "windows" else 1) for n in ("windows", "events")}
    topics |= {n: make_topic(n) for n in ("scores", "dlq", "shadow")}
    produce(
        bootstrap,
        topics["windows"],
        records_of("pump-1", pump_windows)
        + records_of("press-1", press_windows)
        + records_of("compressor-1", pump_windows[:3]),  # no model serves compressors
    )
    env = worker_env(
        bootstrap,
        live,
        events="windows",
        input_topic=topics["windows"],
        events_topic=topics["events"],
        scores_topic=topics["scores"],
        dlq_topic=topics["dlq"],
        shadow_model_path=candidates,
        shadow_topic=topics["shadow"],
        group_id=unique("group"),
    )
    worker = run_worker(env, tmp_path / "worker.log", "--idle-exit", "2", timeout=120)
    assert worker.process.returncode == 0, worker.stderr
    assert "model refused" in worker.stderr and "broken.fwm" in worker.stderr

    scores: dict[str, list[dict]] = {}
    for record in read_topic(bootstrap, topics["scores"]):
        document = json.loads(record.value)
        scores.setdefault(document["machine_id"], []).append(document)
    assert sorted(scores) == ["press-1", "pump-1"]
    for machine, model, values, channels in (
        ("pump-1", live / "pump.fwm", pumps, None),
        ("press-1", live / "press.fwm", presses, PRESS_CHANNELS),
    ):
        got = sorted(scores[machine], key=lambda s: s["timestamp"])
        expected = offline_scores(tmp_path, model, values, channels or list(pump().channels))
        np.testing.assert_allclose([s["score"] for s in got], expected, rtol=2e-5)
        assert {s["model_version"] for s in got} == {Scorer.load(model).version}
    dead = read_topic(bootstrap, topics["dlq"])
    assert [headers(r)["faultwatch.error.reason"] for r in dead] == [b"no_model"] * 3
    events = [json.loads(r.value) for r in read_topic(bootstrap, topics["events"])]
    assert {e["machine_id"] for e in events} == {"pump-1", "press-1"}
    next_version = Scorer.load(candidate).version
    assert next_version not in {e["model_version"] for e in events}  # never in the events

    shadow = [json.loads(r.value) for r in read_topic(bootstrap, topics["shadow"])]
    assert len(shadow) == len(pump_windows)  # every pump window, no press window
    assert {(s["machine_id"], s["model_version"]) for s in shadow} == {("pump-1", next_version)}
    live_scores = {s["source"]["offset"]: s["score"] for s in scores["pump-1"]}
    assert all(s["live"]["score"] == live_scores[s["source"]["offset"]] for s in shadow)
    assert sum(s["anomaly"] for s in shadow) > sum(s["live"]["anomaly"] for s in shadow)


def test_an_ambiguous_directory_refuses_to_start_naming_both_files(bootstrap, tmp_path):
    install(tmp_path / "a.fwm", pump())
    install(tmp_path / "b.fwm", pump(training={"copy": 1}))  # pump-* twice
    worker = run_worker(worker_env(bootstrap, tmp_path), tmp_path / "worker.log", timeout=60)
    assert worker.process.returncode == 1
    last = worker.stderr.strip().splitlines()[-1]
    assert "ambiguous models" in last and "a.fwm" in last and "b.fwm" in last
    assert "Traceback" not in worker.stderr


def test_models_are_replaced_refused_and_removed_while_the_worker_runs(
    bootstrap, make_topic, tmp_path
):
    models = tmp_path / "models"
    models.mkdir()
    old = install(models / "pump.fwm", pump())
    install(models / "press.fwm", press_model().artifact)
    versions = [Scorer.load(old).version]
    topics = {n: make_topic(n) for n in ("windows", "events", "scores", "dlq")}
    port = free_port()
    env = worker_env(
        bootstrap,
        models,
        events="windows",
        input_topic=topics["windows"],
        events_topic=topics["events"],
        scores_topic=topics["scores"],
        dlq_topic=topics["dlq"],
        group_id=unique("group"),
        metrics_port=port,
        model_reload_seconds=0.5,
    )
    worker = start_worker(env, tmp_path / "worker.log")

    def metrics() -> dict:
        status, body = http_get(port, "/metrics")
        return metric_samples(body) if status == 200 else {}

    def scored(count: int) -> None:
        wait_for(
            lambda: metric_total(metrics(), "faultwatch_windows_scored_total") == count,
            60,
            f"{count} windows scored",
        )

    def serving() -> set[tuple[str, str]]:
        return {
            (dict(labels)["model"], dict(labels)["version"])
            for (name, labels), _ in metrics().items()
            if name == "faultwatch_model_info"
        }

    def phase(n: int) -> list[tuple]:
        rows = normal_values(19, seed=30 + n)
        rows[14:, 1] += 1.0  # the last windows anomalous: each phase has events
        return records_of("pump-1", sliding_windows(rows, 10), start=10 * n)

    try:
        produce(bootstrap, topics["windows"], phase(0))
        scored(10)
        new = install(models / "pump.fwm", pump(training={"retrained": True}))
        versions.append(Scorer.load(new).version)
        wait_for(lambda: ("pump", versions[1]) in serving(), 30, "the new pump model")
        produce(bootstrap, topics["windows"], phase(1))
        scored(20)
        (models / "pump.fwm").write_bytes(b"half a model")  # written in place: refused
        wait_for(
            lambda: metrics().get(("faultwatch_model_reload_failures_total", ())) == 1,
            30,
            "the refused file counted",
        )
        produce(bootstrap, topics["windows"], phase(2))
        scored(30)
        (models / "press.fwm").unlink()
        os.kill(worker.process.pid, signal.SIGHUP)  # at once, not at the next re-read
        wait_for(lambda: {m for m, _ in serving()} == {"pump"}, 30, "press out of service")
        produce(bootstrap, topics["windows"], records_of("press-1", press_values(10)[None, :6]))
        wait_for(
            lambda: metrics().get(("faultwatch_dead_letters_total", (("reason", "no_model"),))),
            30,
            "the press window dead-lettered",
        )
        assert worker.process.poll() is None  # the same process all along
    finally:
        code = worker.terminate()
    assert code == 0, worker.stderr
    assert worker.stderr.count(" starting models=") == 1

    scores = sorted(
        (json.loads(r.value) for r in read_topic(bootstrap, topics["scores"])),
        key=lambda s: s["source"]["offset"],
    )
    assert [s["source"]["offset"] for s in scores] == list(range(30))  # each window once
    expected = [versions[0]] * 10 + [versions[1]] * 20  # the refused file changed nothing
    assert [s["model_version"] for s in scores] == expected
    events = [json.loads(r.value) for r in read_topic(bootstrap, topics["events"])]
    by_phase = {(e["source"]["offset"] // 10, e["model_version"]) for e in events}
    assert by_phase == {(0, versions[0]), (1, versions[1]), (2, versions[1])}
    assert committed(bootstrap, env["FAULTWATCH_GROUP_ID"], topics["windows"], 1) == {0: 31}
