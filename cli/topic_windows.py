"""`faultwatch train --from-topic`: the contract windows of a topic, back as recordings.

Every partition of the topic is read with its own assignment, without a consumer group: no
offset is committed and no production group is touched. It reads from `--since` (each
record's own timestamp) or `--from-offset` up to `--until` or `--to-offset`, by default up to
where each partition ended when reading began, with `replay`'s connection settings. Each
machine's windows (those that `--machines` names) are put back in time order and its rows
rebuilt: a window that repeats all but the last `s` rows of the one before it adds those `s`
rows; any other starts a new segment. Each segment is a Recording, so model/training.py
trains on it exactly as on a CSV file.

With `--exclude-episodes`, a window is left out when its rows overlap one of its machine's
episodes (the events topic: `started_at` to `ended_at`, data time; a per-window event, that
window) or when it was produced under a mute of its machine (the control topic: from the
mute to its end, its tombstone or its replacement; the record's time, as mutes follow the
wall clock). Compaction of the control topic forgets lifted mutes: exclude recent history.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from cli.progress import Progress
from cli.replay import TopicRange, assign_every_partition, moment
from model.errors import DataError
from model.recording import Recording, format_time, to_rfc3339
from worker import settings as settings_io
from worker.control import parse_mute
from worker.errors import BrokerError
from worker.inputs.windows import WindowMessage
from worker.settings import Settings

IDLE = 10.0  # seconds without any record or end in sight: the broker holds nothing more
Span = tuple[float, float]  # (start, end) in epoch seconds, both included


@dataclass
class Window:
    """One contract window of a machine: its end time, its record's time and its rows."""

    end: float  # the window's timestamp (its last row), epoch seconds
    produced: float  # the record's own timestamp, epoch seconds
    values: np.ndarray  # (W, C)


