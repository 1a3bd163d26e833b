"""confluent-kafka (librdkafka) behind the seam: FAULTWATCH_KAFKA_CLIENT=confluent.

librdkafka fetches, decompresses and checks records on its own threads, outside the
interpreter lock: the worker's process keeps its one core for decoding and scoring. Its
defaults differ from kafka-python's where it matters here, so they are set: keyed records
go where the Java client (and kafka-python) put them (`murmur2_random`), the consumer's
prefetch is bounded like kafka-python's, and its log lines go through Python logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _Producer

from worker.errors import BrokerError, CommitError, PublishError
from worker.kafka.client import CommitRefused, Listener, Partition, Polled
from worker.settings import Settings

log = logging.getLogger(__name__)

# What a refused commit looks like from librdkafka: the group moved on while the batch was
# in hand. The loop seeks the batch back; whoever owns the partitions next reads it again.
REFUSED = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.STALE_MEMBER_EPOCH,
    KafkaError.FENCED_MEMBER_EPOCH,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._MAX_POLL_EXCEEDED,
    KafkaError._STATE,  # not in the group (left it, or rejoining)
}
# kafka-python's levels as syslog levels, librdkafka's unit.
LOG_LEVELS = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
SEND_BLOCK = 30.0  # seconds a full send queue may hold a send (kafka-python's max_block_ms)
SIZE_HINT = " (raise FAULTWATCH_MAX_REQUEST_BYTES and the topic's max.message.bytes)"


def common_options(settings: Settings) -> dict[str, Any]:
    """Connection, identity, security and logging, for every librdkafka client."""
    return settings.librdkafka_options() | {
        "log_level": LOG_LEVELS[settings.kafka_log_level],
        "logger": logging.getLogger("librdkafka"),
        "reconnect.backoff.max.ms": 10_000,
    }


def consumer_options(settings: Settings, max_poll_interval_ms: int = 300_000) -> dict[str, Any]:
    """librdkafka consumer options: a group member with manual commits, as kafka-python's."""
    static = {"group.instance.id": settings.group_instance_id} if settings.group_instance_id else {}
    return {
        "group.id": settings.group_id,
        **static,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        "max.poll.interval.ms": max(max_poll_interval_ms, settings.session_timeout_ms),
        **fetch_options(settings),
    }


