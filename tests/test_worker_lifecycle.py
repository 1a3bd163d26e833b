"""`faultwatch run` as a process: probes and metrics, SIGTERM and restart, refused outputs."""

from __future__ import annotations

import json
from collections import Counter

from demo.broker import free_port
from model.scoring import Scorer
from tests.helpers import (
    committed,
    http_get,
    metric_samples,
    produce,
    read_topic,
    run_until,
    run_worker,
    start_worker,
    synthetic_values,
    unique,
    wait_for,
    worker_env,
)


def test_metrics_and_probes_over_http_during_a_run(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    scorer = Scorer.load(tiny_model_path)
    source, events, dlq = make_topic("windows", 2), make_topic("events"), make_topic("dlq")
    port = free_port()
    env = worker_env(
        bootstrap,
        tiny_model_path,
        events="windows",
        input_topic=source,
        events_topic=events,
        dlq_topic=dlq,
        group_id=unique("group"),
        metrics_port=port,
        lag_interval=0.3,
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        seen = []

        def ready() -> bool:
            seen.append(http_get(port, "/readyz")[0])
            return seen[-1] == 200

        wait_for(ready, 30, "/readyz to answer 200")
        assert 503 in seen, seen  # not ready before the group assigned the partitions
        assert http_get(port, "/healthz")[0] == 200
        assert http_get(port, "/nope")[0] == 404

        normal = synthetic_values(120, scorer.window)
        shifted = synthetic_values(6, scorer.window, shift=25.0, seed=1)
        bad = [b"{", b"[]", b"{}"]
        produce(
            bootstrap, source, [(b"pump-1", v, i % 2) for i, v in enumerate(normal + shifted + bad)]
        )

        def scraped() -> dict | None:
            status, body = http_get(port, "/metrics")
            samples = metric_samples(body) if status == 200 else {}
            done = samples.get(("faultwatch_windows_scored_total", ())) == 126
            lags = [v for (name, _), v in samples.items() if name == "faultwatch_consumer_lag"]
            return samples if done and len(lags) == 2 and not any(lags) else None

        samples = wait_for(scraped, 30, "126 windows scored and no lag")
    finally:
        code = worker.terminate()
    assert code == 0, worker.stderr

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    anomalies = value("faultwatch_anomalies_total")
    assert anomalies >= 6  # the shifted windows at least
    assert anomalies == len(read_topic(bootstrap, events))
    assert value("faultwatch_dead_letters_total", reason="invalid_json") == 1
    assert value("faultwatch_dead_letters_total", reason="schema") == 2
    assert value("faultwatch_dead_letters_total", reason="too_large") == 0
    assert value("faultwatch_score_count") == 126
    assert value("faultwatch_score_sum") > 0
    assert value("faultwatch_batch_duration_seconds_count") >= 1
    for partition in ("0", "1"):
        assert value("faultwatch_consumer_lag", topic=source, partition=partition) == 0
    assert (
        value(
            "faultwatch_model_info",
            version=scorer.version,
            window=str(scorer.window),
            channels=str(len(scorer.channels)),
        )
        == 1
    )
    assert value("faultwatch_model_threshold") == scorer.threshold
    assert value("faultwatch_assigned_partitions") == 2
    assert value("faultwatch_ready") == 1
    assert 0 <= value("faultwatch_seconds_since_last_commit") < 30
    assert "shutdown requested signal=SIGTERM" in worker.stderr


def test_sigterm_mid_stream_exits_0_and_a_restart_continues_without_gap(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    scorer = Scorer.load(tiny_model_path)
    source, scores = make_topic("windows", 2), make_topic("scores", 2)
    values = synthetic_values(20_000, scorer.window)  # long: SIGTERM lands mid-stream
    produce(bootstrap, source, [(b"pump-1", v, i % 2) for i, v in enumerate(values)])
    group, port = unique("group"), free_port()
    env = worker_env(
        bootstrap,
        tiny_model_path,
        events="windows",
        input_topic=source,
        scores_topic=scores,
        events_topic=make_topic("events"),
        dlq_topic=make_topic("dlq"),
        group_id=group,
        max_poll_records=20,
        metrics_port=port,
    )

    first = start_worker(env, tmp_path / "first.log")
    try:

        def scoring() -> bool:
            status, body = http_get(port, "/metrics")
            return (
                status == 200 and metric_samples(body)[("faultwatch_windows_scored_total", ())] > 0
            )

        wait_for(scoring, 30, "the first worker to score")
    finally:
        code = first.terminate()
    assert code == 0, first.stderr
    stopped_at = committed(bootstrap, group, source, 2)
    assert 0 < sum(o or 0 for o in stopped_at.values()) < len(values), "not stopped mid-stream"
    # Everything committed was published, once; nothing beyond it.
    published = Counter(_source(r) for r in read_topic(bootstrap, scores))
    assert set(published) == {(p, o) for p, end in stopped_at.items() for o in range(end or 0)}
    assert max(published.values()) == 1

    everything = {0: len(values) // 2, 1: len(values) // 2}
    second = run_until(
        env,
        tmp_path / "second.log",
        lambda: committed(bootstrap, group, source, 2) == everything,
        "the restarted worker to commit everything",
    )
    assert second.process.returncode == 0, second.stderr
    published = Counter(_source(r) for r in read_topic(bootstrap, scores))
    assert set(published) == {(i % 2, i // 2) for i in range(len(values))}  # no gap
    assert max(published.values()) == 1  # and, after a clean stop, no duplicate


def test_a_refused_dead_letter_stops_the_worker_and_commits_nothing(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    scorer = Scorer.load(tiny_model_path)
    source, dlq = make_topic("windows"), make_topic("dlq")
    records = [(b"pump-1", v, 0) for v in synthetic_values(5, scorer.window)]
    records.append((b"pump-1", b"x" * 5_000, 0))  # too_large, and too large to send on
    produce(bootstrap, source, records)
    group = unique("group")
    env = worker_env(
        bootstrap,
        tiny_model_path,
        events="windows",
        input_topic=source,
        dlq_topic=dlq,
        events_topic=make_topic("events"),
        group_id=group,
        max_record_bytes=1_000,
        max_request_bytes=2_000,
    )
    worker = run_worker(env, tmp_path / "worker.log", timeout=60)  # stops by itself
    assert worker.process.returncode == 1, worker.stderr
    error = worker.stderr.strip().splitlines()[-1]
    assert "ERROR" in error and dlq in error and "Traceback" not in worker.stderr
    assert committed(bootstrap, group, source, 1) == {0: None}
    assert read_topic(bootstrap, dlq) == []


def _source(record) -> tuple[int, int]:
    src = json.loads(record.value)["source"]
    return src["partition"], src["offset"]


def test_idle_exit_stops_cleanly_once_nothing_new_arrives(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    scorer = Scorer.load(tiny_model_path)
    source, group = make_topic("windows"), unique("group")
    produce(bootstrap, source, [(b"pump-1", v, 0) for v in synthetic_values(30, scorer.window)])
    env = worker_env(
        bootstrap,
        tiny_model_path,
        events="windows",
        input_topic=source,
        events_topic=make_topic("events"),
        dlq_topic=make_topic("dlq"),
        group_id=group,
    )
    worker = start_worker(env, tmp_path / "worker.log", "--idle-exit", "5")
    try:
        wait_for(lambda: committed(bootstrap, group, source, 1) == {0: 30}, 60, "all committed")
        assert worker.wait(30) == 0, worker.stderr  # then it stops by itself
    finally:
        worker.kill()
    assert "stopped reason=idle for 5 s" in worker.stderr
