"""One batch of input records in, every record it must publish out: events, scores, dead letters."""

# Pure: no Kafka here, so the batch logic is tested without a broker. Each record's machine id
# names its model (worker/routing.py); the valid windows of one model go through it in one
# `Scorer.score` call, and the windows come back together in batch order, for the episodes
# need each partition's windows in order whatever their models. Events are episodes (with the
# state records that let another worker carry them on) or, in `windows` mode, one per
# anomalous window. A record keyed other than by its machine id is a dead letter
# (`key_mismatch`): it could sit in another partition than its machine's episode. Shadow
# models (worker/shadow.py) score the same windows afterwards, into their own topic only.

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import numpy as np

from model.episodes import Cause, Ratios, Tracker, leading_detectors, parse_seconds, shares_of
from model.scoring import Scorer, Scores
from worker.clocks import WallClock
from worker.control import Label, MuteTable
from worker.inputs.family import AssemblyFamily
from worker.inputs.stage import ReadingCounts, ReadingStage
from worker.inputs.windows import Decoded, Decoder, Invalid, Origin
from worker.outputs import Output, json_bytes, source_of, window_ratios
from worker.routing import Routes, Served
from worker.state import EpisodeState
from worker.state.episodes import MUTES

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from worker.shadow import Shadow

OUT_OF_RANGE = Invalid("non_finite", "values too large for the model: the score is not finite")


