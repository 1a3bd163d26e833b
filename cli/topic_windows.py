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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from cli.progress import Progress
from cli.replay import TopicRange, assign_every_partition, moment
from model.errors import DataError
from model.recording import Recording, format_time, to_rfc3339
from model.training import TrainConfig
from worker import settings as settings_io
from worker.control import Mute, Unmute, parse
from worker.errors import BrokerError
from worker.inputs.assembler import MICROS, Assembler, Grid, Rules
from worker.inputs.readings import ReadingDecoder, Sample, Tag
from worker.inputs.stage import grid_of
from worker.inputs.windows import WindowMessage
from worker.routing import Routes
from worker.settings import Settings

READING_DECODERS = {"samples": msgspec.json.Decoder(Sample), "tags": msgspec.json.Decoder(Tag)}
CHUNK = 10_000  # records assembled at a time
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
    form: str = "windows"  # samples or tags: windows the assembler built, two rows each


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
        rules = assembly_rules(settings)
        found = collect(read_topic(settings, args.from_topic, span, bar.update), patterns, rules)
    if not found.machines:
        raise DataError(f"no windows to train on in {args.from_topic} ({_why(found)})")
    channels, window = _channels(found, args.from_topic)
    if found.form != "windows":  # rows, not windows: the model's window is train's to choose
        window = args.window or TrainConfig().window
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
    what = "windows" if found.form == "windows" else f"closed buckets (of {found.form})"
    line = (
        f"read {found.records} records from {args.from_topic}: {windows} {what} of "
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
    """Each partition to where it ended when reading began (or `--to-offset`), keeping the
    records of the time span: a record stamped after `--until` (a gateway with a fast clock)
    is skipped, never the end of its partition. A partition is done once a fetch confirmed
    its end."""
    since = span.since.timestamp() * 1000 if span.since else -math.inf
    until = span.until.timestamp() * 1000 if span.until else math.inf
    ends = _ends(consumer, assigned)
    fixed: set[TopicPartition] = set()  # ends confirmed by a fetch's high watermark
    done = set(empty)
    if empty:
        consumer.pause(*empty)
    last = time.monotonic()
    while len(done) < len(assigned):
        for tp, batch in consumer.poll(timeout_ms=200).items():
            last = time.monotonic()
            _confirm_end(consumer, tp, ends, fixed)
            for record in batch:
                past = span.to_offset is not None and record.offset >= span.to_offset
                if past or record.offset >= ends[tp]:
                    consumer.pause(tp)
                    done.add(tp)
                    break
                if since <= record.timestamp <= until:
                    yield record
                if progress:
                    progress(1)
        for tp in assigned:
            _confirm_end(consumer, tp, ends, fixed)
            if tp not in done and tp in fixed and consumer.position(tp) >= ends[tp]:
                done.add(tp)
        if time.monotonic() - last > IDLE:
            _check_ends(consumer, [tp for tp in assigned if tp not in done])
            break  # nothing arrives, and every partition is at its end


def _ends(consumer: KafkaConsumer, assigned: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Each partition's end now: records produced while reading are not read."""
    return dict(consumer.end_offsets(assigned)) if assigned else {}


def _confirm_end(
    consumer: KafkaConsumer,
    tp: TopicPartition,
    ends: dict[TopicPartition, int],
    fixed: set[TopicPartition],
) -> None:
    """The first fetch's high watermark corrects an end that end_offsets gave short (some
    brokers give the last batch's start + 1, DESIGN.md); later ones would chase new records."""
    if tp not in fixed and (high := consumer.highwater(tp)) is not None:
        ends[tp] = max(ends[tp], high)
        fixed.add(tp)


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


def assembly_rules(settings: Settings) -> Rules:
    """The assembly rules the workers run with (FAULTWATCH_INPUT_*, EPISODE_SILENT_SECONDS)."""
    return Rules.of(
        settings.input_grace_seconds,
        settings.input_fill_limit,
        settings.input_max_future_seconds,
        settings.episode_silent_seconds,
    )


def collect(
    records: Iterator[Any],
    patterns: Sequence[str],
    rules: Rules | None = None,
    models: Routes | None = None,
) -> Collected:
    """Contract windows by machine (those the patterns name); other records counted by why.

    Samples and tags are assembled into windows as the worker would (worker/inputs/), with
    `rules` (default: the settings' defaults): on `models`' grids, the windows each machine's
    model scores (retrain), or without models, rows on the readings' own grid (train)."""
    found = Collected()
    readings: list[Any] = []
    for record in records:
        found.records += 1
        try:
            message = WindowMessage.model_validate_json(record.value or b"")
            end = _seconds(message.timestamp)
            values = np.array(message.values, dtype=np.float64)
        except (ValidationError, DataError, ValueError):
            readings.append(record)  # samples or tags, perhaps
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
    if readings:
        _assemble(readings, patterns, rules or Rules(), found, models)
    return found


def _assemble(
    records: list[Any],
    patterns: Sequence[str],
    rules: Rules,
    found: Collected,
    models: Routes | None = None,
) -> None:
    """Samples or tags (whichever the topic holds more of) through the worker's assembler, one
    per partition: on the grids of `models` (each machine's model's windows), or else on the
    grid of the readings' own median step, their closed rows as windows of two rows each,
    which `rebuild` joins into recordings."""
    forms: dict[str, list[tuple[Any, Any]]] = {"samples": [], "tags": []}
    for record in records:
        for form, decoder in READING_DECODERS.items():
            try:
                forms[form].append((record, decoder.decode(record.value or b"")))
                break
            except msgspec.DecodeError:
                continue
        else:
            found.skipped["not contract windows, samples or tags"] += 1
    form = max(forms, key=lambda f: len(forms[f]))
    other = "tags" if form == "samples" else "samples"
    if forms[other]:
        found.skipped[f"{other} among {form}"] += len(forms[other])
    chosen = forms[form]
    if not chosen:
        return
    found.form = form
    if models is None:
        grids, route = [_rows_grid(form, chosen)], _one_grid
    else:
        grids = [grid_of(served.scorer, served.name) for served in models.models]
        route = models.router()

    def wanted(machine: str) -> int | None:
        return route(machine) if any(fnmatch.fnmatchcase(machine, p) for p in patterns) else None

    decoder = ReadingDecoder(form, [grid.channels for grid in grids], 2**31, route=wanted)
    by_partition: dict[int, list[Any]] = {}
    for record, _ in chosen:
        by_partition.setdefault(record.partition, []).append(record)
    for partition in sorted(by_partition):
        assembler, part = Assembler(rules), by_partition[partition]
        for start in range(0, len(part), CHUNK):
            chunk = part[start : start + CHUNK]
            decoded = decoder.decode_batch([r.value for r in chunk], [r.key for r in chunk])
            for _, why in decoded.invalid:
                other = why.reason == "no_model"
                found.skipped["of other machines" if other else f"{form}: {why.reason}"] += 1
            out = assembler.assemble(decoded.readings, grids, decoded.readings.slots)
            for why in out.refused.values():
                found.skipped[f"{form}: {why.reason}"] += 1
            for built in out.built:
                found.channels[grids[built.slot].channels] += len(built.buckets)
                ends = ((built.buckets * built.step) / MICROS).tolist()
                windows = found.machines.setdefault(built.machine, [])
                for end, i, values in zip(ends, built.records.tolist(), built.windows, strict=True):
                    windows.append(Window(end, chunk[i].timestamp / 1000, values))


def _one_grid(machine: str) -> int:
    return 0


def _rows_grid(form: str, chosen: list[tuple[Any, Any]]) -> Grid:
    """Rows of every channel the readings name, on their median step (train's grid)."""
    channels: dict[str, None] = {}  # samples: in first-seen order, as a CSV's columns
    for _, message in chosen:
        for name in message.values if form == "samples" else (message.channel,):
            channels.setdefault(name, None)
    names = list(channels) if form == "samples" else sorted(channels)  # tags have no order
    return Grid.of(names, 2, _median_step(chosen), "the readings")


def _median_step(messages: list[tuple[Any, Any]]) -> float:
    """Seconds between a machine's reading times: the median over machines (1 s if unknown)."""
    times: dict[str, set[float]] = {}
    for _, message in messages:
        try:
            times.setdefault(message.machine_id, set()).add(_seconds(message.timestamp))
        except DataError:
            continue
    steps = [np.diff(sorted(t)) for t in times.values() if len(t) > 1]
    steps = np.concatenate(steps) if steps else np.array([])
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else 1.0


def published_episodes(records: Iterable[Any]) -> dict[str, tuple[str, Span]]:
    """episode id -> (machine, span) of the episodes the events topic holds (an open one runs
    on forever); a per-window event (FAULTWATCH_EVENTS=windows) is a span of its own, under
    an id starting with `@`. Records that are not faultwatch's events are passed over."""
    found: dict[str, tuple[str, Span]] = {}
    for record in records:
        try:
            event = json.loads(record.value or b"")
            machine = event["machine_id"]
            if "kind" not in event:  # a per-window event
                at = _seconds(event["timestamp"])
                found[f"@{machine}@{at}"] = (machine, (at, at))
                continue
            episode = event["episode_id"]
            if episode not in found:
                found[episode] = (machine, (_seconds(event["started_at"]), math.inf))
            if event["kind"] == "closed" and event.get("ended_at"):
                start = found[episode][1][0]
                found[episode] = (machine, (start, _seconds(event["ended_at"])))
        except (ValueError, KeyError, TypeError, AttributeError, DataError):
            continue  # not an event of faultwatch's
    return found


def episode_spans(records: Iterator[Any]) -> dict[str, list[Span]]:
    """machine -> its episodes from the events topic (an open one runs on forever)."""
    spans: dict[str, list[Span]] = {}
    for machine, span in published_episodes(records).values():
        spans.setdefault(machine, []).append(span)
    return {m: sorted(found) for m, found in spans.items()}


def mute_spans(records: Iterator[Any]) -> list[tuple[Mute, Span]]:
    """(mute, its span in wall-clock seconds) from the control topic's history: a mute holds
    until its end, its key's tombstone or the next mute under its key (labels change none)."""
    spans: list[tuple[Mute, Span]] = []
    current: dict[bytes, int] = {}  # key -> index in spans of its mute in force
    for record in records:
        parsed, at = parse(record.key, record.value), record.timestamp / 1000
        if not isinstance(parsed, Mute | Unmute):
            continue  # a label, or a record that is none of the three
        index = current.pop(parsed.key, None)
        if index is not None:  # replaced or lifted from now on
            mute, (start, end) = spans[index]
            spans[index] = (mute, (start, min(end, at)))
        if isinstance(parsed, Mute):
            current[parsed.key] = len(spans)
            spans.append((parsed, (at, parsed.until if parsed.until is not None else math.inf)))
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
