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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
    started, sends = clock(), Sends(producer, topic)
    for at, stream, k, loop in schedule(streams, rate, speed, loops):
        if limit is not None and sends.count >= limit:
            break
        if at is not None and (wait := started + at - clock()) > 0:
            sleep(wait)
        sends.send(stream.machine_id.encode(), _value(stream, k, loop))
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
    config = settings_io.load({"bootstrap_servers": args.bootstrap_servers})
    streams = [] if args.from_topic else _streams(args)
    total = None if args.loop or args.from_topic else sum(len(s.end_rows) for s in streams)
    if args.limit:
        total = min(total or args.limit, args.limit)
    producer = make_producer(config)
    with Progress(total, f"replay to {args.topic}", "window") as bar:
        try:
            if args.from_topic:
                span = TopicRange(args.from_offset, args.to_offset, since, until)
                sent = copy_topic(
                    config, args.from_topic, args.topic, span, producer, progress=bar.update
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
