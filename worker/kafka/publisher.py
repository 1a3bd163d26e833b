"""Sending a batch's outputs and waiting until the broker has acknowledged every one of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from worker.errors import PublishError
from worker.kafka.client import Delivery, Producer
from worker.outputs import Output

log = logging.getLogger(__name__)

FLUSH_TIMEOUT = 130.0  # seconds: a little over the delivery timeout, so every send settles
CLOSE_TIMEOUT = 10.0  # seconds to send what is left when the worker stops
BEST_EFFORT_PAUSE = 60.0  # seconds without shadow records after one was not sent or refused


class Publisher:
    """Publishes outputs; returns only when all are acknowledged, else raises PublishError."""

    def __init__(
        self,
        producer: Producer,
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
        futures: list[tuple[Output, Delivery]] = []
        lost = 0
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
        self.producer.flush(self.flush_timeout)  # PublishError if the client itself fails
        for output, future in futures:
            error = future.error() if future.done() else None
            if output.best_effort and (not future.done() or error is not None):
                lost += 1
                self._pause_best_effort()
                continue
            if not future.done():
                raise PublishError(f"no acknowledgement from {output.topic}", retriable=True)
            if error is not None:
                if isinstance(error, PublishError):  # the client's own words, with a hint
                    raise PublishError(f"{output.topic} refused a record: {error}", retriable=False)
                raise PublishError(
                    f"{output.topic} refused a record: {error}", retriable=future.retriable()
                ) from error
        return lost

    def _pause_best_effort(self) -> None:
        self._best_effort_from = time.monotonic() + self.best_effort_pause

    def _send(self, output: Output) -> Delivery:
        return self.producer.send(
            output.topic, output.key, output.value, output.headers, output.partition
        )

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        self.producer.close(timeout)
