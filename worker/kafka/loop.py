"""The loop: poll a batch, score it, publish its outputs, then commit its offsets."""

# At least once: offsets are committed only after the broker acknowledged every output of the
# batch, and before the next poll. Rebalances happen inside `poll`, so when partitions are
# revoked everything finished is committed already. A commit the group refused (it moved on
# while the batch was in hand) rewinds the batch's partitions to their committed offsets:
# whoever holds them after the rebalance, this worker included, reads the batch again and
# counts it when its commit succeeds. A failed publish or commit rewinds too, and backs off.
# Models are re-read between two batches (worker/models.py): a batch is scored, published and
# committed by one set of models, so a reload neither loses nor repeats a window; never between
# a batch and its retry, which is an exact replay of the first attempt (the episode state and
# the mutes it saw are rolled back with it: worker/state/).
# A batch compressed with a codec this process cannot decode (its library missing, or a codec
# newer than kafka-python) pauses its partition: one error line, faultwatch_partitions_paused,
# nothing committed past it, the other partitions go on. Skipping it would lose its windows,
# and raising would restart the worker into the same batch forever. Once the library is
# installed, a restart (or the partition's next assignment) reads the batch again.

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.errors import BatchError
from worker.health import Health
from worker.kafka.client import (
    POLL_TIMEOUT,
    CommitRefused,
    Consumer,
    Partition,
    Polled,
    Undecodable,
)
from worker.kafka.publisher import Publisher
from worker.metrics import Metrics
from worker.models import Lifecycle
from worker.pipeline import Pipeline
from worker.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0  # seconds between retries of a failed batch, at most
IDLE_RETRY = 5.0  # seconds before an idle step whose publish failed is tried again


@dataclass
class Totals:
    """What this run did, for the shutdown log line."""

    batches: int = 0
    windows: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    busy_seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.windows / self.busy_seconds if self.busy_seconds else 0.0
        return (
            f"batches={self.batches} windows={self.windows} anomalies={self.anomalies} "
            f"dead_letters={self.dead_letters} busy_seconds={self.busy_seconds:.2f} "
            f"windows_per_busy_second={rate:.0f}"
        )

    def add(self, windows: int, anomalies: int, dead_letters: int, seconds: float) -> None:
        self.batches += 1
        self.windows += windows
        self.anomalies += anomalies
        self.dead_letters += dead_letters
        self.busy_seconds += seconds


