"""One batch of input records in, every record it must publish out: events, scores, dead letters."""

# Pure: no Kafka here, so the batch logic is tested without a broker. All valid windows of a
# batch go through the model in one `Scorer.score` call. Events are episodes (with the state
# records that let another worker carry them on) or, in `windows` mode, one per anomalous
# window. A record keyed other than by its machine id is a dead letter (`key_mismatch`): it
# could sit in another partition than its machine's episode.

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pydantic_core

from model.episodes import Cause, Tracker, leading_detectors, parse_seconds, shares_of
from model.scoring import Scorer, Scores
from worker.control import MuteTable
from worker.messages import Decoded, Decoder, Invalid, Origin
from worker.state import EpisodeState

log = logging.getLogger(__name__)

Header = tuple[str, bytes]
OUT_OF_RANGE = Invalid("non_finite", "values too large for the model: the score is not finite")


class Record(Protocol):
    """What the pipeline reads of a consumed record (kafka-python's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Output:
    """One record to publish (to `partition`, else where its key's hash puts it)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[Header] = field(default_factory=list)
    partition: int | None = None


@dataclass
class EpisodeCounts:
    """What a batch did to episodes, for the metrics."""

    opened: int = 0
    closed: Counter[str] = field(default_factory=Counter)  # by close reason
    durations: list[float] = field(default_factory=list)  # seconds, of the closed ones
    late: int = 0  # windows older than their machine's newest
    open_now: int = 0  # open episodes in this worker's partitions after the batch


@dataclass
class BatchResult:
    """What a batch produced, for the publisher and the metrics."""

    outputs: list[Output]
    scores: np.ndarray  # (V,) the valid windows' scores
    anomalies: int
    dead_letters: Counter[str]
    episodes: EpisodeCounts | None = None  # None in `windows` mode


@dataclass(frozen=True)
class Topics:
    events: str
    dlq: str
    scores: str | None = None  # None: no score records
    state: str | None = None  # episodes' changelog; None in `windows` mode


@dataclass
class Episodes:
    """The episode stage: state per partition, and the mutes every worker reads."""

    state: EpisodeState
    mutes: MuteTable


def event_id(topic: str, partition: int, offset: int) -> str:
    """Same source record, same id: consumers drop duplicates of a re-delivered batch."""
    return hashlib.sha256(f"{topic}:{partition}:{offset}".encode()).hexdigest()[:32]


class Pipeline:
    """Decode, score and turn a batch into the records to publish."""

    def __init__(
        self,
        scorer: Scorer,
        decoder: Decoder,
        topics: Topics,
        top_channels: int = 3,
        episodes: Episodes | None = None,
    ):
        self.scorer = scorer
        self.decoder = decoder
        self.topics = topics
        self.top_channels = top_channels
        self.episodes = episodes  # None: one event per anomalous window
        self._mute_versions: dict[int, int] = {}  # partition -> mute table version it saw

    def process(self, records: Sequence[Record]) -> BatchResult:
        """Every record of the batch ends as a score (and maybe an event) or a dead letter."""
        decoded = _keyed(self.decoder.decode_batch([r.value for r in records]), records)
        scores = self.scorer.score(decoded.windows)
        finite = np.isfinite(scores.score)  # (V,) 1e300 is a number, yet overflows the model
        invalid = decoded.invalid + [
            (decoded.valid[j][0], OUT_OF_RANGE) for j in np.flatnonzero(~finite)
        ]
        outputs = [self._dead_letter(records[i], problem) for i, problem in invalid]
        reasons = Counter(problem.reason for _, problem in invalid)
        anomalies = int(scores.anomaly[finite].sum())
        if self.episodes is None:
            # Only windows with an output cost Python work: without score records, the anomalies.
            with_output = finite if self.topics.scores else finite & scores.anomaly  # (V,)
            for j in np.flatnonzero(with_output):
                i, origin = decoded.valid[j]
                outputs.extend(self._results(records[i], origin, scores, j))
            return BatchResult(outputs, scores.score[finite], anomalies, reasons)
        counts = self._episodes(records, decoded, scores, finite, outputs)
        return BatchResult(outputs, scores.score[finite], anomalies, reasons, counts)

    def unrestored(self, partitions: Iterable[int]) -> set[int]:
        """The partitions whose episode state is not in hand yet (none in `windows` mode)."""
        if self.episodes is None:
            return set()
        return {p for p in partitions if p not in self.episodes.state.partitions}

    def restore(self, starts: dict[int, int]) -> None:
        """Restore the partitions' state as of the offsets where they resume, in one read."""
        if self.episodes is not None and starts:
            self.episodes.state.trackers(starts)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked or lost: their episodes are another worker's now."""
        if self.episodes is not None:
            self.episodes.state.forget(partitions)

    def _episodes(
        self,
        records: Sequence[Record],
        decoded: Decoded,
        scores: Scores,
        finite: np.ndarray,
        outputs: list[Output],
    ) -> EpisodeCounts:
        """Every valid window through its partition's tracker, in order; events and state out."""
        assert self.episodes is not None and self.topics.state is not None
        state, table = self.episodes.state, self.episodes.mutes
        spans: dict[int, list[int]] = {}  # partition -> [first offset, last offset]
        for record in records:
            span = spans.get(record.partition)
            if span is None:
                spans[record.partition] = [record.offset, record.offset]
            else:
                span[1] = record.offset
        trackers = state.trackers({p: first for p, (first, _) in spans.items()})
        muted, version = table.checker(), table.version
        rescan = {p for p in spans if self._mute_versions.get(p, 0) != version}
        threshold, channels = self.scorer.threshold, self.scorer.channels
        detectors = leading_detectors(scores)
        share, values = scores.channel_share, scores.score.tolist()
        events: list[dict] = []
        stamp, time = "", 0.0  # machines often share a timestamp: parse each one once
        for j in np.flatnonzero(finite).tolist():
            i, origin = decoded.valid[j]
            record = records[i]
            tracker: Tracker = trackers[record.partition]
            source = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            timestamp, score = origin.timestamp, values[j]
            if timestamp != stamp:
                stamp, time = timestamp, parse_seconds(timestamp)
            if record.partition in rescan:  # mutes changed: close what they silence now
                rescan.discard(record.partition)
                cause = Cause(time, timestamp, threshold, source)
                events += tracker.close_muted(muted, cause)
            events += tracker.observe(
                origin.machine_id,
                time,
                timestamp,
                score,
                threshold,
                shares_of(channels, share[j]),
                detectors[j] if detectors is not None else DEFAULT_DETECTOR,
                source,
                muted(origin.machine_id),
            )
            if self.topics.scores:
                outputs.append(self._score_record(record, origin, scores, j))
        for p in spans:
            if p not in rescan:
                self._mute_versions[p] = version
        counts = EpisodeCounts()
        for event in events:
            event["model_version"] = self.scorer.version
            outputs.append(Output(self.topics.events, event["machine_id"].encode(), _json(event)))
            if event["kind"] == "opened":
                counts.opened += 1
            elif event["kind"] == "closed":
                counts.closed[event["close_reason"]] += 1
                counts.durations.append(event["duration_seconds"])
        for p, (_, last) in spans.items():
            for key, value in state.finish(p, last + 1):
                outputs.append(Output(self.topics.state, key, value, partition=p))
            counts.late += trackers[p].take_late()
        counts.open_now = state.open_count()
        return counts

    def _results(self, record: Record, origin: Origin, scores: Scores, j: int) -> list[Output]:
        """The event of an anomalous window and, when configured, its score record."""
        outputs = []
        if scores.anomaly[j]:
            event = {
                "event_id": event_id(record.topic, record.partition, record.offset),
                "machine_id": origin.machine_id,
                "timestamp": origin.timestamp,
                "score": float(scores.score[j]),
                "threshold": self.scorer.threshold,
                "model_version": self.scorer.version,
                "top_channels": scores.top_channels(j, self.scorer.channels, self.top_channels),
                "source": _source(record),
            }
            outputs.append(Output(self.topics.events, _key(record, origin), _json(event)))
        if self.topics.scores:
            outputs.append(self._score_record(record, origin, scores, j))
        return outputs

    def _score_record(self, record: Record, origin: Origin, scores: Scores, j: int) -> Output:
        score = {
            "machine_id": origin.machine_id,
            "timestamp": origin.timestamp,
            "score": float(scores.score[j]),
            "threshold": self.scorer.threshold,
            "anomaly": bool(scores.anomaly[j]),
            "model_version": self.scorer.version,
            "source": _source(record),
        }
        return Output(self.topics.scores or "", _key(record, origin), _json(score))

    def _dead_letter(self, record: Record, problem: Invalid) -> Output:
        """The original key and value, unchanged, with the reason and the source as headers."""
        log.warning(
            "dead letter topic=%s partition=%d offset=%d reason=%s message=%s",
            record.topic,
            record.partition,
            record.offset,
            problem.reason,
            problem.message,
        )
        headers = [
            ("faultwatch.error.reason", problem.reason.encode()),
            ("faultwatch.error.message", problem.message.encode()),
            ("faultwatch.source.topic", record.topic.encode()),
            ("faultwatch.source.partition", str(record.partition).encode()),
            ("faultwatch.source.offset", str(record.offset).encode()),
        ]
        # Kafka clients refuse a record with neither key nor value: keep it as an empty value.
        value = record.value if record.value is not None or record.key is not None else b""
        return Output(self.topics.dlq, record.key, value, headers)


def _json(document: dict) -> bytes:
    """Compact JSON, 5x faster than json.dumps; RFC 8259 (non-finite scores never get here)."""
    return pydantic_core.to_json(document, inf_nan_mode="null")


DEFAULT_DETECTOR = "autoencoder"


def _keyed(decoded: Decoded, records: Sequence[Record]) -> Decoded:
    """Windows whose record key is not their machine id leave the batch as dead letters."""
    wrong = [
        j
        for j, (i, origin) in enumerate(decoded.valid)
        if records[i].key is not None and records[i].key != origin.machine_id.encode()
    ]
    if not wrong:
        return decoded
    invalid = list(decoded.invalid)
    for j in wrong:
        i, origin = decoded.valid[j]
        key = records[i].key or b""
        message = f"key {key[:100]!r} is not the machine_id {origin.machine_id[:100]!r}"
        invalid.append((i, Invalid("key_mismatch", message)))
    invalid.sort(key=lambda item: item[0])
    keep = np.ones(len(decoded.valid), dtype=bool)
    keep[wrong] = False
    valid = [v for j, v in enumerate(decoded.valid) if keep[j]]
    return Decoded(decoded.windows[keep], valid, invalid)


def _source(record: Record) -> dict:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _key(record: Record, origin: Origin) -> bytes:
    return record.key if record.key is not None else origin.machine_id.encode()
