"""Every Prometheus series of the worker, declared in one place."""

# No per-machine label: label cardinality is the user's Prometheus bill. Lag has one series
# per assigned input partition, removed when the partition goes to another replica.

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from model.episodes import CLOSE_REASONS
from worker.messages import REASONS

# Scores are squared errors in standardised units: log-spaced, 0.001 to 1000.
SCORE_BUCKETS = tuple(m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5)) + (1000.0,)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Episodes last from seconds (a blip) to days (a machine left running broken), in data time.
DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0)

Partition = tuple[str, int]  # (topic, partition)

if TYPE_CHECKING:
    from worker.pipeline import EpisodeCounts


class Metrics:
    """The worker's series, registered in `registry` (a fresh one per test)."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._last_commit = clock()
        self.windows_scored = Counter(
            "faultwatch_windows_scored", "Windows scored and committed.", registry=registry
        )
        self.anomalies = Counter(
            "faultwatch_anomalies", "Windows above the threshold (events).", registry=registry
        )
        self.dead_letters = Counter(
            "faultwatch_dead_letters",
            "Records sent to the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.score = Histogram(
            "faultwatch_score",
            "Anomaly score of scored windows.",
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.batch_duration = Histogram(
            "faultwatch_batch_duration_seconds",
            "Time from a polled batch to its committed offsets.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_retries = Counter(
            "faultwatch_batch_retries",
            "Batches rewound after a publish or commit failure.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "faultwatch_consumer_lag",
            "Records in the partition not yet committed by the group.",
            ["topic", "partition"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "faultwatch_assigned_partitions",
            "Input partitions assigned to this replica.",
            registry=registry,
        )
        self.ready = Gauge("faultwatch_ready", "1 while /readyz answers 200.", registry=registry)
        self.since_commit = Gauge(
            "faultwatch_seconds_since_last_commit",
            "Seconds since offsets were last committed (or since start): a stall grows it.",
            registry=registry,
        )
        self.since_commit.set_function(lambda: self._clock() - self._last_commit)
        self.model_info = Gauge(
            "faultwatch_model_info",
            "The model being served (value 1).",
            ["version", "window", "channels"],
            registry=registry,
        )
        self.model_threshold = Gauge(
            "faultwatch_model_threshold",
            "Score above which a window is an anomaly.",
            registry=registry,
        )
        self.episodes_open = Gauge(
            "faultwatch_episodes_open",
            "Open episodes in the partitions this replica holds (pending ones not counted).",
            registry=registry,
        )
        self.episodes_opened = Counter(
            "faultwatch_episodes_opened", "Episodes opened (committed).", registry=registry
        )
        self.episodes_closed = Counter(
            "faultwatch_episodes_closed",
            "Episodes closed (committed), by reason.",
            ["reason"],
            registry=registry,
        )
        self.episode_duration = Histogram(
            "faultwatch_episode_duration_seconds",
            "Data-time length of closed episodes, first anomalous window to normal again.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.late_windows = Counter(
            "faultwatch_late_windows",
            "Windows older than their machine's newest: scored, ignored by episodes.",
            registry=registry,
        )
        self.muted_machines = Gauge(
            "faultwatch_muted_machines",
            "Mutes in force (a machine id or a pattern each), from the control topic.",
            registry=registry,
        )
        for reason in REASONS:  # every reason exists from the start, so rate() sees the first
            self.dead_letters.labels(reason)
        for reason in CLOSE_REASONS:
            self.episodes_closed.labels(reason)

    def set_model(self, version: str, window: int, channels: int, threshold: float) -> None:
        self.model_info.labels(version, str(window), str(channels)).set(1)
        self.model_threshold.set(threshold)

    def batch_committed(
        self,
        scores: Iterable[float],
        anomalies: int,
        dead_letters: Mapping[str, int],
        seconds: float,
    ) -> None:
        """Count a batch once its offsets are committed, so a retried batch counts once."""
        scored = 0
        for score in scores:
            self.score.observe(score)
            scored += 1
        self.windows_scored.inc(scored)
        self.anomalies.inc(anomalies)
        for reason, count in dead_letters.items():
            self.dead_letters.labels(reason).inc(count)
        self.batch_duration.observe(seconds)
        self._last_commit = self._clock()

    def episodes_committed(self, counts: EpisodeCounts | None) -> None:
        """Count a batch's episodes once its offsets are committed."""
        if counts is None:
            return
        self.episodes_opened.inc(counts.opened)
        for reason, count in counts.closed.items():
            self.episodes_closed.labels(reason).inc(count)
        for seconds in counts.durations:
            self.episode_duration.observe(seconds)
        self.late_windows.inc(counts.late)

    def set_lag(self, lag: Mapping[Partition, int]) -> None:
        for (topic, partition), value in lag.items():
            self.consumer_lag.labels(topic, str(partition)).set(value)

    def forget_lag(self, partitions: Iterable[Partition]) -> None:
        """Drop the lag series of partitions this replica no longer reads."""
        for topic, partition in partitions:
            try:
                self.consumer_lag.remove(topic, str(partition))
            except KeyError:
                pass
