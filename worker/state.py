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

from model.episodes import Episode, EpisodeConfig, Tracker, read_machine_state
from worker.errors import BrokerError

log = logging.getLogger(__name__)

CLOCK_KEY = b""  # the partition's clock: no machine id is empty
StateRecord = tuple[bytes, bytes | None]  # (key, value) of the state topic
# state partitions -> each one's records, oldest first
Reader = Callable[[Sequence[int]], dict[int, Sequence[StateRecord]]]


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

    def trackers(self, starts: dict[int, int]) -> dict[int, Tracker]:
        """Each partition's tracker as of the offset where its next batch begins."""
        unknown = {}
        for partition, first in starts.items():
            owned = self.partitions.get(partition)
            if owned is not None and owned.through == first:
                owned.tracker.begin()  # the next batch
            elif owned is not None and owned.start == first:
                owned.tracker.rollback()  # the last batch again: it was not committed
            else:
                unknown[partition] = first  # new here, or moved on elsewhere: restore
        if unknown:
            self._restore(unknown)
        found = {}
        for partition, first in starts.items():
            owned = self.partitions[partition]
            owned.start = owned.through = first
            found[partition] = owned.tracker
        return found

    def tracker(self, partition: int, first_offset: int) -> Tracker:
        """One partition's tracker as of `first_offset`."""
        return self.trackers({partition: first_offset})[partition]

    def finish(self, partition: int, through: int) -> list[StateRecord]:
        """The batch is done up to `through`: the state records to publish with it."""
        owned = self.partitions[partition]
        owned.through = through
        tracker = owned.tracker
        common = {"group": self.group, "input": self.input_topic, "through": through}
        records = [
            (
                machine.encode(),
                _json(common | {"state": now, "previous": before}),
            )
            for machine, (before, now) in tracker.states().items()
        ]
        # The clock matters only to episodes (silent machines): without any, the next window
        # sets it again, so a partition of normal machines writes no state at all.
        if records or tracker.episodes:
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

    def _restore(self, resume: dict[int, int]) -> None:
        """Read the partitions' state (together: one wait for all) before their records."""
        started = time.monotonic()
        changelogs = self.reader(sorted(resume))
        seconds = time.monotonic() - started
        for partition, first in sorted(resume.items()):
            records = changelogs.get(partition, ())
            episodes, clock, foreign, baselines = restore(
                records, first, self.group, self.input_topic
            )
            tracker = Tracker(self.config, self.top_channels)
            tracker.restore(episodes, clock, baselines)
            self.partitions[partition] = Owned(tracker, first, first)
            self.restores.append((partition, len(episodes), seconds))
            log.info(
                "state restored partition=%d episodes=%d records=%d resume_offset=%d seconds=%.3f",
                partition,
                len(episodes),
                len(records),
                first,
                seconds,
            )
            if foreign:
                log.warning(
                    "state topic partition=%d holds %d records of another group or input "
                    "topic: ignored (give each group its own FAULTWATCH_STATE_TOPIC)",
                    partition,
                    foreign,
                )


def restore(
    records: Iterable[StateRecord], resume: int, group: str, input_topic: str
) -> tuple[list[Episode], float, int, dict[str, dict[str, Any]]]:
    """(episodes, clock, records of others, baselines by machine) as of input offset `resume`,
    from a changelog."""
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
    episodes, clock, baselines = [], -math.inf, {}
    for key, document in latest.items():
        redone = document["through"] > resume  # written by a batch that was not committed
        if key == CLOCK_KEY:
            value = document["previous"] if redone else document["clock"]
            clock = -math.inf if value is None else value
            continue
        episode, baseline = read_machine_state(document["previous" if redone else "state"])
        if episode is not None:
            episodes.append(episode)
        if baseline is not None:
            baselines[key.decode()] = baseline
    return episodes, clock, foreign, baselines


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


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
