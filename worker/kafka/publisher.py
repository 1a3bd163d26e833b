"""Sending a batch's outputs and waiting until the broker has acknowledged every one of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.cluster import ClusterMetadata
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.partitioner import DefaultPartitioner

from worker.errors import PublishError
from worker.outputs import Output

log = logging.getLogger(__name__)

# Measured on the test broker: 8-13k records/s with these, 2-5k/s with kafka-python's defaults.
PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 20,
    "batch_size": 2**20,
    "delivery_timeout_ms": 120_000,
    "max_block_ms": 30_000,
}
FLUSH_TIMEOUT = 130.0  # seconds: a little over delivery_timeout_ms, so every send settles
CLOSE_TIMEOUT = 10.0  # seconds to send what is left when the worker stops
BEST_EFFORT_PAUSE = 60.0  # seconds without shadow records after one was not sent or refused


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


class Publisher:
    """Publishes outputs; returns only when all are acknowledged, else raises PublishError."""

    def __init__(
        self,
        producer: KafkaProducer,
        flush_timeout: float = FLUSH_TIMEOUT,
        best_effort_pause: float = BEST_EFFORT_PAUSE,
    ) -> None:
        self.producer = producer
        self.flush_timeout = flush_timeout
        self.best_effort_pause = best_effort_pause
        self._best_effort_from = 0.0  # monotonic time from which shadow records are sent again

    def publish(self, outputs: Sequence[Output]) -> int:
        """Send everything, flush, then check each acknowledgement. Returns how many best-effort
        outputs (shadow score records) were not acknowledged: those never fail the batch.

        A shadow topic that cannot be reached would block each batch's first send for
        max_block_ms, so after one failure shadow records are dropped (counted) for a pause."""
        futures, lost = [], 0
        paused = time.monotonic() < self._best_effort_from
        for output in outputs:
            if output.best_effort:
                if lost or paused:  # its topic refused one already: go on without the rest
                    lost += 1
                    continue
                try:
                    futures.append((output, self._send(output)))
                except PublishError as exc:
                    log.warning(
                        "shadow record not sent, shadow records off for %g s topic=%s error=%s",
                        self.best_effort_pause,
                        output.topic,
                        exc,
                    )
                    self._pause_best_effort()
                    lost += 1
            else:
                futures.append((output, self._send(output)))
        try:
            self.producer.flush(timeout=self.flush_timeout)
        except KafkaError as exc:
            raise PublishError(f"outputs not acknowledged: {exc}", retriable=True) from exc
        for output, future in futures:
            if output.best_effort and (not future.is_done or future.failed()):
                lost += 1
                self._pause_best_effort()
                continue
            if not future.is_done:
                raise PublishError(f"no acknowledgement from {output.topic}", retriable=True)
            if future.failed():
                exc = future.exception
                raise PublishError(
                    f"{output.topic} refused a record: {exc}{_hint(exc)}",
                    retriable=future.retriable(),
                ) from exc
        return lost

    def _pause_best_effort(self) -> None:
        self._best_effort_from = time.monotonic() + self.best_effort_pause

    def _send(self, output: Output):
        try:
            return self.producer.send(
                output.topic,
                key=output.key,
                value=output.value,
                headers=output.headers,
                partition=output.partition,
            )
        except KafkaError as exc:
            raise PublishError(
                f"cannot send to {output.topic}: {exc}{_hint(exc)}", retriable=exc.retriable
            ) from exc

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        self.producer.close(timeout=timeout)


def _hint(exc: BaseException) -> str:
    """What to change when the broker or the client refuses a record's size."""
    if isinstance(exc, MessageSizeTooLargeError):
        return " (raise FAULTWATCH_MAX_REQUEST_BYTES and the topic's max.message.bytes)"
    return ""
