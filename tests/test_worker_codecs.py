"""Compressed input, as plant producers send it (librdkafka, `compression.type=X`): every codec
is consumed by the worker and the CLI's readers, and a codec the worker cannot decode pauses
its partition instead of killing the worker (worker/kafka/loop.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from cli.episodes import read_mutes
from cli.replay import TopicRange, copy_topic, make_producer
from cli.topic_windows import read_topic as read_windows
from demo.broker import create_topics, free_port
from tests.helpers import (
    committed,
    http_get,
    metric_samples,
    metric_total,
    read_topic,
    run_worker,
    start_worker,
    unique,
    wait_for,
    window_value,
    worker_env,
)
from tests.synthetic import normal_values
from worker import settings as settings_io

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
WINDOWS = 20  # per codec: one compressed batch each
T0 = 1_700_000_000


def windows(machine: str, count: int = WINDOWS, window: int = 10) -> list[tuple[bytes, bytes]]:
    rows = normal_values(count + window - 1, seed=len(machine))
    return [
        (machine.encode(), window_value(machine, T0 + i, rows[i : i + window]))
        for i in range(count)
    ]


def produce_with(
    bootstrap: str,
    topic: str,
    codec: str,
    records: list[tuple[bytes, bytes | None]],
    partition: int = 0,
) -> None:
    """One batch through librdkafka with `compression.type=codec` (linger: all in one)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 200}
    )
    failed: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            failed.append(str(error))

    for key, value in records:
        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered)
    assert producer.flush(30) == 0 and not failed, failed


def topics() -> dict[str, str]:
    return {
        "input_topic": unique("packed"),
        "events_topic": unique("events"),
        "dlq_topic": unique("dlq"),
        "scores_topic": unique("scores"),
    }


@pytest.fixture(scope="module")
def packed(bootstrap: str, tiny_model_path: Path, tmp_path_factory) -> dict:
    """One worker run over five batches, one per codec, of one topic; what it scored."""
    names = topics()
    create_topics(bootstrap, {name: 1 for name in names.values()})
    for codec in CODECS:
        produce_with(bootstrap, names["input_topic"], codec, windows(f"m-{codec}"))
    env = worker_env(
        bootstrap, tiny_model_path, events="windows", group_id=unique("group"), **names
    )
    worker = run_worker(env, tmp_path_factory.mktemp("codecs") / "w.log", "--idle-exit", "3")
    assert worker.process.returncode == 0, worker.stderr
    scored = Counter(
        json.loads(r.value)["machine_id"] for r in read_topic(bootstrap, names["scores_topic"])
    )
    return {"scored": scored, "dead": len(read_topic(bootstrap, names["dlq_topic"])), **names}


@pytest.mark.parametrize("codec", CODECS)
def test_every_window_of_a_compressed_batch_is_scored(packed: dict, codec: str) -> None:
    assert packed["scored"][f"m-{codec}"] == WINDOWS
    assert packed["dead"] == 0


def test_the_cli_readers_read_every_codec(packed: dict, bootstrap: str) -> None:
    settings = settings_io.load({"bootstrap_servers": bootstrap})
    read = list(read_windows(settings, packed["input_topic"], TopicRange()))  # train --from-topic
    assert Counter(r.key.decode() for r in read) == {f"m-{c}": WINDOWS for c in CODECS}
    copy = unique("copy")
    create_topics(bootstrap, {copy: 1})
    producer = make_producer(settings)
    try:  # replay --from-topic
        copied = copy_topic(settings, packed["input_topic"], copy, TopicRange(), producer, idle=1)
    finally:
        producer.close(timeout=10)
    assert copied == WINDOWS * len(CODECS)
    control = unique("control")
    create_topics(bootstrap, {control: 1})
    mute = {"machine": "press-*", "mute_until": None, "reason": "r", "at": "2027-01-15Z"}
    for codec in CODECS[1:]:  # episodes, mute, unmute: the control topic
        produce_with(bootstrap, control, codec, [(codec.encode(), json.dumps(mute).encode())])
    table = read_mutes(settings.model_copy(update={"control_topic": control}))
    assert sorted(m.key for m in table.active()) == sorted(c.encode() for c in CODECS[1:])


NO_SNAPPY = "import sys\nsys.modules['snappy'] = None  # `import snappy` fails: no codec\n"


def test_a_codec_the_worker_cannot_decode_pauses_its_partition_and_loses_nothing(
    bootstrap: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    names = topics()
    create_topics(bootstrap, {names["input_topic"]: 2} | {n: 1 for n in list(names.values())[1:]})
    produce_with(bootstrap, names["input_topic"], "snappy", windows("m-snappy"), partition=0)
    produce_with(bootstrap, names["input_topic"], "gzip", windows("m-gzip"), partition=1)
    group = unique("group")
    port = free_port()
    env = worker_env(
        bootstrap, tiny_model_path, events="windows", group_id=group, metrics_port=port, **names
    )
    (tmp_path / "sitecustomize.py").write_text(NO_SNAPPY)  # this worker's process only
    blind = env | {"PYTHONPATH": f"{tmp_path}:{env['PYTHONPATH']}"}
    worker = start_worker(blind, tmp_path / "blind.log")
    try:

        def paused() -> dict | None:
            status, body = http_get(port, "/metrics")
            samples = metric_samples(body) if status == 200 else {}
            scored = metric_total(samples, "faultwatch_windows_scored_total")
            paused = metric_total(samples, "faultwatch_partitions_paused")
            return samples if scored == WINDOWS and paused == 1 else None

        wait_for(lambda: worker.process.poll() is not None or paused(), 60, "partition 0 paused")
        assert worker.process.poll() is None, worker.stderr  # alive: not a crash loop
        assert http_get(port, "/readyz")[0] == 200  # partition 1 is served
        assert worker.terminate() == 0
    finally:
        worker.kill()
    log = worker.stderr
    assert "partition paused: a batch cannot be decompressed" in log
    assert "partition=0 offset=0" in log and "snappy" in log, log
    assert committed(bootstrap, group, names["input_topic"], 2) == {0: None, 1: WINDOWS}
    # The library installed (this process has it): the batch is read again, nothing lost.
    again = run_worker(env, tmp_path / "again.log", "--idle-exit", "3")
    assert again.process.returncode == 0, again.stderr
    scored = Counter(
        json.loads(r.value)["machine_id"] for r in read_topic(bootstrap, names["scores_topic"])
    )
    assert scored == {"m-snappy": WINDOWS, "m-gzip": WINDOWS}
