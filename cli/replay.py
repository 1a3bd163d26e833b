"""Replay topics: recordings cut into contract windows, or a recorded range of another topic."""

# Windows are cut exactly as `faultwatch score` cuts them (Recording.windows), so the worker's
# scores of a replay can be compared row by row with `score`'s CSV. Copying a topic range uses
# its own partition assignment, without a consumer group: production offsets stay untouched.

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from cli.offline import read
from cli.progress import Progress
from model import artifact as artifact_io
from model.errors import DataError, FaultwatchError
from model.preprocessing import PreprocessConfig
from model.recording import Recording, format_time, parse_time
from model.training import TrainConfig
from worker import settings as settings_io
from worker.errors import BrokerError, PublishError
from worker.kafka.kafka_python import producer_options
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stream:
    """One machine's windows, in time order, with their end times parsed once."""

    machine_id: str
    recording: Recording
    end_rows: np.ndarray  # (B,)
    windows: np.ndarray  # (B, W, C)
    ends: list[datetime]  # (B,) each window's last sample time
    period: timedelta  # how far a looped replay moves time forward per loop

    @classmethod
    def cut(
        cls, machine_id: str, recording: Recording, window: int, *, max_gap: int, stride: int = 1
    ) -> Stream:
        """The windows `score` would see (Recording.windows) of one machine's recording."""
        end_rows, windows, _ = recording.windows(window, max_gap=max_gap, stride=stride)
        stamps = recording.timestamps
        try:
            first, last = parse_time(stamps[0]), parse_time(stamps[-1])
            ends = [parse_time(stamps[r]) for r in end_rows]
        except DataError as exc:
            raise DataError(f"{recording.path}: {exc}") from None
        return cls(
            machine_id, recording, end_rows, windows, ends, last - first + timedelta(seconds=1)
        )

    def seconds(self) -> np.ndarray:
        """Each window's end, in seconds since the recording's first row (for --speed)."""
        first = parse_time(self.recording.timestamps[0])
        return np.array([(end - first).total_seconds() for end in self.ends])


def encode_window(
    machine_id: str, timestamp: str, channels: list[str], values: np.ndarray
) -> bytes:
    """One input record's value, per the message contract."""
    message = {
        "machine_id": machine_id,
        "timestamp": timestamp,
        "channels": channels,
        "values": values.tolist(),
    }
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def schedule(
    streams: list[Stream], rate: float | None, speed: float | None, loops: int | None
) -> Iterator[tuple[float | None, Stream, int, int]]:
    """(send-at seconds from start or None, stream, window index, loop) in replay order."""
    # Machines advance side by side: the k-th window of every machine, then the k+1-th.
    offsets = [s.seconds() for s in streams] if speed else None
    span = max((o[-1] for o in offsets if len(o)), default=0.0) + 1 if offsets else 0.0
    longest = max(len(s.end_rows) for s in streams)
    sent, loop = 0, 0
    while loops is None or loop < loops:
        for k in range(longest):
            for m, stream in enumerate(streams):
                if k >= len(stream.end_rows):
                    continue
                if speed and offsets is not None:
                    at = (loop * span + offsets[m][k]) / speed
                else:
                    at = sent / rate if rate else None
                yield at, stream, k, loop
                sent += 1
        loop += 1