@dataclass
class Collected:
    """What reading a topic found, for training and the summary line."""

    records: int = 0
    machines: dict[str, list[Window]] = field(default_factory=dict)
    channels: Counter[tuple[str, ...]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # why records were not used


def topic_recordings(
    args: argparse.Namespace, patterns: Sequence[str]
) -> tuple[list[Recording], int, str]:
    """The recordings of `args.from_topic` (train's options), their window, and a line
    describing what was read."""
    settings = settings_io.load({"bootstrap_servers": args.bootstrap_servers})
    span = TopicRange(
        args.from_offset,
        args.to_offset,
        moment(args.since, "--since"),
        moment(args.until, "--until") or datetime.now(UTC),
    )
    with Progress(None, f"reading {args.from_topic}", "record", enabled=not args.quiet) as bar:
        found = collect(read_topic(settings, args.from_topic, span, bar.update), patterns)
    if not found.machines:
        raise DataError(f"no windows to train on in {args.from_topic} ({_why(found)})")
    channels, window = _channels(found, args.from_topic)
    windows, machines = sum(len(w) for w in found.machines.values()), sorted(found.machines)
    excluded = 0
    if args.exclude_episodes:
        events = args.events_topic or settings.events_topic
        control = args.control_topic or settings.control_topic
        episodes = episode_spans(read_topic(settings, events, TopicRange()))
        mutes = mute_spans(read_topic(settings, control, TopicRange()))
        excluded = exclude(found, episodes, mutes)
    recordings = []
    for machine in sorted(found.machines):
        recordings += rebuild(args.from_topic, machine, found.machines[machine], channels)
    if not recordings:
        raise DataError(f"no windows to train on in {args.from_topic} ({_why(found)})")
    rows = sum(len(r) for r in recordings)
    line = (
        f"read {found.records} records from {args.from_topic}: {windows} windows of "
        f"{len(machines)} machines ({', '.join(machines[:5])}"
        f"{', ...' if len(machines) > 5 else ''}), {excluded} left out inside episodes "
        f"or mutes; {_why(found)}; {len(recordings)} segments, {rows} rows"
    )
    return recordings, window, line


def read_topic(
    settings: Settings,
    topic: str,
    span: TopicRange,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Any]:
    """The records of `topic` in `span`, partition by partition in order, without a group."""
    try:
        consumer = KafkaConsumer(
            **settings.kafka_options(), group_id=None, enable_auto_commit=False
        )
    except (KafkaError, OSError) as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    try:
        assigned = assign_every_partition(consumer, topic, settings)
        empty = _seek(consumer, assigned, span)
        yield from _until_end(consumer, assigned, span, progress, empty)
    except KafkaError as exc:
        raise BrokerError(f"cannot read topic {topic}: {exc}") from exc
    finally:
        consumer.close(autocommit=False)


def _seek(
    consumer: KafkaConsumer, assigned: list[TopicPartition], span: TopicRange
) -> set[TopicPartition]:
    """Each partition at its first offset to read; returns those with nothing since `--since`."""
    for tp in assigned:
        if span.from_offset is not None:
            consumer.seek(tp, span.from_offset)
        else:
            consumer.seek_to_beginning(tp)
    empty: set[TopicPartition] = set()
    if span.since is not None:  # a broker's time index may start too early: records filter too
        stamp = int(span.since.timestamp() * 1000)
        for tp, found in consumer.offsets_for_times({tp: stamp for tp in assigned}).items():
            if found is None:
                empty.add(tp)  # every record is older: read none of them
            else:
                consumer.seek(tp, max(found.offset, span.from_offset or 0))
    return empty


def _until_end(
    consumer: KafkaConsumer,
    assigned: list[TopicPartition],
    span: TopicRange,
    progress: Callable[[int], None] | None,
    empty: set[TopicPartition],
) -> Iterator[Any]:
    """Until each partition is past the span or at its end (a fetch's high watermark)."""
    since = span.since.timestamp() * 1000 if span.since else -math.inf
    until = span.until.timestamp() * 1000 if span.until else math.inf
    done = set(empty)
    if empty:
        consumer.pause(*empty)
    last = time.monotonic()
    while len(done) < len(assigned):
        for tp, batch in consumer.poll(timeout_ms=200).items():
            last = time.monotonic()
            for record in batch:
                past = span.to_offset is not None and record.offset >= span.to_offset
                if past or record.timestamp > until:
                    consumer.pause(tp)
                    done.add(tp)
                    break
                if record.timestamp >= since:
                    yield record
                if progress:
                    progress(1)
        for tp in assigned:
            high = consumer.highwater(tp)
            if tp not in done and high is not None and consumer.position(tp) >= high:
                done.add(tp)
        if time.monotonic() - last > IDLE:
            _check_ends(consumer, [tp for tp in assigned if tp not in done])
            break  # nothing arrives, and every partition is at its end


def _check_ends(consumer: KafkaConsumer, waiting: list[TopicPartition]) -> None:
    """BrokerError naming the partitions that hold more than was read: never train on a part
    of the range without saying so."""
    listed = consumer.end_offsets(waiting) if waiting else {}
    # end_offsets can be short on some brokers (DESIGN.md); a fetch's high watermark is not.
    ends = {tp: max(listed[tp], consumer.highwater(tp) or 0) for tp in waiting}
    short = [
        f"{tp.partition} (at {consumer.position(tp)} of {ends[tp]})"
        for tp in waiting
        if consumer.position(tp) < ends[tp]
    ]
    if short:
        raise BrokerError(
            f"{waiting[0].topic}: no records for {IDLE:g} s from partitions {', '.join(short)}; "
            "the broker is slow or unavailable, try again"
        )


def collect(records: Iterator[Any], patterns: Sequence[str]) -> Collected:
    """Contract windows by machine (those the patterns name); other records counted by why."""
    found = Collected()
    for record in records:
        found.records += 1
        try:
            message = WindowMessage.model_validate_json(record.value or b"")
            end = _seconds(message.timestamp)
            values = np.array(message.values, dtype=np.float64)
        except (ValidationError, DataError, ValueError):
            found.skipped["not contract windows"] += 1
            continue
        machine = message.machine_id
        if not any(fnmatch.fnmatchcase(machine, p) for p in patterns):
            found.skipped["of other machines"] += 1
            continue
        if values.ndim != 2 or not values.size or not np.isfinite(values).all():
            found.skipped["not contract windows"] += 1
            continue
        if message.channels is not None:
            found.channels[tuple(message.channels)] += 1
        found.machines.setdefault(machine, []).append(Window(end, record.timestamp / 1000, values))
    return found


def episode_spans(records: Iterator[Any]) -> dict[str, list[Span]]:
    """machine -> its episodes from the events topic (an open one runs on forever)."""
    episodes: dict[str, dict[str, list[float]]] = {}
    for record in records:
        try:
            event = json.loads(record.value or b"")
            machine = event["machine_id"]
            if "kind" not in event:  # a per-window event (FAULTWATCH_EVENTS=windows)
                at = _seconds(event["timestamp"])
                episodes.setdefault(machine, {})[f"@{at}"] = [at, at]
                continue
            span = episodes.setdefault(machine, {}).setdefault(
                event["episode_id"], [_seconds(event["started_at"]), math.inf]
            )
            if event["kind"] == "closed" and event.get("ended_at"):
                span[1] = _seconds(event["ended_at"])
        except (ValueError, KeyError, TypeError, DataError):
            continue  # not an event of faultwatch's
    return {m: sorted((a, b) for a, b in spans.values()) for m, spans in episodes.items()}


def mute_spans(records: Iterator[Any]) -> list[tuple[Any, Span]]:
    """(mute, its span in wall-clock seconds) from the control topic's history."""
    spans: list[tuple[Any, Span]] = []
    current: dict[bytes, int] = {}  # key -> index in spans of its mute in force
    for record in records:
        key, at = record.key or b"", record.timestamp / 1000
        index = current.pop(key, None)
        if index is not None:  # replaced or lifted from now on
            mute, (start, end) = spans[index]
            spans[index] = (mute, (start, min(end, at)))
        if record.value is None:
            continue
        try:
            mute = parse_mute(key, record.value)
        except (ValueError, UnicodeDecodeError):
            continue
        current[key] = len(spans)
        spans.append((mute, (at, mute.until if mute.until is not None else math.inf)))
    return spans


def exclude(found: Collected, episodes: dict[str, list[Span]], mutes: list) -> int:
    """Drop the windows whose rows overlap an episode of their machine, or made under a mute."""
    dropped = 0
    for machine, windows in found.machines.items():
        spans = episodes.get(machine, [])
        muted = [span for mute, span in mutes if mute.names(machine)]
        step = _step(windows)
        kept = []
        for w in windows:
            first = w.end - (len(w.values) - 1) * step  # the window's first row, estimated
            if _overlaps(spans, first, w.end) or any(a <= w.produced <= b for a, b in muted):
                dropped += 1
            else:
                kept.append(w)
        found.machines[machine] = kept
    found.machines = {m: w for m, w in found.machines.items() if w}
    return dropped


def rebuild(
    topic: str, machine: str, windows: list[Window], channels: list[str]
) -> list[Recording]:
    """One machine's windows as the rows they came from: one Recording per unbroken stretch."""
    windows = sorted(windows, key=lambda w: w.end)
    step = _step(windows)
    segments: list[tuple[list[np.ndarray], list[float]]] = []
    previous: Window | None = None
    for w in windows:
        size = len(w.values)
        if previous is not None and w.end == previous.end:
            continue  # the same window again (a re-delivered record)
        shift = _shift(previous.values, w.values) if previous is not None else None
        if previous is None or shift is None:
            times = [w.end - (size - 1 - i) * step for i in range(size)]
            segments.append((list(w.values), times))
        else:
            rows, times = segments[-1]
            rows.extend(w.values[size - shift :])
            gap = (w.end - previous.end) / shift
            times.extend(previous.end + (i + 1) * gap for i in range(shift))
        previous = w
    recordings = []
    for n, (rows, times) in enumerate(segments, start=1):
        stamps = [format_time(datetime.fromtimestamp(t, UTC)) for t in times]
        path = Path(topic) / f"{machine}#{n}"
        recordings.append(Recording(path, stamps, list(channels), np.array(rows)))
    return recordings


def _shift(previous: np.ndarray, window: np.ndarray) -> int | None:
    """s when `window` is `previous` moved on by s rows (1 <= s < W), else None."""
    size = len(window)
    if previous.shape != window.shape:
        return None
    # Candidates: where `window` holds `previous`'s last row; the smallest move first.
    for k in np.flatnonzero((window[:-1] == previous[-1]).all(axis=1))[::-1].tolist():
        s = size - 1 - k
        if np.array_equal(window[: size - s], previous[s:]):
            return s
    return None


def _step(windows: list[Window]) -> float:
    """Seconds per row: the median time between consecutive windows, one row apart when the
    producer sends a window per row (1 s if unknown; larger strides only widen exclusion)."""
    ends = sorted(w.end for w in windows)
    gaps = np.diff(ends)
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if len(gaps) else 1.0


def _overlaps(spans: list[Span], first: float, last: float) -> bool:
    """Whether [first, last] meets any of the sorted spans."""
    i = bisect_right(spans, (last, math.inf))
    return any(b >= first for _, b in spans[:i])


def _channels(found: Collected, topic: str) -> tuple[list[str], int]:
    """The channels the windows name and their length: one of each, or one line saying what
    is wrong."""
    if not found.channels:
        raise DataError(
            f"no window in {topic} names its channels: send `channels` with the windows"
        )
    if len(found.channels) > 1:
        lists = "; ".join(",".join(c) for c, _ in found.channels.most_common(3))
        raise DataError(
            f"the windows of {topic} name different channels ({lists}): train one model per "
            "machine type with --machines"
        )
    (channels,) = found.channels
    shapes = {w.values.shape for ws in found.machines.values() for w in ws}
    if len(shapes) != 1 or next(iter(shapes))[1] != len(channels):
        raise DataError(
            f"the windows of {topic} are not of one shape of {len(channels)} channels: "
            f"{sorted(shapes)[:3]}"
        )
    (shape,) = shapes
    return list(channels), shape[0]


def _why(found: Collected) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(found.skipped.items())) or "all used"


def _stamp(timestamp: str | float) -> str:
    return timestamp if isinstance(timestamp, str) else repr(timestamp)


def _seconds(timestamp: str | float) -> float:
    return datetime.fromisoformat(to_rfc3339(_stamp(timestamp))).timestamp()
