"""Each architecture in the worker through the real broker: the same score as `faultwatch
score` and Scorer.score for the same window, and an event for each anomalous one."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cli.main import main as cli_main
from model import artifact as artifact_io
from model.preprocessing import sliding_windows
from model.scoring import Scorer
from tests.helpers import produce, read_topic, run_worker, unique, window_value, worker_env
from tests.synthetic import FAMILY, family_model, normal_values, write_csv


@pytest.mark.parametrize("architecture", list(FAMILY))
def test_the_worker_scores_each_architecture_as_score_does(
    architecture, bootstrap, make_topic, tmp_path
):
    model = tmp_path / f"{architecture}.fwm"
    artifact_io.save(family_model(architecture).artifact, model)
    scorer = Scorer.load(model)
    values = normal_values(160, seed=11)
    values[100:, 1] += 1.0  # a pressure fault from row 100
    data = write_csv(tmp_path / "pump.csv", values)
    windows = sliding_windows(values, scorer.window)  # window b ends at row b + W - 1
    records = [
        (b"pump-1", window_value("pump-1", 1_700_000_000 + b, w), None)
        for b, w in enumerate(windows)
    ]
    topics = {name: make_topic(name) for name in ("windows", "events", "scores", "dlq")}
    produce(bootstrap, topics["windows"], records)
    env = worker_env(
        bootstrap,
        model,
        events="windows",  # one event per anomalous window, checked below
        input_topic=topics["windows"],
        events_topic=topics["events"],
        scores_topic=topics["scores"],
        dlq_topic=topics["dlq"],
        group_id=unique("group"),
        max_poll_records=64,
    )
    worker = run_worker(env, tmp_path / "worker.log", "--idle-exit", "2", timeout=120)
    assert worker.process.returncode == 0, worker.stderr

    scores = sorted(
        (json.loads(r.value) for r in read_topic(bootstrap, topics["scores"])),
        key=lambda s: s["source"]["offset"],
    )
    assert [s["source"]["offset"] for s in scores] == list(range(len(windows)))
    worker_scores = np.array([s["score"] for s in scores])
    exact = scorer.score(windows)
    np.testing.assert_allclose(worker_scores, exact.score, rtol=1e-6)

    out = tmp_path / "scores.csv"
    assert cli_main(["score", str(data), "--model", str(model), "--out", str(out)]) == 0
    with out.open() as f:
        offline = np.array([float(row["score"]) for row in csv.DictReader(f)])
    np.testing.assert_allclose(worker_scores, offline, rtol=2e-5)

    events = [json.loads(r.value) for r in read_topic(bootstrap, topics["events"])]
    assert sorted(e["source"]["offset"] for e in events) == list(np.flatnonzero(exact.anomaly))
    assert exact.anomaly[-1] and not exact.anomaly[:50].any()
    assert all(e["model_version"] == scorer.version for e in events)
    assert read_topic(bootstrap, topics["dlq"]) == []