def replay_recordings(
    streams: list[Stream],
    topic: str,
    producer: KafkaProducer,
    *,
    rate: float | None = None,
    speed: float | None = None,
    loops: int | None = 1,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Produce the windows to `topic`, keyed by machine id; returns how many were acknowledged."""
    timed = (
        (at, stream.machine_id.encode(), _value(stream, k, loop))
        for at, stream, k, loop in schedule(streams, rate, speed, loops)
    )
    return _paced(timed, Sends(producer, topic), limit, progress, clock, sleep)


def _paced(
    timed: Iterable[tuple[float | None, bytes, bytes]],
    sends: Sends,
    limit: int | None,
    progress: Callable[[int], None] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> int:
    """Send each (send-at seconds from now or None, key, value), at most `limit`; returns how
    many were acknowledged."""
    started = clock()
    for at, key, value in timed:
        if limit is not None and sends.count >= limit:
            break
        if at is not None and (wait := started + at - clock()) > 0:
            sleep(wait)
        sends.send(key, value)
        if progress:
            progress(1)
    return sends.finish()


class Sends:
    """Sends to one topic, checked as they settle: constant memory even for `--loop`."""

    MAX_PENDING = 5_000  # unsettled sends held at most (then flush): a few MB

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer, self.topic = producer, topic
        self.pending: deque[FutureRecordMetadata] = deque()
        self.count = 0

    def send(self, key: bytes | None, value: bytes | None, headers: list | None = None) -> None:
        """Send one record; raises PublishError once any earlier send was refused."""
        self.pending.append(self.producer.send(self.topic, key=key, value=value, headers=headers))
        self.count += 1
        while self.pending and self.pending[0].is_done:  # drop what settled, in order
            self._check(self.pending.popleft())
        if len(self.pending) >= self.MAX_PENDING:
            self.producer.flush()
            self._check_all()

    def finish(self) -> int:
        """Flush and check every send; returns how many were sent (all acknowledged)."""
        self.producer.flush()
        self._check_all()
        return self.count

    def _check_all(self) -> None:
        while self.pending:
            self._check(self.pending.popleft())

    def _check(self, future: FutureRecordMetadata) -> None:
        if future.failed():
            raise PublishError(
                f"{self.topic} refused a record: {future.exception}", retriable=False
            )


def _value(stream: Stream, k: int, loop: int) -> bytes:
    moment = stream.ends[k] + loop * stream.period  # a looped replay keeps moving forward
    return encode_window(
        stream.machine_id, format_time(moment), stream.recording.channels, stream.windows[k]
    )


Form = Literal["windows", "samples", "tags"]


@dataclass(frozen=True)
class Disorder:
    """How a replay of readings departs from time order, as gateways do.

    jitter: each record is sent up to this many seconds (data time) after its time;
    shuffle_within: records are shuffled within blocks of this many seconds;
    late_share: this share of records is held back `late_by` seconds (past the grace: `late`).
    """

    jitter: float = 0.0
    shuffle_within: float = 0.0
    late_share: float = 0.0
    late_by: float = 0.0
    seed: int = 0


def reading_records(
    machine_id: str, recording: Recording, form: Form, shift: float = 0.0
) -> list[tuple[float, bytes]]:
    """(time in epoch seconds, value) of each sample or tag record of a recording, in time
    order: one record per row (samples) or per row and channel with a value (tags); an empty
    cell is a null value (samples) or no record (tags). `shift` moves every time (a loop)."""
    try:
        times = [parse_time(t).timestamp() + shift for t in recording.timestamps]
    except DataError as exc:
        raise DataError(f"{recording.path}: {exc}") from None
    channels, rows = recording.channels, recording.values.tolist()
    records = []
    for at, row in zip(times, rows, strict=True):
        stamp = _stamp_of(at)
        if form == "samples":
            values = {c: (None if v != v else v) for c, v in zip(channels, row, strict=True)}
            message = {"machine_id": machine_id, "timestamp": stamp, "values": values}
            records.append((at, _json(message)))
            continue
        for channel, v in zip(channels, row, strict=True):
            if v == v:  # not NaN
                tag = {"machine_id": machine_id, "channel": channel, "timestamp": stamp, "value": v}
                records.append((at, _json(tag)))
    return records


def arrange(records: list[tuple[float, bytes]], disorder: Disorder) -> list[tuple[float, bytes]]:
    """The records in the order a disorderly gateway would send them, each with its send time."""
    if disorder == Disorder(seed=disorder.seed):
        return sorted(records, key=lambda item: item[0])
    rng = np.random.default_rng(disorder.seed)
    times = np.array([at for at, _ in records])
    sent = times.copy()
    if disorder.shuffle_within > 0:
        block = disorder.shuffle_within
        sent = np.floor(times / block) * block + rng.uniform(0, block, len(times))
    if disorder.jitter > 0:
        sent = sent + rng.uniform(0, disorder.jitter, len(times))
    if disorder.late_share > 0:
        late = rng.random(len(times)) < disorder.late_share
        sent = np.where(late, sent + disorder.late_by, sent)
    order = np.argsort(sent, kind="stable")
    return [(float(sent[i]), records[i][1]) for i in order.tolist()]


def _stamp_of(at: float) -> str:
    """RFC 3339 with the fraction a time has (none for whole seconds, as most producers)."""
    moment = datetime.fromtimestamp(at, UTC)
    if moment.microsecond == 0:
        return format_time(moment)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class TopicRange:
    """Which part of a source topic to copy: offsets (per partition) or a time span."""

    from_offset: int | None = None
    to_offset: int | None = None  # exclusive
    since: datetime | None = None
    until: datetime | None = None


def copy_topic(
    settings: Settings,
    source: str,
    target: str,
    span: TopicRange,
    producer: KafkaProducer,
    *,
    idle: float = 5.0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy records (key, value, headers unchanged) of `source` in `span` to `target`."""
    consumer = KafkaConsumer(
        **settings.kafka_options(),
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=int(idle * 1000),
    )
    try:
        assigned = assign_every_partition(consumer, source, settings)
        _seek_start(consumer, assigned, span)
        return _copy(consumer, assigned, target, span, producer, progress)
    finally:
        consumer.close()


def assign_every_partition(
    consumer: KafkaConsumer, topic: str, settings: Settings
) -> list[TopicPartition]:
    """Every partition of `topic` assigned to a consumer without a group, in order."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise BrokerError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}")
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    return assigned


def _seek_start(consumer: KafkaConsumer, assigned: list[TopicPartition], span: TopicRange) -> None:
    if span.since is not None:
        stamp = int(span.since.timestamp() * 1000)
        found = consumer.offsets_for_times({tp: stamp for tp in assigned})
        for tp in assigned:
            if found.get(tp) is not None:
                consumer.seek(tp, found[tp].offset)
            else:  # nothing that recent in this partition: copy none of it
                consumer.pause(tp)
        return
    for tp in assigned:
        if span.from_offset is not None:
            consumer.seek(tp, span.from_offset)
        else:
            consumer.seek_to_beginning(tp)


def _copy(
    consumer: KafkaConsumer,
    assigned: list[TopicPartition],
    target: str,
    span: TopicRange,
    producer: KafkaProducer,
    progress: Callable[[int], None] | None,
) -> int:
    """Until every partition is past the range's end, or caught up and idle."""
    since_ms = int(span.since.timestamp() * 1000) if span.since else None
    until_ms = int(span.until.timestamp() * 1000) if span.until else None
    done: set[TopicPartition] = {tp for tp in assigned if tp in consumer.paused()}
    sends = Sends(producer, target)
    for record in consumer:  # stops after `idle` seconds without records
        tp = TopicPartition(record.topic, record.partition)
        past_offset = span.to_offset is not None and record.offset >= span.to_offset
        past_time = until_ms is not None and record.timestamp > until_ms
        if past_offset or past_time:
            consumer.pause(tp)
            done.add(tp)
        elif since_ms is not None and record.timestamp < since_ms:
            pass  # before the range: a broker's time index (Tansu's) may start too early
        else:
            sends.send(record.key, record.value, list(record.headers or []))
            if progress:
                progress(1)
        if len(done) == len(assigned):
            break
    return sends.finish()


def make_producer(settings: Settings) -> KafkaProducer:
    try:
        return KafkaProducer(
            **settings.kafka_options(), **producer_options(settings.max_request_bytes)
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc


def command(args: argparse.Namespace) -> int:
    """`faultwatch replay`: recordings or a topic range into a topic, with progress."""
    if bool(args.data) == bool(args.from_topic):
        raise FaultwatchError("replay needs either DATA.csv files or --from-topic, not both")
    since, until = moment(args.since, "--since"), moment(args.until, "--until")
    form = getattr(args, "form", "windows")
    if form != "windows" and args.from_topic:
        raise FaultwatchError("--as samples|tags replays DATA.csv files, not --from-topic")
    disorder = _disorder(args)
    if form == "windows" and disorder != Disorder(seed=disorder.seed):
        raise FaultwatchError(
            "--jitter, --shuffle-within and --late-share apply to --as samples or tags"
        )
    config = settings_io.load({"bootstrap_servers": args.bootstrap_servers})
    readings = None
    if form != "windows":
        readings = _reading_streams(args, form, disorder, config.input_grace_seconds)
        total = None if args.loop else readings.count
        streams: list[Stream] = []
    else:
        streams = [] if args.from_topic else _streams(args)
        total = None if args.loop or args.from_topic else sum(len(s.end_rows) for s in streams)
    if args.limit:
        total = min(total or args.limit, args.limit)
    producer = make_producer(config)
    unit = "window" if form == "windows" else "record"
    with Progress(total, f"replay to {args.topic}", unit) as bar:
        try:
            if args.from_topic:
                span = TopicRange(args.from_offset, args.to_offset, since, until)
                sent = copy_topic(
                    config, args.from_topic, args.topic, span, producer, progress=bar.update
                )
            elif readings is not None:
                sent = replay_readings(
                    readings,
                    args.topic,
                    producer,
                    rate=args.rate,
                    speed=args.speed,
                    loops=None if args.loop else 1,
                    limit=args.limit,
                    progress=bar.update,
                )
            else:
                sent = replay_recordings(
                    streams,
                    args.topic,
                    producer,
                    rate=args.rate,
                    speed=args.speed,
                    loops=None if args.loop else 1,
                    limit=args.limit,
                    progress=bar.update,
                )
        finally:
            producer.close(timeout=10)
    print(f"{sent} records replayed to {args.topic}")
    return 0


@dataclass(frozen=True)
class ReadingStreams:
    """Machines' recordings to replay as samples or tags, with their disorder."""

    machines: list[tuple[str, Recording]]
    form: Form
    disorder: Disorder
    count: int  # records per loop

    def schedule(
        self, rate: float | None, speed: float | None, loops: int | None
    ) -> Iterator[tuple[float | None, bytes, bytes]]:
        """(send-at seconds from start or None, key, value) in replay order, loop after loop."""
        first: float | None = None
        sent, n = 0, 0
        while loops is None or n < loops:
            for at, key, value in self.loop(n):
                first = at if first is None else first
                yield (at - first) / speed if speed else (sent / rate if rate else None), key, value
                sent += 1
            n += 1

    def loop(self, n: int) -> list[tuple[float, bytes, bytes]]:
        """(send time, key, value) of loop n, in send order; times move on by each loop."""
        merged: list[tuple[float, bytes]] = []
        keyed: dict[bytes, bytes] = {}
        for machine, recording in self.machines:
            shift = n * _period(recording)
            for at, value in reading_records(machine, recording, self.form, shift):
                merged.append((at, value))
                keyed[value] = machine.encode()
        disorder = replace(self.disorder, seed=self.disorder.seed + n)
        return [(at, keyed[value], value) for at, value in arrange(merged, disorder)]


def replay_readings(
    readings: ReadingStreams,
    topic: str,
    producer: KafkaProducer,
    *,
    rate: float | None = None,
    speed: float | None = None,
    loops: int | None = 1,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Produce the sample or tag records to `topic`, keyed by machine id, paced like windows."""
    return _paced(
        readings.schedule(rate, speed, loops), Sends(producer, topic), limit, progress, clock, sleep
    )


def _disorder(args: argparse.Namespace) -> Disorder:
    return Disorder(
        jitter=getattr(args, "jitter", 0.0),
        shuffle_within=getattr(args, "shuffle_within", 0.0),
        late_share=getattr(args, "late_share", 0.0),
        seed=getattr(args, "seed", 0),
    )


def _reading_streams(
    args: argparse.Namespace, form: Form, disorder: Disorder, grace: float
) -> ReadingStreams:
    """The recordings as samples or tags; late records held back past the worker's grace."""
    channels = artifact_io.load(args.model).channels if args.model else None
    machines = []
    for i, path in enumerate(args.data):
        recording = read(path, args)
        if channels is not None and recording.channels != channels:
            raise FaultwatchError(
                f"{path}: channels {recording.channels} differ from the model's {channels}"
            )
        machine = args.machine_id or Path(path).stem
        if args.machine_id and len(args.data) > 1:
            machine = f"{args.machine_id}-{i + 1}"
        machines.append((machine, recording))
    step = max((r.interval() or 1.0 for _, r in machines), default=1.0)
    disorder = replace(disorder, late_by=grace + 2 * step)
    count = sum(
        len(r) if form == "samples" else int((~np.isnan(r.values)).sum()) for _, r in machines
    )
    return ReadingStreams(machines, form, disorder, count)


def _period(recording: Recording) -> float:
    """How far a looped replay moves time on: the recording's span and one step."""
    first, last = parse_time(recording.timestamps[0]), parse_time(recording.timestamps[-1])
    return (last - first).total_seconds() + (recording.interval() or 1.0)


def moment(text: str | None, flag: str, now: datetime | None = None) -> datetime | None:
    """'2h', '30m', '45s', '1d' before now, or a time (RFC 3339, epoch seconds)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        ago = float(text[:-1]) * units[text[-1]]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=ago)
        except OverflowError:  # further back than year 1
            raise FaultwatchError(f"{flag} {text!r} reaches back before year 1") from None
    try:
        return parse_time(text)
    except DataError as exc:
        raise FaultwatchError(f"{flag}: {exc}; expected e.g. 2h, 30m or a time") from None


def _streams(args: argparse.Namespace) -> list[Stream]:
    """One stream per file, cut with the model's window, channels and gap rule when given."""
    window, channels = args.window or TrainConfig().window, None
    max_gap = PreprocessConfig().max_gap
    if args.model:
        model = artifact_io.load(args.model)
        window, channels, max_gap = (
            args.window or model.window,
            model.channels,
            model.preprocess.max_gap,
        )
    streams = []
    for i, path in enumerate(args.data):
        recording = read(path, args)
        if channels is not None and recording.channels != channels:
            raise FaultwatchError(
                f"{path}: channels {recording.channels} differ from the model's {channels}"
            )
        machine = args.machine_id or Path(path).stem
        if args.machine_id and len(args.data) > 1:
            machine = f"{args.machine_id}-{i + 1}"
        streams.append(Stream.cut(machine, recording, window, max_gap=max_gap, stride=args.stride))
    return streams