def fetch_options(settings: Settings) -> dict[str, Any]:
    """How much librdkafka fetches, and keeps fetched ahead of the loop (about two fetches)."""
    return {
        "fetch.max.bytes": settings.fetch_max_bytes,
        "max.partition.fetch.bytes": settings.max_partition_fetch_bytes,
        "message.max.bytes": max(1_000, min(1_000_000, settings.fetch_max_bytes)),
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        "queued.max.messages.kbytes": max(1, 2 * settings.fetch_max_bytes // 1024),
    }


def producer_options(max_request_bytes: int) -> dict[str, Any]:
    """librdkafka producer options matching kafka-python's PRODUCER_OPTIONS."""
    return {
        "acks": "all",
        "linger.ms": 20,
        "batch.size": min(2**20, max_request_bytes),
        "message.max.bytes": max_request_bytes,
        "delivery.timeout.ms": 120_000,
        "partitioner": "murmur2_random",  # the Java client's: keys keep their partitions
    }


class Record:
    """A consumed record with attributes, as the pipeline reads it."""

    __slots__ = ("topic", "partition", "offset", "key", "value", "headers")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.key, self.value, self.headers = key, value, headers


def open_consumer(
    settings: Settings, timeout: float, max_poll_interval_ms: int = 300_000
) -> RdConsumer:
    """A group member with the worker's options; BrokerError if no broker answers in time."""
    fatal = Fatal()
    options = common_options(settings) | consumer_options(settings, max_poll_interval_ms)
    client = _Consumer(options | {"error_cb": fatal})
    try:
        client.list_topics(timeout=timeout)  # the broker answers, or we say so now
    except KafkaException as exc:
        client.close()
        raise BrokerError(_unreachable(settings, timeout, exc)) from exc
    return RdConsumer(client, settings.max_poll_records, timeout, settings.auto_offset_reset, fatal)


def open_producer(settings: Settings, timeout: float) -> RdProducer:
    """A producer with the worker's options; BrokerError if no broker answers in time."""
    client = _Producer(common_options(settings) | producer_options(settings.max_request_bytes))
    try:
        client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(_unreachable(settings, timeout, exc)) from exc
    return RdProducer(client)


class Fatal:
    """librdkafka's error callback: remembers an error it will not recover from."""

    def __init__(self) -> None:
        self.error: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if error.fatal():
            self.error = error
        log.debug("librdkafka error=%s", error)


class RdConsumer:
    """confluent_kafka.Consumer as the seam's Consumer."""

    def __init__(
        self,
        client: _Consumer,
        max_records: int,
        timeout: float,
        reset: str = "earliest",
        fatal: Fatal | None = None,
    ) -> None:
        self.client = client
        self.max_records = max_records
        self.timeout = timeout  # for the broker's answers outside the poll
        self.reset = reset  # auto.offset.reset: where a partition without a commit starts
        self.fatal = fatal or Fatal()

    def subscribe(self, topic: str, listener: Listener) -> None:
        def assigned(consumer: Any, partitions: list[TopicPartition]) -> None:
            listener.on_assigned(_partitions(partitions))

        def revoked(consumer: Any, partitions: list[TopicPartition]) -> None:
            listener.on_revoked(_partitions(partitions))

        def lost(consumer: Any, partitions: list[TopicPartition]) -> None:
            listener.on_lost(_partitions(partitions))

        self.client.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=lost)

    def poll(self, timeout: float) -> Polled:
        try:
            messages = self.client.consume(num_messages=self.max_records, timeout=timeout)
        except KafkaException as exc:
            raise BrokerError(f"the Kafka client failed: {exc}") from exc
        if self.fatal.error is not None:
            raise BrokerError(f"the Kafka client failed for good: {self.fatal.error.str()}")
        polled: dict[Partition, list[Any]] = {}
        for message in messages:
            if message.error() is not None:
                log.warning("fetch error topic=%s error=%s", message.topic(), message.error())
                continue
            topic, partition = message.topic(), message.partition()
            record = Record(
                topic, partition, message.offset(), message.key(), message.value(), None
            )
            batch = polled.get((topic, partition))  # type: ignore[call-overload]
            if batch is None:
                polled[Partition(topic, partition)] = [record]
            else:
                batch.append(record)
        return polled

    def commit(self, offsets: dict[Partition, int]) -> None:
        request = [TopicPartition(p.topic, p.partition, o) for p, o in offsets.items()]
        try:
            answers = self.client.commit(offsets=request, asynchronous=False) or []
        except KafkaException as exc:
            _commit_failed(exc.args[0])
            raise  # _commit_failed always raises
        for answer in answers:
            if answer.error is not None:
                _commit_failed(answer.error)

    def seek(self, partition: Partition, offset: int) -> None:
        try:
            self.client.seek(TopicPartition(partition.topic, partition.partition, offset))
        except KafkaException as exc:
            # Not rewound, the batch would be skipped: stop instead; a restart reads it again.
            raise BrokerError(
                f"cannot rewind {partition.topic}-{partition.partition} to {offset}: {exc}"
            ) from exc

    def assignment(self) -> set[Partition]:
        return _partitions(self.client.assignment())

    def position(self, partition: Partition) -> int | None:
        """The next offset this member reads, as kafka-python's: before librdkafka has handed
        over a record of the partition, its committed offset, else where the reset puts it."""
        tp = TopicPartition(*partition)
        try:
            (found,) = self.client.position([tp])
            if found.offset >= 0:
                return found.offset
            (stored,) = self.client.committed([tp], timeout=self.timeout)
            if stored.offset >= 0:
                return stored.offset
            marks = self.client.get_watermark_offsets(tp, timeout=self.timeout)
        except KafkaException:
            return None
        if not marks:
            return None
        return marks[0] if self.reset == "earliest" else marks[1]

    def committed(self, partition: Partition) -> int | None:
        try:
            (found,) = self.client.committed([TopicPartition(*partition)], timeout=self.timeout)
        except KafkaException:
            return None
        return found.offset if found.offset >= 0 else None

    def high_watermark(self, partition: Partition) -> int | None:
        try:
            marks = self.client.get_watermark_offsets(TopicPartition(*partition), cached=True)
        except KafkaException:
            return None
        return marks[1] if marks and marks[1] >= 0 else None

    def heartbeat_age(self) -> float | None:
        return None  # librdkafka does not say; a loop blocked past its session still shows

    def pause(self, partitions: Iterable[Partition]) -> None:
        self.client.pause([TopicPartition(*p) for p in partitions])

    def resume(self, partitions: Iterable[Partition]) -> None:
        self.client.resume([TopicPartition(*p) for p in partitions])

    def topics(self) -> dict[str, int]:
        try:
            metadata = self.client.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise BrokerError(f"cannot list the broker's topics: {exc}") from exc
        return {
            name: len(topic.partitions)
            for name, topic in metadata.topics.items()
            if topic.error is None
        }

    def close(self) -> None:
        self.client.close()


