"""kafka-python behind the seam (the default client): pure Python, one dependency less to build."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.cluster import ClusterMetadata
from kafka.errors import (
    CommitFailedError,
    KafkaError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
    UnsupportedCodecError,
)
from kafka.partitioner import DefaultPartitioner
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from worker.errors import BrokerError, CommitError, PublishError
from worker.kafka.client import (
    CLOSE_TIMEOUT,
    COMMIT_TIMEOUT,
    CommitRefused,
    Listener,
    Partition,
    Polled,
    Undecodable,
)
from worker.settings import Settings

# Measured on the test broker: 8-13k records/s with these, 2-5k/s with kafka-python's defaults.
PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 20,
    "batch_size": 2**20,
    "delivery_timeout_ms": 120_000,
    "max_block_ms": 30_000,
}
SIZE_HINT = " (raise FAULTWATCH_MAX_REQUEST_BYTES and the topic's max.message.bytes)"


def consumer_options(settings: Settings) -> dict[str, Any]:
    """kafka-python consumer options, apart from the connection's."""
    static = {"group_instance_id": settings.group_instance_id} if settings.group_instance_id else {}
    return {
        "group_id": settings.group_id,
        **static,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "reconnect_backoff_max_ms": 10_000,
        **fetch_options(settings),
    }


def fetch_options(settings: Settings) -> dict[str, Any]:
    """How much the consumer fetches and hands over per poll (the benchmark reads with these)."""
    return {
        "max_poll_records": settings.max_poll_records,
        "fetch_max_bytes": settings.fetch_max_bytes,
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
    }


def producer_options(max_request_bytes: int) -> dict[str, Any]:
    """kafka-python producer options, apart from the connection's."""
    return {
        **PRODUCER_OPTIONS,
        "max_request_size": max_request_bytes,
        "partitioner": KeyPartitioner(),
    }


class KeyPartitioner(DefaultPartitioner):
    """The default (Java client's) partitioner, remembering each key's partition."""

    # Its murmur2 is pure Python: 7.8 us per record against 1.3 us remembered, of the ~50 us
    # that sending a score record costs. Keys are machine ids, a few thousand at most; the
    # partition count is part of the cache key, so a topic given more partitions is hashed
    # anew, as the default does.

    MAX_KEYS = 100_000  # then start over: bounded memory whatever the keys

    def __init__(self) -> None:
        self._known: dict[tuple[str, bytes, int], int] = {}

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: ClusterMetadata,
    ) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:  # random, or the default's own error
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        known = (topic, serialized_key, len(partitions))
        found = self._known.get(known)
        if found is None:
            if len(self._known) >= self.MAX_KEYS:
                self._known.clear()
            found = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            self._known[known] = found
        return found


def open_consumer(
    settings: Settings, timeout: float, max_poll_interval_ms: int = 300_000
) -> PyConsumer:
    """A group member with the worker's options; BrokerError if no broker answers in time."""
    try:
        client = KafkaConsumer(
            **settings.kafka_options(),
            **consumer_options(settings),
            max_poll_interval_ms=max_poll_interval_ms,
            bootstrap_timeout_ms=max(1, int(timeout * 1000)),
        )
    except (KafkaError, OSError) as exc:
        raise BrokerError(_unreachable(settings, timeout, exc)) from exc
    return PyConsumer(client)


def open_producer(settings: Settings, timeout: float) -> PyProducer:
    """A producer with the worker's options; BrokerError if no broker answers in time."""
    try:
        client = KafkaProducer(
            **settings.kafka_options(),
            **producer_options(settings.max_request_bytes),
            bootstrap_timeout_ms=max(1, int(timeout * 1000)),
        )
    except (KafkaError, OSError) as exc:
        raise BrokerError(_unreachable(settings, timeout, exc)) from exc
    return PyProducer(client)


