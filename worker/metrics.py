"""Every Prometheus series of the worker, declared in one place."""

# No per-machine label: label cardinality is the user's Prometheus bill. Lag has one series
# per assigned input partition, removed when the partition goes to another replica. The `model`
# label is a model file's name (its stem: `pump` for pump.fwm), so there are as many as model
# files, and a retrained `pump` goes on in the same series; its version is in
# faultwatch_model_info, whose series of a model out of service are removed.

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from model.episodes import CLOSE_REASONS, LABELS
from worker.control.records import SKIP_REASONS as CONTROL_SKIP_REASONS
from worker.inputs.windows import REASONS
from worker.state.changelog import SKIP_REASONS as STATE_SKIP_REASONS

# Scores are squared errors in standardised units: log-spaced, 0.001 to 1000.
SCORE_BUCKETS = tuple(m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5)) + (1000.0,)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Episodes last from seconds (a blip) to days (a machine left running broken), in data time.
DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0)

Partition = tuple[str, int]  # (topic, partition)

if TYPE_CHECKING:
    from worker.inputs.stage import ReadingCounts
    from worker.pipeline import EpisodeCounts, ModelBatch
    from worker.routing import Routes


class Metrics:
    """The worker's series, registered in `registry` (a fresh one per test)."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._last_commit = clock()
        self._live: Routes | None = None
        self._shadow: Routes | None = None
        self._live_versions: dict[str, str] = {}  # name -> version of the live models
        self.windows_scored = Counter(
            "faultwatch_windows_scored",
            "Windows scored and committed, by model.",
            ["model"],
            registry=registry,
        )
        self.anomalies = Counter(
            "faultwatch_anomalies",
            "Windows above the threshold, by model.",
            ["model"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "faultwatch_dead_letters",
            "Records sent to the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.score = Histogram(
            "faultwatch_score",
            "Anomaly score of scored windows, by model.",
            ["model"],
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
            "The models in service (value 1): live ones score, shadow ones are candidates.",
            ["model", "version", "window", "channels", "role"],
            registry=registry,
        )
        self.model_threshold = Gauge(
            "faultwatch_model_threshold",
            "Score above which a window is an anomaly, by live model.",
            ["model"],
            registry=registry,
        )
        self.model_reload_failures = Counter(
            "faultwatch_model_reload_failures",
            "Model files refused on a re-read (load, checks, ambiguous patterns): not served.",
            registry=registry,
        )
        self.score_drift = Gauge(
            "faultwatch_score_drift",
            "PSI of a live model's recent normal scores against its held-out ones at training.",
            ["model"],
            registry=registry,
        )
        self.shadow_windows = Counter(
            "faultwatch_shadow_windows",
            "Windows scored by a shadow model and by the live one, by what each said.",
            ["model", "live", "candidate"],
            registry=registry,
        )
        self.shadow_failures = Counter(
            "faultwatch_shadow_failures",
            "Shadow scoring errors and shadow records the broker did not take.",
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
        self.labels = Counter(
            "faultwatch_labels",
            "Operators' labels that reached an open episode here (committed), by label.",
            ["label"],
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
            "Machines this worker scored in the last hour that a mute names now (sum over "
            "workers: the plant's).",
            registry=registry,
        )
        self.mutes = Gauge(
            "faultwatch_mutes",
            "Mutes in force (a machine id or a pattern each), from the control topic.",
            registry=registry,
        )
        self.clock_resets = Counter(
            "faultwatch_clock_resets",
            "Machines whose clock went back further than the episode rules look: their "
            "episode closed `reset` and they started afresh (one log line each).",
            registry=registry,
        )
        # Samples and tags (FAULTWATCH_INPUT_FORMAT): the assembly of windows, in readings.
        self.readings_received = Counter(
            "faultwatch_readings_received",
            "Readings (one channel at one time) in sample or tag records that could be read.",
            registry=registry,
        )
        self.readings_late = Counter(
            "faultwatch_readings_late",
            "Readings for a bucket already closed: dead-lettered (reason late).",
            registry=registry,
        )
        self.readings_future = Counter(
            "faultwatch_readings_future",
            "Readings too far ahead of their machine's latest: dead-lettered (reason future).",
            registry=registry,
        )
        self.readings_extra = Counter(
            "faultwatch_readings_extra",
            "Readings of channels the machine's model does not have: ignored.",
            registry=registry,
        )
        self.readings_filled = Counter(
            "faultwatch_readings_filled",
            "Window cells that carried a channel's last value over a gap (the fill limit).",
            registry=registry,
        )
        self.readings_windows_assembled = Counter(
            "faultwatch_readings_windows_assembled",
            "Windows built from readings (each closed bucket's), to be scored.",
            registry=registry,
        )
        self.readings_windows_skipped = Counter(
            "faultwatch_readings_windows_skipped",
            "Windows not scored: a gap longer than the fill limit.",
            registry=registry,
        )
        self.readings_assembly_restarts = Counter(
            "faultwatch_readings_assembly_restarts",
            "Machines whose assembly restarted: their model's channels, window or interval "
            "changed.",
            registry=registry,
        )
        self.readings_open_buckets = Gauge(
            "faultwatch_readings_open_buckets",
            "Buckets waiting to close (the grace), over the machines of this replica.",
            registry=registry,
        )
        self.readings_machines = Gauge(
            "faultwatch_readings_machines",
            "Machines whose readings this replica assembles (state held).",
            registry=registry,
        )
        self.control_skipped = Counter(
            "faultwatch_control_records_skipped",
            "Control topic records that are no mute, unmute or label, by reason.",
            ["reason"],
            registry=registry,
        )
        self.partitions_paused = Gauge(
            "faultwatch_partitions_paused",
            "Input partitions this worker stopped reading: a batch it cannot decompress.",
            registry=registry,
        )
        self.state_records_skipped = Counter(
            "faultwatch_state_records_skipped",
            "State topic records skipped at a restore: not JSON, missing or wrong fields, "
            "another group's or input topic's, or a state its family cannot use.",
            ["reason"],
            registry=registry,
        )
        for reason in STATE_SKIP_REASONS:
            self.state_records_skipped.labels(reason)
        for reason in REASONS:  # every reason exists from the start, so rate() sees the first
            self.dead_letters.labels(reason)
        for reason in CLOSE_REASONS:
            self.episodes_closed.labels(reason)
        for reason in CONTROL_SKIP_REASONS:
            self.control_skipped.labels(reason)
        for label in LABELS:
            self.labels.labels(label)

    def set_models(self, live: Routes | None, shadow: Routes | None = None) -> None:
        """The models in service now (None: unchanged): info, thresholds, drift series."""
        if live is not None:
            self._live = live
            versions = {served.name: served.version for served in live.models}
            for name, version in self._live_versions.items():
                if versions.get(name) != version:  # out of service, or another version now
                    _remove(self.score_drift, name)  # a new model's drift starts afresh
                    if name not in versions:
                        _remove(self.model_threshold, name)
            self._live_versions = versions
            for served in live.models:
                # Series from the start, so that rate() and sum() see the first window.
                self.windows_scored.labels(served.name)
                self.anomalies.labels(served.name)
                self.score.labels(served.name)
                self.model_threshold.labels(served.name).set(served.scorer.threshold)
        if shadow is not None:
            self._shadow = shadow
            for served in shadow.models:
                for live_says in ("normal", "anomaly"):
                    for candidate_says in ("normal", "anomaly"):
                        self.shadow_windows.labels(served.name, live_says, candidate_says)
        self.model_info.clear()
        for role, routes in (("live", self._live), ("shadow", self._shadow)):
            for served in routes.models if routes is not None else ():
                window, channels = str(served.scorer.window), str(len(served.scorer.channels))
                self.model_info.labels(served.name, served.version, window, channels, role).set(1)

    def batch_committed(
        self,
        models: Sequence[ModelBatch],
        dead_letters: Mapping[str, int],
        seconds: float,
    ) -> None:
        """Count a batch once its offsets are committed, so a retried batch counts once."""
        for batch in models:
            name = batch.served.name
            histogram = self.score.labels(name)
            for score in batch.scores.tolist():
                histogram.observe(score)
            self.windows_scored.labels(name).inc(len(batch.scores))
            self.anomalies.labels(name).inc(int(batch.anomaly.sum()))
            drift = batch.served.drift
            drift.add(batch.scores[~batch.anomaly])  # normal windows: a fault is not drift
            if self._live_versions.get(name) == batch.served.version and (
                (value := drift.value()) is not None
            ):
                self.score_drift.labels(name).set(value)
        for reason, count in dead_letters.items():
            self.dead_letters.labels(reason).inc(count)
        self.batch_duration.observe(seconds)
        self._last_commit = self._clock()

    def shadow_committed(self, counts: Mapping[tuple[str, bool, bool], int]) -> None:
        """Count a batch's shadow windows once its offsets are committed."""
        for (name, live, candidate), count in counts.items():
            self.shadow_windows.labels(name, SAYS[live], SAYS[candidate]).inc(count)

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
        for label, count in counts.labels.items():
            self.labels.labels(label).inc(count)
        self.clock_resets.inc(counts.resets)

    def readings_committed(self, counts: ReadingCounts | None) -> None:
        """Count a batch's readings once its offsets are committed."""
        if counts is None:
            return
        self.readings_received.inc(counts.received)
        self.readings_late.inc(counts.late)
        self.readings_future.inc(counts.future)
        self.readings_extra.inc(counts.extra)
        self.readings_filled.inc(counts.filled)
        self.readings_windows_assembled.inc(counts.assembled)
        self.readings_windows_skipped.inc(counts.skipped)
        self.readings_assembly_restarts.inc(counts.restarts)

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


SAYS = {False: "normal", True: "anomaly"}


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