def _partitions(partitions: list[TopicPartition]) -> set[Partition]:
    return {Partition(tp.topic, tp.partition) for tp in partitions}


def _commit_failed(error: KafkaError) -> None:
    if error.code() in REFUSED:
        raise CommitRefused(error.str())
    raise CommitError(f"commit failed: {error.str()}", retriable=error.retriable())


class _Ack:
    """One record's delivery report, filled in by librdkafka's callback during flush."""

    __slots__ = ("settled", "failure")

    def __init__(self) -> None:
        self.settled = False
        self.failure: KafkaError | None = None

    def report(self, error: KafkaError | None, message: Any) -> None:
        self.settled, self.failure = True, error

    def done(self) -> bool:
        return self.settled

    def error(self) -> BaseException | None:
        if self.failure is None:
            return None
        if self.failure.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            return PublishError(f"{self.failure.str()}{SIZE_HINT}", retriable=False)
        return KafkaException(self.failure)

    def retriable(self) -> bool:
        return self.failure is not None and self.failure.retriable()


class RdProducer:
    """confluent_kafka.Producer as the seam's Producer."""

    def __init__(self, client: _Producer) -> None:
        self.client = client

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> _Ack:
        ack = _Ack()
        where = {} if partition is None else {"partition": partition}
        deadline = None
        while True:
            try:
                self.client.produce(
                    topic, value, key, headers=headers or None, on_delivery=ack.report, **where
                )
                return ack
            except BufferError:  # the send queue is full: let deliveries drain it
                deadline = deadline or time.monotonic() + SEND_BLOCK
                if time.monotonic() > deadline:
                    raise PublishError(
                        f"cannot send to {topic}: the send queue stayed full", retriable=True
                    ) from None
                self.client.poll(0.1)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                hint = SIZE_HINT if error.code() == KafkaError.MSG_SIZE_TOO_LARGE else ""
                raise PublishError(
                    f"cannot send to {topic}: {error.str()}{hint}", retriable=error.retriable()
                ) from exc

    def flush(self, timeout: float) -> None:
        self.client.flush(timeout)  # what is left unsent shows as deliveries not done

    def close(self, timeout: float) -> None:
        self.client.flush(timeout)


def _unreachable(settings: Settings, timeout: float, exc: BaseException) -> str:
    return (
        f"cannot reach the Kafka broker at {settings.bootstrap_servers} within "
        f"{timeout:g} s ({type(exc).__name__}: {exc})"
    )