class PyConsumer:
    """kafka-python's KafkaConsumer as the seam's Consumer."""

    def __init__(self, client: KafkaConsumer) -> None:
        self.client = client

    def subscribe(self, topic: str, listener: Listener) -> None:
        self.client.subscribe([topic], listener=_Rebalance(listener))

    def poll(self, timeout: float) -> Polled:
        # TopicPartition is a named tuple equal to Partition: the dict goes through as it is.
        try:
            return self.client.poll(timeout_ms=int(timeout * 1000))  # type: ignore[return-value]
        except UnsupportedCodecError as exc:
            raise Undecodable(str(exc), _failed_partition(self.client)) from exc

    def commit(self, offsets: dict[Partition, int]) -> None:
        meta = {TopicPartition(*p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        try:
            self.client.commit(meta, timeout_ms=int(COMMIT_TIMEOUT * 1000))
        except (CommitFailedError, RebalanceInProgressError) as exc:
            raise CommitRefused(str(exc)) from exc
        except KafkaError as exc:
            raise CommitError(f"commit failed: {exc}", retriable=exc.retriable) from exc

    def seek(self, partition: Partition, offset: int) -> None:
        self.client.seek(TopicPartition(*partition), offset)

    def assignment(self) -> set[Partition]:
        return {Partition(*tp) for tp in self.client.assignment()}

    def position(self, partition: Partition) -> int | None:
        try:
            return self.client.position(TopicPartition(*partition), timeout_ms=1_000)
        except KafkaError:
            return None

    def committed(self, partition: Partition) -> int | None:
        try:
            return self.client.committed(TopicPartition(*partition))
        except KafkaError:
            return None

    def high_watermark(self, partition: Partition) -> int | None:
        return self.client.highwater(TopicPartition(*partition))

    def heartbeat_age(self) -> float | None:
        try:
            group = self.client.metrics()["consumer-coordinator-metrics"]
            seconds = float(group["last-heartbeat-seconds-ago"])
        except (KeyError, TypeError, ValueError):  # an unstable kafka-python interface
            return None
        return seconds if seconds < math.inf else None  # inf: none sent yet

    def pause(self, partitions: Iterable[Partition]) -> None:
        self.client.pause(*(TopicPartition(*p) for p in partitions))

    def resume(self, partitions: Iterable[Partition]) -> None:
        self.client.resume(*(TopicPartition(*p) for p in partitions))

    def topics(self) -> dict[str, int]:
        try:
            names = self.client.topics()
            return {name: len(self.client.partitions_for_topic(name) or ()) for name in names}
        except KafkaError as exc:
            raise BrokerError(f"cannot list the broker's topics: {exc}") from exc

    def close(self) -> None:
        self.client.close(autocommit=False, timeout_ms=int(CLOSE_TIMEOUT * 1000))


def _failed_partition(consumer: KafkaConsumer) -> Partition | None:
    """The partition whose records kafka-python was unpacking when it raised (its fetcher keeps
    them as the next in line); None when this kafka-python keeps them elsewhere."""
    try:
        return Partition(*consumer._fetcher._next_partition_records.topic_partition)
    except (AttributeError, TypeError):
        return None


class _Rebalance(ConsumerRebalanceListener):
    """Forwards kafka-python's rebalance callbacks (run inside poll) to the listener."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.listener.on_assigned({Partition(*tp) for tp in assigned})

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.listener.on_revoked({Partition(*tp) for tp in revoked})

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.listener.on_lost({Partition(*tp) for tp in lost})


class _Delivery:
    """A kafka-python future as the seam's Delivery."""

    __slots__ = ("future",)

    def __init__(self, future: FutureRecordMetadata) -> None:
        self.future = future

    def done(self) -> bool:
        return self.future.is_done

    def error(self) -> BaseException | None:
        if not self.future.failed():
            return None
        exc = self.future.exception
        if isinstance(exc, MessageSizeTooLargeError):
            return PublishError(f"{exc}{SIZE_HINT}", retriable=False)
        return exc

    def retriable(self) -> bool:
        return self.future.retriable()


class PyProducer:
    """kafka-python's KafkaProducer as the seam's Producer."""

    def __init__(self, client: KafkaProducer) -> None:
        self.client = client

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> _Delivery:
        try:
            future = self.client.send(
                topic, key=key, value=value, headers=headers, partition=partition
            )
        except KafkaError as exc:
            hint = SIZE_HINT if isinstance(exc, MessageSizeTooLargeError) else ""
            raise PublishError(
                f"cannot send to {topic}: {exc}{hint}", retriable=exc.retriable
            ) from exc
        return _Delivery(future)

    def flush(self, timeout: float) -> None:
        try:
            self.client.flush(timeout=timeout)
        except KafkaError as exc:
            raise PublishError(f"outputs not acknowledged: {exc}", retriable=True) from exc

    def close(self, timeout: float) -> None:
        self.client.close(timeout=timeout)


def _unreachable(settings: Settings, timeout: float, exc: BaseException) -> str:
    return (
        f"cannot reach the Kafka broker at {settings.bootstrap_servers} within "
        f"{timeout:g} s ({type(exc).__name__}: {exc})"
    )
