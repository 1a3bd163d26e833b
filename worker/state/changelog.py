"""The state topic: each batch's state changes as records, and a partition's state read back.

The state topic is a changelog (Kafka Streams' way): each batch writes, beside its events, one
record per key of the partition's store (worker/state/store.py) that it changed, into the state
partition of the same number as the input partition. They are acknowledged with the batch's
other outputs, before its offsets are committed. A record's value is JSON:

    {"group": ..., "input": ..., "through": 1234,   # the consumer group, input topic, and the
                                                   # input offset the batch commits
     "family": "episode", "key": "pump-1",         # whose state: a family and its key
     "state": {...} or null,                       # after the batch (null: none any more)
     "previous": {...} or null}                    # before it

and its Kafka key is the key for the `episode` family (the machine id), empty for the
partition's `clock`, and `family/key` for any other family, so that compaction keeps the last
record of each. Records of the first format (no `family`: a machine's episode, or the clock
under the empty key with its value in `clock`) are read as those two families.

Restoring a partition whose processing resumes at input offset F keeps, per family and key, the
record with the highest `through` that is <= F and takes its `state` (that batch was committed);
a key with only records past F (compaction kept only an uncommitted batch's) takes the
`previous` of the earliest of them (the state when that batch began). So a crash between
acknowledgement and commit neither loses an episode nor applies a window twice, and a late
write by a worker the group already dropped (a stale `through`) never hides a newer state.
Records of other groups or input topics are skipped: give every consumer group its own state
topic. A record that is not JSON, or lacks a field, is counted and skipped, never a crash.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from worker.errors import BrokerError

log = logging.getLogger(__name__)

CLOCK_KEY = b""  # the partition's clock: no machine id is empty
EPISODE, CLOCK = "episode", "clock"  # the families of the first format
StateRecord = tuple[bytes, bytes | None]  # (key, value) of the state topic
# state partitions -> each one's records, oldest first
Reader = Callable[[Sequence[int]], dict[int, Sequence[StateRecord]]]
SKIP_REASONS = ("not_json", "schema", "foreign", "state")  # why a state record was skipped
_decode = msgspec.json.Decoder().decode  # raises msgspec.DecodeError, a ValueError


def record_key(family: str, key: str) -> bytes:
    """The Kafka key of a family's key: unique per (family, key), so compaction keeps each."""
    if family == EPISODE:
        return key.encode()
    if family == CLOCK and key == "":
        return CLOCK_KEY
    return f"{family}/{key}".encode()


def encode(
    family: str, key: str, through: int, state: Any, previous: Any, group: str, input_topic: str
) -> StateRecord:
    """One state record: a key's state after and before the batch that commits `through`."""
    document = {
        "group": group,
        "input": input_topic,
        "through": through,
        "family": family,
        "key": key,
        "state": state,
        "previous": previous,
    }
    return record_key(family, key), json.dumps(
        document, separators=(",", ":"), allow_nan=False
    ).encode()


@dataclass
class Restored:
    """A partition's state as of its resume offset: (family, key) -> value, and what was skipped."""

    values: dict[tuple[str, str], Any] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)  # by reason (SKIP_REASONS)
    records: int = 0


def restore(records: Iterable[StateRecord], resume: int, group: str, input_topic: str) -> Restored:
    """The state of each key as of input offset `resume`, from a partition's changelog."""
    # (family, key) -> [through, state] of the newest committed record, and
    # [through, previous] of the oldest uncommitted one
    done: dict[tuple[str, str], tuple[int, Any]] = {}
    redone: dict[tuple[str, str], tuple[int, Any]] = {}
    found = Restored()
    for raw_key, value in records:
        found.records += 1
        if value is None:  # a tombstone: compaction's way to forget a key
            continue
        parsed = _parse(raw_key, value, group, input_topic)
        if isinstance(parsed, str):
            found.skipped[parsed] += 1
            continue
        name, through, state, previous = parsed
        if through <= resume:
            kept = done.get(name)
            if kept is None or through >= kept[0]:
                done[name] = (through, state)
        else:
            kept = redone.get(name)
            if kept is None or through < kept[0]:
                redone[name] = (through, previous)
    for name, (_, previous) in redone.items():
        if name not in done:
            found.values[name] = previous
    for name, (_, state) in done.items():
        found.values[name] = state
    found.values = {name: v for name, v in found.values.items() if v is not None}
    return found


def _parse(
    raw_key: bytes, value: bytes, group: str, input_topic: str
) -> tuple[tuple[str, str], int, Any, Any] | str:
    """((family, key), through, state, previous), or the reason to skip the record."""
    try:
        document = _decode(value)  # msgspec: the restore's cost is mostly parsing JSON
    except (ValueError, UnicodeDecodeError):
        return "not_json"
    if not isinstance(document, dict):
        return "not_json"
    if document.get("group") != group or document.get("input") != input_topic:
        return "foreign"
    through = document.get("through")
    if not isinstance(through, int) or isinstance(through, bool):
        return "schema"
    family = document.get("family")
    if family is None:  # the first format: a machine's episode, or the clock
        try:
            key = raw_key.decode()
        except UnicodeDecodeError:
            return "schema"
        if raw_key == CLOCK_KEY:
            if "clock" not in document or "previous" not in document:
                return "schema"
            return (CLOCK, ""), through, document["clock"], document["previous"]
        if "state" not in document or "previous" not in document:
            return "schema"
        return (EPISODE, key), through, document["state"], document["previous"]
    key = document.get("key")
    if not isinstance(family, str) or not isinstance(key, str):
        return "schema"
    if "state" not in document or "previous" not in document:
        return "schema"
    return (family, key), through, document["state"], document["previous"]


class ChangelogReader:
    """Reads one partition of the state topic from its start to its end, without a group."""

    def __init__(self, consumer: KafkaConsumer, topic: str, timeout: float) -> None:
        self.consumer = consumer
        self.topic = topic
        self.timeout = timeout

    def __call__(self, partitions: Sequence[int]) -> dict[int, list[StateRecord]]:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer = self.consumer
        deadline = time.monotonic() + self.timeout
        records: dict[int, list[StateRecord]] = {p: [] for p in partitions}
        try:
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            # The end is the high watermark of a fetch (end_offsets is wrong on some brokers).
            while True:
                for tp, batch in consumer.poll(timeout_ms=100).items():
                    records[tp.partition].extend((r.key or b"", r.value) for r in batch)
                if all(self._at_end(tp) for tp in tps):
                    consumer.unsubscribe()  # no fetching of our own state records meanwhile
                    return records
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"state topic {self.topic} partitions {list(partitions)} not read to "
                        f"their end within {self.timeout:g} s"
                    )
        except KafkaError as exc:
            raise BrokerError(f"cannot read state topic {self.topic}: {exc}") from exc

    def _at_end(self, tp: TopicPartition) -> bool:
        high = self.consumer.highwater(tp)
        return high is not None and self.consumer.position(tp) >= high

    def close(self) -> None:
        self.consumer.close(autocommit=False)
