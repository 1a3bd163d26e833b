"""The state store on the real broker: transactional input, idle partitions. Every wait bounded."""

from __future__ import annotations

import json
import re

from confluent_kafka import Producer

from model.scoring import Scorer
from tests.helpers import (
    committed,
    produce,
    read_topic,
    run_worker,
    synthetic_values,
    unique,
    worker_env,
)
from tests.test_episodes_broker import EPISODE_ENV, episode_topics


def produce_transactions(bootstrap: str, topic: str, values: list[bytes], size: int) -> None:
    """`values` keyed pump-1, in transactions of `size` records: each commit marker takes an
    offset, so the offsets the worker reads have gaps."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": unique("tx"), "linger.ms": 0}
    )
    producer.init_transactions(30)
    for start in range(0, len(values), size):
        producer.begin_transaction()
        for value in values[start : start + size]:
            producer.produce(topic, key=b"pump-1", value=value, partition=0)
        producer.commit_transaction(30)


def test_offset_gaps_of_transaction_markers_are_the_next_batch_not_a_restore(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    scorer = Scorer.load(tiny_model_path)
    topics = episode_topics(make_topic, 1)
    values = synthetic_values(40, scorer.window, shift=25.0)  # anomalous: an open episode
    produce_transactions(bootstrap, topics["input_topic"], values, size=5)
    group = unique("group")
    env = worker_env(
        bootstrap, tiny_model_path, group_id=group, max_poll_records=5, **topics, **EPISODE_ENV
    )
    worker = run_worker(env, tmp_path / "worker.log", "--idle-exit", "3", timeout=90)
    assert worker.process.returncode == 0, worker.stderr
    (end,) = committed(bootstrap, group, topics["input_topic"], 1).values()
    assert end is not None and end > len(values)  # the markers took offsets
    restores = re.findall(r"state restored partition=0 ", worker.stderr)
    assert len(restores) == 1, worker.stderr  # once, on assignment; never per batch


def test_a_machine_alone_in_its_partition_closes_silent_when_it_goes_quiet(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    """Also when the worker (re)starts after the machine went quiet: nothing left to read."""
    scorer = Scorer.load(tiny_model_path)
    topics = episode_topics(make_topic, 1)
    values = synthetic_values(10, scorer.window, shift=25.0)  # anomalous, then nothing
    produce(bootstrap, topics["input_topic"], [(b"pump-1", v, 0) for v in values])
    env = worker_env(bootstrap, tiny_model_path, group_id=unique("group"), **topics, **EPISODE_ENV)
    first = run_worker(env, tmp_path / "first.log", "--idle-exit", "3", timeout=90)
    assert first.process.returncode == 0, first.stderr
    env["FAULTWATCH_EPISODE_SILENT_SECONDS"] = "2"  # the second one has no window to read
    env["FAULTWATCH_EPISODE_SILENT_WINDOWS"] = "1"
    second = run_worker(env, tmp_path / "second.log", "--idle-exit", "4", timeout=90)
    assert second.process.returncode == 0, second.stderr
    found = [json.loads(r.value) for r in read_topic(bootstrap, topics["events_topic"])]
    assert [(e["kind"], e["close_reason"]) for e in found] == [
        ("opened", None),
        ("closed", "silent"),
    ]
    assert found[1]["ended_at"] == found[1]["started_at"][:-3] + "29Z"  # its last window