class Record(Protocol):
    """What the pipeline reads of a consumed record (kafka-python's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class EpisodeCounts:
    """What a batch did to episodes, for the metrics."""

    opened: int = 0
    closed: Counter[str] = field(default_factory=Counter)  # by close reason
    durations: list[float] = field(default_factory=list)  # seconds, of the closed ones
    late: int = 0  # windows older than their machine's newest
    resets: int = 0  # machines whose clock went back further than the episode rules look
    open_now: int = 0  # open episodes in this worker's partitions after the batch
    labels: Counter[str] = field(default_factory=Counter)  # labels that reached open episodes


@dataclass(frozen=True)
class ModelBatch:
    """What one model scored in a batch, for its metrics and its drift."""

    served: Served
    scores: np.ndarray  # (G,) finite scores
    anomaly: np.ndarray  # (G,) bool


@dataclass
class BatchResult:
    """What a batch produced, for the publisher and the metrics."""

    outputs: list[Output]
    scores: np.ndarray  # (V,) the valid windows' scores
    anomalies: int
    dead_letters: Counter[str]
    episodes: EpisodeCounts | None = None  # None in `windows` mode
    models: list[ModelBatch] = field(default_factory=list)
    # (candidate, live flagged, candidate flagged) -> windows both scored
    shadow: Counter[tuple[str, bool, bool]] = field(default_factory=Counter)
    shadow_failures: int = 0
    readings: ReadingCounts | None = None  # None unless the input is samples or tags


@dataclass(frozen=True)
class Scored:
    """A batch's valid windows, each scored by its machine's model, in batch order."""

    score: np.ndarray  # (V,)
    anomaly: np.ndarray  # (V,) bool
    slot: list[int]  # (V,) the model's index in the routes
    row: list[int]  # (V,) the window's row in its model's Scores
    by_slot: dict[int, Scores]


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
    assembly: AssemblyFamily | None = None  # samples and tags: the assemblers, in the state


def event_id(topic: str, partition: int, offset: int) -> str:
    """Same source record, same id: consumers drop duplicates of a re-delivered batch."""
    return hashlib.sha256(f"{topic}:{partition}:{offset}".encode()).hexdigest()[:32]


class Pipeline:
    """Decode, score and turn a batch into the records to publish."""

    def __init__(
        self,
        models: Routes | Scorer,
        topics: Topics,
        top_channels: int = 3,
        episodes: Episodes | None = None,
        *,
        max_record_bytes: int = 1_000_000,
        shadow: Shadow | None = None,
        clock: WallClock | None = None,
        readings: ReadingStage | None = None,
    ):
        self.topics = topics
        self.clock = clock or WallClock()
        self.top_channels = top_channels
        self.max_record_bytes = max_record_bytes
        self.episodes = episodes  # None: one event per anomalous window
        self.shadow = shadow  # None: no shadow models
        self.readings = readings  # None: the input is windows
        if readings is not None and episodes is None:
            raise ValueError("samples and tags need the episode stage: their state is its store")
        # partition -> (first offset, checker, version) of its last batch: a redo reuses them
        self._mute_snapshots: dict[int, tuple[int, Callable[[str], bool], int]] = {}
        # partition -> (first offset, labels) of its last batch: a redo reuses them too
        self._label_snapshots: dict[int, tuple[int, Mapping[str, Label]]] = {}
        self._labels: tuple[int, Mapping[str, Label]] = (-1, {})  # (table version, labels)
        self._idle: list[int] = []  # the partitions of the last idle step
        self.serve(models if isinstance(models, Routes) else Routes.single(models))

    def serve(self, models: Routes) -> None:
        """Score with these models from the next batch on (a reload swaps them here)."""
        self.models = models
        if models.every_machine:
            (served,) = models.models
            scorer = served.scorer
            self.decoder = Decoder(scorer.window, scorer.channels, self.max_record_bytes)
        else:
            shapes = [(m.scorer.window, m.scorer.channels) for m in models.models]
            self.decoder = Decoder.routed(shapes, models.route, self.max_record_bytes)
        if self.readings is not None:
            self.readings.serve(models)

    def process(self, records: Sequence[Record]) -> BatchResult:
        """Every record of the batch ends as a score (and maybe an event) or a dead letter."""
        trackers, counts = None, None
        if self.readings is not None:
            # The partitions' state first (restored, or rolled back for a redo): assembly needs it.
            trackers = self._trackers(records)
            decoded, counts = self.readings.decode(records)
        else:
            decoded = _keyed(self.decoder.decode_batch([r.value for r in records]), records)
            decoded = decoded.drop(self.clock.future(decoded))  # never into a clock or the state
        scored = self._score(decoded)
        finite = np.isfinite(scored.score)  # (V,) 1e300 is a number, yet overflows the model
        invalid = decoded.invalid + [
            (decoded.valid[j][0], OUT_OF_RANGE) for j in np.flatnonzero(~finite)
        ]
        outputs = [self._dead_letter(records[i], problem) for i, problem in invalid]
        reasons = Counter(problem.reason for _, problem in invalid)
        anomalies = int(scored.anomaly[finite].sum())
        result = BatchResult(outputs, scored.score[finite], anomalies, reasons)
        result.readings = counts
        result.models = self._model_batches(decoded, scored, finite)
        if self.episodes is None:
            # Only windows with an output cost Python work: without score records, the anomalies.
            with_output = finite if self.topics.scores else finite & scored.anomaly  # (V,)
            models, slots, rows = self.models.models, scored.slot, scored.row
            for j in np.flatnonzero(with_output).tolist():
                i, origin = decoded.valid[j]
                served, scores = models[slots[j]], scored.by_slot[slots[j]]
                outputs.extend(self._results(records[i], origin, served, scores, rows[j]))
        else:
            result.episodes = self._episodes(records, decoded, scored, finite, outputs, trackers)
        if self.shadow is not None:
            self._shadow(records, decoded, scored, finite, result)
        return result

    def _score(self, decoded: Decoded) -> Scored:
        """Each model's windows in one call; the scores back in batch order."""
        models, groups = self.models.models, decoded.groups
        if len(groups) == 1:  # one model: nothing to reorder
            group = groups[0]
            scores = models[group.slot].scorer.score(group.windows)
            size = len(scores.score)
            return Scored(
                scores.score, scores.anomaly, [group.slot] * size, list(range(size)),
                {group.slot: scores},
            )  # fmt: skip
        size = len(decoded.valid)
        score, anomaly = np.empty(size), np.zeros(size, dtype=bool)
        slot, row = np.empty(size, dtype=np.intp), np.empty(size, dtype=np.intp)
        by_slot = {}
        for group in groups:
            scores = by_slot[group.slot] = models[group.slot].scorer.score(group.windows)
            score[group.members], anomaly[group.members] = scores.score, scores.anomaly
            slot[group.members] = group.slot
            row[group.members] = np.arange(len(group.members))
        return Scored(score, anomaly, slot.tolist(), row.tolist(), by_slot)

    def _model_batches(
        self, decoded: Decoded, scored: Scored, finite: np.ndarray
    ) -> list[ModelBatch]:
        batches = []
        for group in decoded.groups:
            scores, ok = scored.by_slot[group.slot], finite[group.members]
            served = self.models.models[group.slot]
            batches.append(ModelBatch(served, scores.score[ok], scores.anomaly[ok]))
        return batches

    def _shadow(
        self,
        records: Sequence[Record],
        decoded: Decoded,
        scored: Scored,
        finite: np.ndarray,
        result: BatchResult,
    ) -> None:
        """Candidates score the batch into their own topic; their failure changes nothing live."""
        assert self.shadow is not None
        try:
            outputs, counts = self.shadow.score(records, decoded, scored, self.models, finite)
        except Exception as exc:  # noqa: BLE001 (a candidate must never stop live scoring)
            result.shadow_failures += 1
            self.shadow.failed(exc)
            return
        result.outputs.extend(outputs)
        result.shadow = counts

    def idle(self, skip: Iterable[int] = ()) -> tuple[list[Output], EpisodeCounts | None]:
        """Partitions without input, their clocks moved on by processing time (worker/clocks.py):
        the silent closes that brings, and their state records. Publish, never commit. `skip`:
        partitions that are not quiet but stuck (paused)."""
        if self.episodes is None:
            return [], None
        state = self.episodes.state
        skipped = set(skip)
        due = {p: to for p, to in state.idle_clocks().items() if p not in skipped}
        if not due:
            return [], None
        outputs: list[Output] = []
        counts = EpisodeCounts()
        self._idle = sorted(due)
        for p, to in sorted(due.items()):
            tracker = state.begin_idle(p)
            through = state.partitions[p].through
            source = {"topic": state.input_topic, "partition": p, "offset": through}
            events = tracker.idle(to, Cause(to, _stamp_of(to), 0.0, source))
            self._publish_events(events, outputs, counts)
            for key, value in state.finish_idle(p):
                outputs.append(Output(self.topics.state, key, value, partition=p))
        counts.open_now = state.open_count()
        return outputs, counts

    def idle_failed(self) -> None:
        """The last idle step's outputs were not published: undo it (the next one redoes it)."""
        if self.episodes is not None:
            self.episodes.state.undo_idle(self._idle)

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
        scored: Scored,
        finite: np.ndarray,
        outputs: list[Output],
        trackers: dict[int, Tracker] | None = None,
    ) -> EpisodeCounts:
        """Every valid window through its partition's tracker, in order; events and state out.
        `trackers`: the batch's, when the readings stage has begun the state already."""
        assert self.episodes is not None and self.topics.state is not None
        state, table = self.episodes.state, self.episodes.mutes
        spans: dict[int, list[int]] = {}  # partition -> [first offset, last offset]
        for record in records:
            span = spans.get(record.partition)
            if span is None:
                spans[record.partition] = [record.offset, record.offset]
            else:
                span[1] = record.offset
        firsts = {p: first for p, (first, _) in spans.items()}
        if trackers is None:
            trackers = state.trackers(firsts)
        mutes = self._mutes(firsts, state.redone, table)
        rescan = {p for p in spans if mutes[p][2] != mutes[p][1]}
        labels = self._labels_of(firsts, state.redone, table)
        unlabelled = {p for p in spans if labels[p]}  # labels still to look for, per partition
        applied: list[tuple[str, str]] = []
        models = self.models.models
        about = {  # per model in the batch: what each of its windows needs
            slot: (
                models[slot].scorer.threshold,
                models[slot].scorer.channels,
                models[slot].version,
                scores.channel_share,
                leading_detectors(scores) or [DEFAULT_DETECTOR] * len(scores.score),
                models[slot].scorer.interval,
                models[slot].scorer.typical,
            )
            for slot, scores in scored.by_slot.items()
        }
        values, slots, rows = scored.score.tolist(), scored.slot, scored.row
        events: list[dict] = []
        stamp, time = "", 0.0  # machines often share a timestamp: parse each one once
        for j in np.flatnonzero(finite).tolist():
            i, origin = decoded.valid[j]
            record = records[i]
            tracker: Tracker = trackers[record.partition]
            muted = mutes[record.partition][0]
            source = source_of(record)
            timestamp, score, slot, k = origin.timestamp, values[j], slots[j], rows[j]
            threshold, channels, model_version, share, detectors, interval, typical = about[slot]
            if timestamp != stamp:
                stamp, time = timestamp, parse_seconds(timestamp)
            if record.partition in rescan:  # mutes changed: close what they silence now
                rescan.discard(record.partition)
                cause = Cause(time, timestamp, threshold, source)
                events += tracker.close_muted(muted, cause)
            if record.partition in unlabelled:  # operators' labels on its open episodes
                unlabelled.discard(record.partition)
                found = labels[record.partition]
                closes, done = tracker.apply_labels(
                    lambda episode, found=found: _label(found, episode),
                    Cause(time, timestamp, threshold, source),
                )
                events += closes
                applied += done
            events += tracker.observe(
                origin.machine_id,
                time,
                timestamp,
                score,
                threshold,
                shares_of(channels, share[k]),
                detectors[k],
                source,
                muted(origin.machine_id),
                model_version,
                _ratios_of(scored.by_slot[slot], k) if score > threshold else None,
                interval,
                typical,
            )
            if self.topics.scores:
                served = models[slot]
                outputs.append(self._score_record(record, origin, served, scored.by_slot[slot], k))
        for p in spans:
            if p not in rescan:  # undone with the batch, like the episodes it closed
                state.partitions[p].store.put(MUTES, "version", mutes[p][1])
        counts = EpisodeCounts(labels=Counter(label for _, label in applied))
        self._publish_events(events, outputs, counts)
        for p, (_, last) in spans.items():
            for key, value in state.finish(p, last + 1):
                outputs.append(Output(self.topics.state, key, value, partition=p))
            counts.late += trackers[p].take_late()
            counts.resets += _log_resets(p, trackers[p].take_resets())
        counts.open_now = state.open_count()
        return counts

    def _trackers(self, records: Sequence[Record]) -> dict[int, Tracker]:
        """Begin the batch in the state of each of its partitions (every family's)."""
        assert self.episodes is not None
        firsts: dict[int, int] = {}
        for record in records:
            firsts.setdefault(record.partition, record.offset)
        return self.episodes.state.trackers(firsts)

    def _mutes(
        self, firsts: dict[int, int], redone: set[int], table: MuteTable
    ) -> dict[int, tuple[Callable[[str], bool], int, int]]:
        """Per partition: (checker, table version, version its episodes saw). A redone batch
        gets its first attempt's checker: the retry is an exact replay whatever changed since."""
        found, fresh = {}, None
        for p, first in firsts.items():
            saved = self._mute_snapshots.get(p)
            if p not in redone or saved is None or saved[0] != first:
                fresh = fresh or table.snapshot()
                saved = self._mute_snapshots[p] = (first, *fresh)
            seen = self.episodes.state.partitions[p].store.get(MUTES, "version", 0)
            found[p] = (saved[1], saved[2], seen)
        return found

    def _labels_of(
        self, firsts: dict[int, int], redone: set[int], table: MuteTable
    ) -> dict[int, Mapping[str, Label]]:
        """Per partition: the labels by episode id its batch applies. A redone batch gets its
        first attempt's: the retry is an exact replay whatever labels arrived since."""
        version = table.labels_version
        if version != self._labels[0]:
            self._labels = (version, table.labels())  # a copy: never changes under a batch
        found = {}
        for p, first in firsts.items():
            saved = self._label_snapshots.get(p)
            if p not in redone or saved is None or saved[0] != first:
                saved = self._label_snapshots[p] = (first, self._labels[1])
            found[p] = saved[1]
        return found

    def _publish_events(
        self, events: list[dict], outputs: list[Output], counts: EpisodeCounts
    ) -> None:
        for event in events:
            self._stamp(event)
            key = event["machine_id"].encode()
            outputs.append(Output(self.topics.events, key, json_bytes(event)))
            if event["kind"] == "opened":
                counts.opened += 1
            elif event["kind"] == "closed":
                counts.closed[event["close_reason"]] += 1
                counts.durations.append(event["duration_seconds"])

    def _stamp(self, event: dict) -> None:
        """The model of the event's machine: its version, and its threshold (a silent close is
        caused by another machine's window, which another model may have scored)."""
        served = self.models.served(event["machine_id"])
        if served is not None:
            event["threshold"] = served.scorer.threshold
            event["model_version"] = served.version
        else:  # its model has left service: the last one that scored it
            versions = event["model_versions"]
            event["model_version"] = versions[-1] if versions else ""

    def _results(
        self, record: Record, origin: Origin, served: Served, scores: Scores, j: int
    ) -> list[Output]:
        """The event of an anomalous window and, when configured, its score record."""
        outputs = []
        if scores.anomaly[j]:
            scorer = served.scorer
            event = {
                "event_id": event_id(record.topic, record.partition, record.offset),
                "machine_id": origin.machine_id,
                "timestamp": origin.timestamp,
                "score": float(scores.score[j]),
                "threshold": scorer.threshold,
                "model_version": served.version,
                "top_channels": scores.top_channels(j, scorer.channels, self.top_channels),
                "detector": scores.detector(j),
                "detectors": window_ratios(scores, j),
                "source": source_of(record),
            }
            outputs.append(Output(self.topics.events, _key(record, origin), json_bytes(event)))
        if self.topics.scores:
            outputs.append(self._score_record(record, origin, served, scores, j))
        return outputs

    def _score_record(
        self, record: Record, origin: Origin, served: Served, scores: Scores, j: int
    ) -> Output:
        score = {
            "machine_id": origin.machine_id,
            "timestamp": origin.timestamp,
            "score": float(scores.score[j]),
            "threshold": served.scorer.threshold,
            "anomaly": bool(scores.anomaly[j]),
            "model_version": served.version,
            "detector": scores.detector(j),
            "detectors": window_ratios(scores, j),
            "source": source_of(record),
        }
        return Output(self.topics.scores or "", _key(record, origin), json_bytes(score))

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
            *problem.headers,
        ]
        # Kafka clients refuse a record with neither key nor value: keep it as an empty value.
        value = record.value if record.value is not None or record.key is not None else b""
        return Output(self.topics.dlq, record.key, value, headers)


