"""Samples and tags through `faultwatch run` on the real broker: the same scores and episodes
as `score` gives for the recording, disorder within the grace, late and future dead letters, a
gap, SIGKILLs, and a gateway's own client (librdkafka, through confluent-kafka) on both ends.
Every wait is bounded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from cli.main import main as cli_main
from cli.replay import reading_records
from demo.broker import free_port
from model.recording import read_recording
from tests.helpers import (
    committed,
    headers,
    kill_mid_stream,
    partitions_held,
    produce,
    read_topic,
    run_worker,
    start_worker,
    unique,
    wait_for,
    worker_env,
)
from tests.synthetic import normal_values, write_csv
from worker.inputs.assembler import Assembler, Grid, Rules
from worker.inputs.readings import ReadingDecoder

EPISODE_ENV = {  # FAULTWATCH_EPISODE_*: one reading a second
    "episode_open_seconds": 0,
    "episode_clear_seconds": 5,
    "episode_clear_ratio": 1.0,
    "episode_update_seconds": 30,
    "episode_silent_seconds": 600,
}
GRACE = 2  # FAULTWATCH_INPUT_GRACE_SECONDS of these tests
RULES = Rules.of(GRACE, 5, 120, 600)


def topics(make_topic, partitions: int = 1) -> dict[str, str]:
    return {
        "input_topic": make_topic("readings", partitions),
        "state_topic": make_topic("state", partitions),
        "control_topic": make_topic("control"),
        "events_topic": make_topic("events"),
        "scores_topic": make_topic("scores"),
        "dlq_topic": make_topic("dlq"),
    }


def pump_csv(path: Path, rows: int = 150, seed: int = 11) -> Path:
    """A pump that runs normally, faults for 20 s, then runs normally again."""
    values = normal_values(rows, seed=seed)
    values[40:60] += 3.0
    return write_csv(path, values)


def env_for(bootstrap, model, names, form, **more) -> dict[str, str]:
    return worker_env(
        bootstrap,
        model,
        group_id=unique("group"),
        input_format=form,
        input_grace_seconds=GRACE,
        **names,
        **EPISODE_ENV,
        **more,
    )


def scores_of(bootstrap: str, topic: str) -> dict[tuple[str, str], float]:
    """(machine, window time) -> score; a window scored twice must have scored the same."""
    found: dict[tuple[str, str], float] = {}
    for record in read_topic(bootstrap, topic):
        doc = json.loads(record.value)
        key = (doc["machine_id"], doc["timestamp"])
        assert found.setdefault(key, doc["score"]) == doc["score"], f"{key} scored differently"
    return found


def offline_scores(data: Path, model: Path, tmp_path: Path, monkeypatch) -> tuple[dict, list]:
    """`faultwatch score --episodes` of the recording: time -> score, and its episodes."""
    for name, value in EPISODE_ENV.items():
        monkeypatch.setenv(f"FAULTWATCH_{name.upper()}", str(value))
    out, episodes = tmp_path / "scores.csv", tmp_path / "episodes.csv"
    argv = ["score", str(data), "--model", str(model), "--out", str(out)]
    assert cli_main([*argv, "--episodes", str(episodes)]) == 0
    scores = {row["timestamp"]: float(row["score"]) for row in csv.DictReader(out.open())}
    found = [(r["started_at"], r["ended_at"]) for r in csv.DictReader(episodes.open())]
    return scores, found


def closed_episodes(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["started_at"], e["ended_at"]) for e in events if e["kind"] == "closed"]


def test_samples_from_librdkafka_and_tags_score_as_score_scores_the_recording(
    bootstrap, make_topic, tiny_model_path, tmp_path, monkeypatch
):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    data = pump_csv(tmp_path / "pump-1.csv")
    expected, episodes = offline_scores(data, tiny_model_path, tmp_path, monkeypatch)
    assert len(episodes) == 1 and episodes[0][1]  # one fault, closed before the end
    recording = read_recording(data)
    for form in ("samples", "tags"):
        names = topics(make_topic)
        if form == "samples":  # as a plant's gateway sends them: librdkafka
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
            for _, value in reading_records("pump-1", recording, "samples"):
                producer.produce(names["input_topic"], key=b"pump-1", value=value)
            assert producer.flush(30) == 0
        else:
            replay = ["replay", str(data), "--topic", names["input_topic"], "--as", "tags"]
            assert cli_main([*replay, "--bootstrap-servers", bootstrap]) == 0
        env = env_for(bootstrap, tiny_model_path, names, form)
        worker = run_worker(env, tmp_path / f"{form}.log", "--idle-exit", "3", timeout=90)
        assert worker.process.returncode == 0, worker.stderr
        got = {t: s for (_, t), s in scores_of(bootstrap, names["scores_topic"]).items()}
        # Every window but those of the last bucket and the grace before it, which stay open.
        assert sorted(got) == sorted(expected)[: len(expected) - GRACE - 1]
        np.testing.assert_allclose(
            [got[t] for t in sorted(got)], [expected[t] for t in sorted(got)], rtol=1e-5
        )
        if form == "samples":  # read back by the gateway's client
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader")})
            # Assigned, not subscribed: no group join to wait for.
            consumer.assign([TopicPartition(names["events_topic"], 0, OFFSET_BEGINNING)])
            events: list[dict] = []
            try:
                for _ in range(60):
                    for message in consumer.consume(num_messages=100, timeout=0.5):
                        assert message.error() is None
                        events.append(json.loads(message.value()))
                    if any(e["kind"] == "closed" for e in events):
                        break
            finally:
                consumer.close()
        else:
            events = [json.loads(r.value) for r in read_topic(bootstrap, names["events_topic"])]
        assert closed_episodes(events) == episodes
        assert read_topic(bootstrap, names["dlq_topic"]) == []


def expected_windows(records: list[bytes], channels: list[str], window: int) -> set[str]:
    """The windows the worker must score: the records, in topic order, through the assembler."""
    decoded = ReadingDecoder("tags", [channels], 1_000_000).decode_batch(records)
    grid = Grid.of(channels, window, 1.0)
    out = Assembler(RULES).assemble(decoded.readings, [grid], decoded.readings.slots)
    return {t for built in out.built for t in built.timestamps()}


def test_disorder_late_and_future_readings_and_a_gap(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    values = normal_values(120, seed=3)
    values[70:80, 1] = np.nan  # 10 s without pressure: past the fill limit of 5
    data = write_csv(tmp_path / "pump-2.csv", values)
    names = topics(make_topic)
    disorder = ["--shuffle-within", "1", "--jitter", "1", "--late-share", "0.03", "--seed", "5"]
    replay = ["replay", str(data), "--topic", names["input_topic"], "--as", "tags", *disorder]
    env = env_for(bootstrap, tiny_model_path, names, "tags")
    # --late-share holds records back past this process's grace (the default 5 s): past 2 s.
    assert cli_main([*replay, "--bootstrap-servers", bootstrap]) == 0
    ahead = json.dumps({"machine_id": "pump-2", "channel": "flow", "timestamp": 2e9, "value": 1.0})
    produce(bootstrap, names["input_topic"], [(b"pump-2", ahead.encode(), None)])
    sent = [r.value for r in read_topic(bootstrap, names["input_topic"])]
    worker = run_worker(env, tmp_path / "worker.log", "--idle-exit", "3", timeout=90)
    assert worker.process.returncode == 0, worker.stderr
    dead = read_topic(bootstrap, names["dlq_topic"])
    reasons = [headers(r)["faultwatch.error.reason"].decode() for r in dead]
    assert reasons.count("future") == 1 and reasons.count("late") >= 3
    assert set(reasons) == {"late", "future"}
    assert all(float(headers(r)["faultwatch.error.late_seconds"]) > 0 for r in dead[:-1])
    got = scores_of(bootstrap, names["scores_topic"])
    assert {t for _, t in got} == expected_windows(sent, read_recording(data).channels, 10)
    # No window holds the unfilled part of the gap (rows 75-79): none ends at rows 75-88.
    gap = {f"2024-01-01T00:01:{s:02d}Z" for s in range(15, 29)}
    assert not gap & {t for _, t in got}
    assert sum(
        committed(bootstrap, env["FAULTWATCH_GROUP_ID"], names["input_topic"], 1).values()
    ) == len(sent)


def sample_fleet(folder: Path, machines: int, steps: int) -> list[tuple[bytes, bytes, None]]:
    """Every pump's k-th sample, then every pump's k+1-th, keyed by machine id."""
    streams = []
    for m in range(machines):
        path = pump_csv(folder / f"pump-{m}.csv", rows=steps, seed=m)
        streams.append(reading_records(f"pump-{m}", read_recording(path), "samples"))
    return [
        (f"pump-{m}".encode(), streams[m][k][1], None)
        for k in range(steps)
        for m in range(machines)
    ]


def one_pass(records: list, placed: list[tuple[int, int]], partitions: int) -> set:
    """(machine, window time) of one uninterrupted pass over each partition."""
    grid = Grid.of(["flow", "pressure", "current", "temperature"], 10, 1.0)
    decoder = ReadingDecoder("samples", [grid.channels], 1_000_000)
    expected = set()
    order = sorted(range(len(records)), key=lambda j: placed[j])
    for p in range(partitions):
        decoded = decoder.decode_batch([records[j][1] for j in order if placed[j][0] == p])
        out = Assembler(RULES).assemble(decoded.readings, [grid], decoded.readings.slots)
        expected |= {(b.machine, t) for b in out.built for t in b.timestamps()}
    return expected


def test_sigkill_loses_no_window_and_scores_none_twice_differently(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    records = sample_fleet(tmp_path, machines=4, steps=600)
    names = topics(make_topic, partitions=2)
    placed = produce(bootstrap, names["input_topic"], records)
    env = env_for(bootstrap, tiny_model_path, names, "samples", max_poll_records=50)
    # One kill mid-stream; the final run carries on.
    kill_mid_stream(env, bootstrap, names["input_topic"], 2, len(records), tmp_path, rounds=1)
    final = run_worker(env, tmp_path / "final.log", "--idle-exit", "3", timeout=120)
    assert final.process.returncode == 0, final.stderr
    assert "assembly restored partition=" in final.stderr
    got = scores_of(bootstrap, names["scores_topic"])  # asserts: never two scores for one window
    assert set(got) == one_pass(records, placed, 2)


def test_a_rebalance_hands_the_assembly_over(bootstrap, make_topic, tiny_model_path, tmp_path):
    records = sample_fleet(tmp_path, machines=6, steps=300)
    half = len(records) // 2
    names = topics(make_topic, partitions=4)
    env = env_for(bootstrap, tiny_model_path, names, "samples", max_poll_records=50)
    group = env["FAULTWATCH_GROUP_ID"]
    ports = {"a": free_port(), "b": free_port()}

    def start(name: str):
        return start_worker(
            env | {"FAULTWATCH_METRICS_PORT": str(ports[name])}, tmp_path / f"{name}.log"
        )

    def held(name: str) -> int:
        return partitions_held(ports[name])

    def all_committed(count: int) -> bool:
        return (
            sum(o or 0 for o in committed(bootstrap, group, names["input_topic"], 4).values())
            == count
        )

    placed = produce(bootstrap, names["input_topic"], records[:half])
    workers = {"a": start("a")}
    try:
        wait_for(lambda: all_committed(half), 90, "a to finish the first part", interval=0.5)
        workers["b"] = start("b")  # a rebalance: b takes over machines a has buckets open for
        wait_for(lambda: held("a") >= 1 and held("b") >= 1, 90, "a and b sharing partitions")
        placed += produce(bootstrap, names["input_topic"], records[half:])
        wait_for(lambda: all_committed(len(records)), 90, "everything", interval=0.5)
    finally:
        codes = {name: worker.terminate() for name, worker in workers.items()}
    assert codes == {"a": 0, "b": 0}, {name: w.stderr for name, w in workers.items()}
    assert "assembly restored partition=" in workers["b"].stderr
    got = scores_of(bootstrap, names["scores_topic"])  # asserts: never two scores for one window
    assert set(got) == one_pass(records, placed, 4)
