"""The Kafka client seam: what the loop and the publisher ask of a client library.

Two libraries sit behind it: kafka-python (worker/kafka/kafka_python.py, the default) and
confluent-kafka (librdkafka, worker/kafka/confluent.py; `pip install faultwatch[rdkafka]`),
chosen by FAULTWATCH_KAFKA_CLIENT. Each adapter turns its library's errors into the worker's
(worker/errors.py): a commit the group refused mid-rebalance is `CommitRefused`, any other
failed commit `CommitError`, a record not acknowledged `PublishError`, an unreachable broker
`BrokerError`. The at-least-once rules live above the seam, in the loop, once for both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from worker.errors import WorkerError

if TYPE_CHECKING:
    from worker.settings import Settings

POLL_TIMEOUT = 0.5  # seconds: how quickly a stop request or the idle timer is noticed
COMMIT_TIMEOUT = 30.0  # seconds (librdkafka bounds its own commit by socket.timeout.ms)
CLOSE_TIMEOUT = 5.0  # seconds to leave the group when the worker stops


class Partition(NamedTuple):
    """A topic partition (equal to, and hashed as, kafka-python's TopicPartition)."""

    topic: str
    partition: int


class Message(Protocol):
    """A consumed record, as the pipeline reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


Polled = dict[Partition, list[Message]]  # a poll's records, by partition, in offset order


class Listener(Protocol):
    """Told of the group's assignments; called from inside `Consumer.poll`."""

    def on_assigned(self, partitions: set[Partition]) -> None: ...

    def on_revoked(self, partitions: set[Partition]) -> None: ...

    def on_lost(self, partitions: set[Partition]) -> None: ...


class CommitRefused(WorkerError):
    """The group refused a commit because it is rebalancing (or has moved on without us)."""


class Undecodable(WorkerError):
    """A fetched batch is compressed with a codec this process cannot decode."""

    def __init__(self, message: str, partition: Partition | None) -> None:
        super().__init__(message)
        self.partition = partition  # None when the client cannot tell which


class Consumer(Protocol):
    """A group member with manual commits."""

    def subscribe(self, topic: str, listener: Listener) -> None: ...

    def poll(self, timeout: float) -> Polled:
        """At most FAULTWATCH_MAX_POLL_RECORDS records; rebalance callbacks run in here.
        Undecodable when a batch's codec cannot be decoded here."""
        ...

    def commit(self, offsets: dict[Partition, int]) -> None:
        """Commit the next offset to read of each partition; blocks until acknowledged."""
        ...

    def seek(self, partition: Partition, offset: int) -> None: ...

    def assignment(self) -> set[Partition]: ...

    def position(self, partition: Partition) -> int | None: ...

    def committed(self, partition: Partition) -> int | None: ...

    def high_watermark(self, partition: Partition) -> int | None:
        """From the last fetch (end_offsets is wrong on some brokers); None before one."""
        ...

    def heartbeat_age(self) -> float | None:
        """Seconds since the last heartbeat to the coordinator; None when unknown."""
        ...

    def pause(self, partitions: Iterable[Partition]) -> None: ...

    def resume(self, partitions: Iterable[Partition]) -> None: ...

    def topics(self) -> dict[str, int]:
        """Every topic the broker shows us, with its partition count."""
        ...

    def close(self) -> None: ...


class Delivery(Protocol):
    """One sent record's acknowledgement, once the producer has flushed."""

    def done(self) -> bool: ...

    def error(self) -> BaseException | None: ...

    def retriable(self) -> bool: ...


class Producer(Protocol):
    """Sends records; `flush` waits for every acknowledgement."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> Delivery:
        """Queue one record; PublishError when the client refuses it outright."""
        ...

    def flush(self, timeout: float) -> None:
        """Wait for every queued record; PublishError if the client itself fails."""
        ...

    def close(self, timeout: float) -> None: ...


def open_consumer(
    settings: Settings, timeout: float | None = None, max_poll_interval_ms: int = 300_000
) -> Consumer:
    """The configured client's group member; BrokerError if the broker does not answer within
    `timeout` seconds (FAULTWATCH_STARTUP_TIMEOUT by default)."""
    timeout = settings.startup_timeout if timeout is None else timeout
    if settings.kafka_client == "confluent":
        from worker.kafka import confluent

        return confluent.open_consumer(settings, timeout, max_poll_interval_ms)
    from worker.kafka import kafka_python

    return kafka_python.open_consumer(settings, timeout, max_poll_interval_ms)


def open_producer(settings: Settings, timeout: float | None = None) -> Producer:
    """The configured client's producer; BrokerError as for `open_consumer`."""
    timeout = settings.startup_timeout if timeout is None else timeout
    if settings.kafka_client == "confluent":
        from worker.kafka import confluent

        return confluent.open_producer(settings, timeout)
    from worker.kafka import kafka_python

    return kafka_python.open_producer(settings, timeout)