DEFAULT_DETECTOR = "autoencoder"


def _label(labels: Mapping[str, Label], episode: str) -> str | None:
    found = labels.get(episode)
    return None if found is None else found.label


def _ratios_of(scores: Scores, j: int) -> Ratios:
    """Window j's ratios, computed only if it becomes an episode's peak."""
    return lambda: scores.detector_ratios(j)


def _log_resets(partition: int, resets: list[tuple[str, float, float]]) -> int:
    for machine, newest, then in resets:
        log.warning(
            "machine clock went back, episode state reset machine=%r partition=%d newest=%s "
            "window=%s back_seconds=%.0f",
            machine[:100],
            partition,
            _stamp_of(newest),
            _stamp_of(then),
            newest - then,
        )
    return len(resets)


def _stamp_of(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def _keyed(decoded: Decoded, records: Sequence[Record]) -> Decoded:
    """Windows whose record key is not their machine id leave the batch as dead letters."""
    problems = {}
    for j, (i, origin) in enumerate(decoded.valid):
        key = records[i].key
        if key is not None and key != origin.machine_id.encode():
            message = f"key {key[:100]!r} is not the machine_id {origin.machine_id[:100]!r}"
            problems[j] = Invalid("key_mismatch", message)
    return decoded.drop(problems)


def _key(record: Record, origin: Origin) -> bytes:
    return record.key if record.key is not None else origin.machine_id.encode()
