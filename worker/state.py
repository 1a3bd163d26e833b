"""Episode state per input partition, kept in the state topic as a changelog (Kafka Streams' way).

Each batch writes, beside its events, one record per machine whose episode it touched (key:
the machine id) and one for the partition's clock (key: empty), into the state partition of
the same number as the input partition. They are acknowledged with the batch's other outputs,
before its offsets are committed. Each record holds the state after the batch, the state
before it, and `through`, the input offset the batch commits.

Restoring a partition whose processing resumes at offset F: the latest record of each key,
its `state` when `through` <= F (that batch was committed), else its `previous` (the batch
was not committed and is about to be redone: its records are the only ones newer than F, and
`previous` is the state when it began). So a crash between acknowledgement and commit neither
loses an episode nor applies a window twice. Records of other groups or input topics are
ignored: give every consumer group its own state topic.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from model.episodes import Episode, EpisodeConfig, Tracker
from worker.errors import BrokerError

log = logging.getLogger(__name__)

CLOCK_KEY = b""  # the partition's clock: no machine id is empty
StateRecord = tuple[bytes, bytes | None]  # (key, value) of the state topic
Reader = Callable[[int], Sequence[StateRecord]]  # state partition -> its records, oldest first


@dataclass
class Owned:
    """A partition this worker processes: its tracker, and the offsets of its last batch."""

    tracker: Tracker
    start: int  # first input offset of the last batch
    through: int  # the offset after it


class EpisodeState:
    """The trackers of the partitions in hand; restores, rolls back and saves them."""

    def __init__(
        self,
        config: EpisodeConfig,
        input_topic: str,
        group: str,
        reader: Reader,
        top_channels: int = 3,
    ) -> None:
        self.config = config
        self.input_topic = input_topic
        self.group = group
        self.reader = reader
        self.top_channels = top_channels
        self.partitions: dict[int, Owned] = {}
        self.restores: list[tuple[int, int, float]] = []  # (partition, episodes, seconds)
        self.open_now = 0  # open episodes after the last batch: read by the metrics thread

    def tracker(self, partition: int, first_offset: int) -> Tracker:
        """The partition's tracker as of `first_offset`, where its next batch begins."""
        owned = self.partitions.get(partition)
        if owned is not None and owned.through == first_offset:
            owned.tracker.begin()  # the next batch
        elif owned is not None and owned.start == first_offset:
            owned.tracker.rollback()  # the last batch again: it was not committed
        else:
            owned = self.partitions[partition] = Owned(self._restore(partition, first_offset), 0, 0)
        owned.start = owned.through = first_offset
        return owned.tracker

    def finish(self, partition: int, through: int) -> list[StateRecord]:
        """The batch is done up to `through`: the state records to publish with it."""
        owned = self.partitions[partition]
        owned.through = through
        tracker = owned.tracker
        common = {"group": self.group, "input": self.input_topic, "through": through}
        records = [
            (
                machine.encode(),
                _json(common | {"state": _dict(now), "previous": _dict(before)}),
            )
            for machine, (before, now) in sorted(tracker.changed().items())
        ]
        clock = {"clock": _finite(tracker.clock), "previous": _finite(tracker.clock_before)}
        records.append((CLOCK_KEY, _json(common | clock)))
        self.open_now = self.open_count()
        return records

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions gone to another worker: their state is theirs now."""
        for partition in partitions:
            self.partitions.pop(partition, None)
        self.open_now = self.open_count()

    def open_count(self) -> int:
        return sum(owned.tracker.open_count() for owned in self.partitions.values())

    def _restore(self, partition: int, resume: int) -> Tracker:
        started = time.monotonic()
        records = self.reader(partition)
        episodes, clock, foreign = restore(records, resume, self.group, self.input_topic)
        tracker = Tracker(self.config, self.top_channels)
        tracker.restore(episodes, clock)
        seconds = time.monotonic() - started
        self.restores.append((partition, len(episodes), seconds))
        log.info(
            "state restored partition=%d episodes=%d resume_offset=%d seconds=%.3f",
            partition,
            len(episodes),
            resume,
            seconds,
        )
        if foreign:
            log.warning(
                "state topic partition=%d holds %d records of another group or input topic: "
                "ignored (give each group its own FAULTWATCH_STATE_TOPIC)",
                partition,
                foreign,
            )
        return tracker


def restore(
    records: Iterable[StateRecord], resume: int, group: str, input_topic: str
) -> tuple[list[Episode], float, int]:
    """(episodes, clock, records of others) as of input offset `resume`, from a changelog."""
    latest: dict[bytes, dict[str, Any]] = {}
    foreign = 0
    for key, value in records:
        if value is None:
            latest.pop(key, None)
            continue
        document = json.loads(value)
        if document.get("group") != group or document.get("input") != input_topic:
            foreign += 1
            continue
        latest[key] = document
    episodes, clock = [], -math.inf
    for key, document in latest.items():
        redone = document["through"] > resume  # written by a batch that was not committed
        if key == CLOCK_KEY:
            value = document["previous"] if redone else document["clock"]
            clock = -math.inf if value is None else value
            continue
        state = document["previous"] if redone else document["state"]
        if state is not None:
            episodes.append(Episode.from_dict(state))
    return episodes, clock, foreign


class ChangelogReader:
    """Reads one partition of the state topic from its start to its end, without a group."""

    def __init__(self, consumer: KafkaConsumer, topic: str, timeout: float) -> None:
        self.consumer = consumer
        self.topic = topic
        self.timeout = timeout

    def __call__(self, partition: int) -> list[StateRecord]:
        tp = TopicPartition(self.topic, partition)
        consumer = self.consumer
        deadline = time.monotonic() + self.timeout
        records: list[StateRecord] = []
        try:
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            # The end is the high watermark of a fetch (end_offsets is wrong on some brokers).
            while True:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend((r.key or b"", r.value) for r in batch)
                high = consumer.highwater(tp)
                if high is not None and consumer.position(tp) >= high:
                    return records
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"state topic {self.topic} partition {partition} not read to its end "
                        f"within {self.timeout:g} s"
                    )
        except KafkaError as exc:
            raise BrokerError(f"cannot read state topic {self.topic}: {exc}") from exc

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def _dict(episode: Episode | None) -> dict[str, Any] | None:
    return None if episode is None else episode.to_dict()


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