class Loop:
    """Consumes the input topic until stopped, idle for `idle_exit` seconds, or broken."""

    def __init__(
        self,
        consumer: Consumer,
        publisher: Publisher,
        pipeline: Pipeline,
        metrics: Metrics,
        health: Health,
        settings: Settings,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        models: Lifecycle | None = None,
    ) -> None:
        self.consumer = consumer
        self.models = models  # None: the models loaded at start, never re-read
        self.publisher = publisher
        self.pipeline = pipeline
        self.metrics = metrics
        self.health = health
        self.settings = settings
        self.clock = clock
        self.totals = Totals()
        self._stop = stop or threading.Event()  # set by a signal handler, or by request_stop
        self._stop_reason = ""
        self._assigned: set[Partition] | None = None  # None while (re)joining the group
        self._first_join = True  # until assigned, or until a slow first join is logged
        self._retry: str | None = None  # why the last batch failed, while retrying
        self._redo = False  # a batch was sought back, uncommitted: it comes again, as it was
        self._next_idle = clock()  # the next idle step, at the earliest
        self._failures = 0
        self._last_activity = clock()
        self._next_refresh = clock()
        self._paused: set[Partition] = set()  # partitions whose batch cannot be decoded

    def request_stop(self, reason: str) -> None:
        """Finish the batch in hand, commit and return from `run` (signal-handler safe)."""
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def run(self) -> str:
        """Consume until stopped; returns why it stopped. Raises WorkerError when broken."""
        self.consumer.subscribe(self.settings.input_topic, self)
        started = self.clock()
        # Start-up's objects (torch, the model, the clients) leave the collector's view: its
        # full passes then walk only what the loop allocates, instead of pausing it 100+ ms.
        gc.freeze()
        try:
            while not self._stop.is_set():
                self.health.tick()
                if self.models is not None and not self._redo:
                    self.models.between_batches()  # never between a batch and its retry
                polled = self._poll()
                if polled:
                    self._last_activity = self.clock()
                    self._handle(polled)
                if not self._redo:
                    self._idle_step()
                self._check_timers(started)
        finally:
            gc.unfreeze()
            self.health.set_not_ready("shutting down")
        return self._stop_reason or "stop requested"

    def _poll(self) -> Polled:
        """The next batch; a partition whose batch cannot be decompressed is paused instead."""
        try:
            return self.consumer.poll(POLL_TIMEOUT)
        except Undecodable as exc:
            self._pause_undecodable(exc)
            return {}

    def _pause_undecodable(self, exc: Undecodable) -> None:
        """Stop reading the partition that raised (all assigned ones if it cannot be told)."""
        failed = exc.partition
        partitions = ({failed} if failed is not None else set()) - self._paused
        if not partitions:
            partitions = set(self._assigned or ()) - self._paused
        if not partitions:  # not seen: nothing left to read that could have raised
            log.error("a batch cannot be decompressed error=%s", exc)
            self._stop.wait(MAX_BACKOFF)
            return
        self.consumer.pause(partitions)
        self._paused |= partitions
        self.metrics.partitions_paused.set(len(self._paused))
        for tp in sorted(partitions):
            log.error(
                "partition paused: a batch cannot be decompressed topic=%s partition=%d "
                "offset=%s error=%s; nothing past it is committed: install the codec's library "
                "(kafka-python[lz4,snappy,zstd]) and restart the worker",
                tp.topic,
                tp.partition,
                self.consumer.position(tp),
                exc,
            )

    def _handle(self, polled: Polled) -> None:
        """One batch end to end; a retriable failure rewinds it and backs off."""
        started = self.clock()
        records = [record for batch in polled.values() for record in batch]
        self.pipeline.restore(self._resume_points(polled))  # state of new partitions first
        result = self.pipeline.process(records)
        try:
            lost = self.publisher.publish(result.outputs)
            committed = self._commit({tp: batch[-1].offset + 1 for tp, batch in polled.items()})
        except BatchError as exc:
            if not exc.retriable:
                raise
            self._rewind(polled, exc)
            return
        if not committed:
            self._seek_back(polled)  # read again by the partitions' next owner: counted then
            self._redo = True
            return
        self._redo = False
        seconds = self.clock() - started
        self.metrics.batch_committed(result.models, result.dead_letters, seconds)
        self.metrics.episodes_committed(result.episodes)
        self.metrics.readings_committed(result.readings)
        self.metrics.shadow_committed(result.shadow)
        self.metrics.shadow_failures.inc(result.shadow_failures + lost)
        self.totals.add(len(result.scores), result.anomalies, result.dead_letters.total(), seconds)
        if self._retry:
            log.info("batch retry succeeded after=%d failures", self._failures)
            self._retry, self._failures = None, 0
            self._update_readiness()

    def _idle_step(self) -> None:
        """Idle partitions' clocks move on by processing time: publish the silent closes."""
        if self.clock() < self._next_idle or self._assigned is None:
            return
        # Partitions assigned with nothing to read are restored too: their silence counts.
        self.pipeline.restore(self._resume_points({}))
        paused = {tp.partition for tp in self._paused}  # stuck, not quiet: no silence there
        outputs, counts = self.pipeline.idle(skip=paused)
        if not outputs:
            return
        try:
            self.publisher.publish(outputs)
        except BatchError as exc:
            if not exc.retriable:
                raise
            self.pipeline.idle_failed()
            self._next_idle = self.clock() + IDLE_RETRY
            log.warning("idle partitions' silent closes not published, retrying error=%s", exc)
            return
        self.metrics.episodes_committed(counts)

    def _resume_points(self, polled: Polled) -> dict[int, int]:
        """Where each assigned partition without restored state resumes (episodes only)."""
        starts = {tp.partition: batch[0].offset for tp, batch in polled.items()}
        missing = self.pipeline.unrestored(tp.partition for tp in self._assigned or ())
        for tp in self._assigned or ():
            if tp.partition in missing and tp.partition not in starts:
                position = self.consumer.position(tp)  # None: not known before a fetch
                if position is not None:
                    starts[tp.partition] = position
        return {p: offset for p, offset in starts.items() if p in missing}

    def _commit(self, offsets: dict[Partition, int]) -> bool:
        """True once committed; False when the group refused it because it is rebalancing."""
        try:
            self.consumer.commit(offsets)  # CommitError when it fails otherwise
        except CommitRefused as exc:
            log.warning("commit refused, rebalancing offsets=%s error=%s", _describe(offsets), exc)
            return False
        return True

    def _seek_back(self, polled: Polled) -> None:
        """Each partition of the batch back to its first record: the group's committed offset."""
        # kafka-python keeps the positions of partitions a rebalance gives back to this member
        # (unless the group dropped it), so the batch would be skipped here and never counted;
        # librdkafka fetches ahead, and would hand over the records after the batch.
        assigned = self.consumer.assignment()
        for tp, batch in polled.items():
            if tp in assigned:
                self.consumer.seek(tp, batch[0].offset)

    def _rewind(self, polled: Polled, exc: BatchError) -> None:
        """Re-read the failed batch after a backoff: at least once, never lost."""
        self._seek_back(polled)
        self._redo = True
        self._failures += 1
        self._retry = str(exc)
        self.metrics.batch_retries.inc()
        delay = min(MAX_BACKOFF, 0.5 * 2 ** (self._failures - 1))
        log.warning("batch failed, retrying in=%.1fs error=%s", delay, exc)
        self._update_readiness()
        self._stop.wait(delay)

    def _check_timers(self, started: float) -> None:
        """Idle exit, a slow first join, and the periodic lag and readiness refresh."""
        now = self.clock()
        if self._first_join and now - started > self.settings.startup_timeout:
            # The broker answers: keep waiting, not ready. A group whose members crashed waits
            # for their sessions to expire; exiting now would only restart the wait.
            self._first_join = False  # said once
            log.warning(
                "no partition assignment from group=%s after %g s; still waiting "
                "(a crashed member's session must expire first)",
                self.settings.group_id,
                self.settings.startup_timeout,
            )
        idle = self.settings.idle_exit
        if idle and self._assigned is not None and now - self._last_activity >= idle:
            self.request_stop(f"idle for {idle:g} s")
        if now >= self._next_refresh:
            self._next_refresh = now + self.settings.lag_interval
            self._refresh_lag()
            self._update_readiness()

    def _refresh_lag(self) -> None:
        """Lag from the last fetch's high watermark (end_offsets is wrong on some brokers)."""
        lag = {}
        for tp in self._assigned or ():
            high = self.consumer.high_watermark(tp)
            position = self.consumer.position(tp)
            if high is not None and position is not None:
                lag[(tp.topic, tp.partition)] = max(0, high - position)
        self.metrics.set_lag(lag)

    def _update_readiness(self) -> None:
        if self._stop.is_set():
            self.health.set_not_ready("shutting down")
        elif self._assigned is None:
            self.health.set_not_ready("waiting for the consumer group")
        elif self._retry:
            self.health.set_not_ready(f"retrying a failed batch: {self._retry}")
        elif self._heartbeat_late():
            session = self.settings.session_timeout_ms / 1000
            self.health.set_not_ready(
                f"no heartbeat to the group coordinator for over {session:g} s"
            )
        else:
            self.health.set_ready()

    def _heartbeat_late(self) -> bool:
        """No heartbeat for longer than a session: the broker is gone, or we are cut off."""
        seconds = self.consumer.heartbeat_age()  # None: unknown, or none sent yet
        return seconds is not None and seconds > self.settings.session_timeout_ms / 1000

    # Rebalance hooks (the seam's Listener): they run inside our own poll().

    def on_assigned(self, partitions: set[Partition]) -> None:
        self._assigned, self._first_join = set(partitions), False
        self._last_activity = self.clock()
        self.metrics.assigned_partitions.set(len(partitions))
        log.info("partitions assigned partitions=%s", _describe(partitions) or "none")
        self._update_readiness()

    def on_revoked(self, partitions: set[Partition]) -> None:
        # Nothing to commit here: every batch was committed, or refused and sought back.
        self._forget(partitions)
        if partitions:
            log.info("partitions revoked partitions=%s", _describe(partitions))

    def on_lost(self, partitions: set[Partition]) -> None:
        self._forget(partitions)
        log.warning("partitions lost partitions=%s", _describe(partitions) or "none")

    def _forget(self, partitions: set[Partition]) -> None:
        self._paused -= set(partitions)  # paused no more if they come back: tried again then
        self.metrics.partitions_paused.set(len(self._paused))
        self.pipeline.forget(tp.partition for tp in partitions)  # restored again if they return
        self._assigned = None  # until the group's next assignment
        self.metrics.assigned_partitions.set(0)
        self.metrics.forget_lag((tp.topic, tp.partition) for tp in partitions)
        self._update_readiness()  # not ready while the group reassigns partitions


def _describe(partitions: Any) -> str:
    """topic-partition[@offset] list for a log line."""
    if isinstance(partitions, dict):
        return ",".join(f"{tp.topic}-{tp.partition}@{o}" for tp, o in sorted(partitions.items()))
    return ",".join(f"{tp.topic}-{tp.partition}" for tp in sorted(partitions))
