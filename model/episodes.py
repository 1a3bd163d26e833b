"""Episodes: one incident per machine and fault, from a stream of scored windows, in data time.

Per machine: normal -> pending -> open -> normal. The first anomalous window (score above
the threshold) starts a pending episode; it opens once the windows have stayed anomalous for
`open_seconds` and `open_windows` windows, and closes once the scores have stayed below
`clear_ratio` x threshold for `clear_seconds` and `clear_windows` windows (hysteresis: scores
between the two hold it open). Deep clear (hysteresis on depth as well as time): a stretch of
windows at or below the threshold whose geometric mean is under DEEP_RATIO (half) x threshold
closes the episode after `clear_deep_seconds` and `clear_windows` windows; a stray window
between the clear line and the threshold does not restart it. While open, an `updated`
follows at most every `update_seconds`, only when the peak rose. A machine whose partition's
clock (its newest window time) runs max(`silent_seconds`, `silent_windows` x the machine's
sampling interval) past where it stood when the machine's last window came closes `silent`;
a muted machine's episode closes `muted` and none opens. The window counts make every rule
hold at any sampling rate: 30 seconds is 30 windows of 1-second data but less than one of
5-minute data, where the count decides.

Drift and recovery (model/baseline.py): each machine's scores are divided by its baseline's
factor, which follows the machine's normal score level slowly (`adapt_seconds`), never inside
a pending or open episode. Settle rule: an open episode whose scores have stayed within a
band of x1.5 for `settle_seconds` and `clear_windows` windows has a machine that runs steadily
again, at a level of its own: the baseline takes that level as normal (within `adapt_max`),
and the episode then clears by the clear rule. `settle_seconds` is the knob between quick
recovery (short) and not learning a steady fault as normal (long; 0: never).

Time is the windows' own timestamps: the same windows in the same order give the same events,
at any replay speed. A window older than its machine's newest one (late, out of order) is
scored but changes nothing here: the episode already moved past it. A window older by more
than the tracker's horizon (the longest rule, in seconds and in windows of the model's
sampling interval, at least RESET_FLOOR) is the
machine's clock set back: its episode closes `reset` and the machine starts afresh. The worker
may move a partition's clock on without windows (`idle`: an idle partition, by processing time).

One `Tracker` holds the machines of one input partition (the worker) or one recording
(`faultwatch score --episodes`); the same code serves both, with no Kafka.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from model.baseline import MARGIN, Baseline

if TYPE_CHECKING:  # the scorer pulls in torch; the worker's episode rules do not need it
    from model.scoring import Scorer, Scores

Kind = Literal["opened", "updated", "closed"]
CloseReason = Literal["cleared", "silent", "muted", "reset", "dismissed", "new_normal"]
CLOSE_REASONS: tuple[CloseReason, ...] = (
    "cleared", "silent", "muted", "reset", "dismissed", "new_normal",
)  # fmt: skip
LabelKind = Literal["false-alarm", "fault", "new-normal"]  # an operator's word on an episode
LABELS: tuple[LabelKind, ...] = ("false-alarm", "fault", "new-normal")
RESET_FLOOR = 300.0  # seconds: a machine's clock set back by more than this (and than every
# rule's span) is a reset, not a late window
MAX_MACHINES = 100_000  # newest window times remembered per tracker; then the oldest go
# A baseline is weeks of learning: kept through a night's or a maintenance week's stop, and
# forgotten only after this long (or twice adapt_seconds) of quiet, or beyond MAX_MACHINES.
BASELINE_QUIET = 14 * 86400.0
# An operator's label (the control topic) -> the close it causes in an open episode; `fault`
# confirms the episode, which stays open and carries the label.
LABEL_CLOSES: dict[str, CloseReason] = {"false-alarm": "dismissed", "new-normal": "new_normal"}
DIGITS = 6  # significant digits of event floats: a re-scored window gives the same bytes


@dataclass(frozen=True)
class EpisodeConfig:
    """The state machine's settings (FAULTWATCH_EPISODE_*), in seconds of data time."""

    open_seconds: float = 30.0
    clear_seconds: float = 600.0
    clear_ratio: float = 0.8
    update_seconds: float = 60.0
    silent_seconds: float = 600.0  # 0: never close for silence
    # Counts of windows each rule needs as well, whatever the sampling rate (one window per
    # sample: the worker slides its windows by one).
    open_windows: int = 6
    clear_windows: int = 10
    silent_windows: int = 5  # x the machine's sampling interval
    settle_seconds: float = 7200.0  # steady this long in an open episode: re-based (0: never)
    adapt_seconds: float = 86400.0  # the baseline's time constant (0: no adaptation)
    adapt_max: float = 4.0  # the baseline divides scores by at most this
    # Deep clear: a stretch at or below the threshold whose geometric mean is under
    # DEEP_RATIO x threshold closes after this long (and clear_windows windows); 0: never.
    clear_deep_seconds: float = 150.0


SETTLE_BAND = 1.5  # scores within this ratio of each other count as steady
# Deep clear: half the threshold, the detectors' own 99th percentile of held-out normal
# windows at the default factor 2: a machine back inside its model's normal, not just under
# the alarm line.
DEEP_RATIO = 0.5


def episode_id(machine_id: str, started_at: str) -> str:
    """Same machine and first anomalous window, same id: across crashes, owners and replays."""
    return hashlib.sha256(f"{machine_id}\x00{started_at}".encode()).hexdigest()[:32]


def episode_event_id(episode: str, kind: str, source: dict[str, Any]) -> str:
    """Same episode, kind and causing record, same id: re-delivery de-duplicates."""
    where = ":".join(str(value) for value in source.values())
    return hashlib.sha256(f"{episode}:{kind}:{where}".encode()).hexdigest()[:32]


class Episode:
    """A pending or open episode of one machine; mutable, copied before each batch changes it."""

    __slots__ = (
        "machine_id", "id", "phase", "started", "started_at", "opened_at", "windows",
        "peak_score", "peak_at", "detector", "weights", "last", "last_at", "score",
        "reported_peak", "reported", "clear_since", "clear_at", "versions", "peak_ratios",
        "step", "clear_count", "band_since", "band_low", "band_high", "band_count",
        "deep_since", "deep_at", "deep_count", "deep_sum", "heard", "label", "held_since",
        "held_count",
    )  # fmt: skip

    def __init__(self, machine_id: str, time: float, timestamp: str) -> None:
        self.machine_id = machine_id
        self.id = episode_id(machine_id, timestamp)
        self.phase = "pending"
        self.started, self.started_at = time, timestamp
        self.opened_at: str | None = None
        self.windows = 0
        self.peak_score, self.peak_at, self.detector = -math.inf, timestamp, ""
        self.weights: dict[str, float] = {}  # channel -> sum of score x share over its windows
        self.last, self.last_at, self.score = time, timestamp, 0.0
        self.reported_peak, self.reported = -math.inf, time  # at the last opened/updated
        self.clear_since: float | None = None
        self.clear_at: str | None = None
        self.versions: list[str] = []  # the models that scored its windows, oldest first
        self.peak_ratios: dict[str, float] = {}  # detector -> its ratio at the peak
        self.step: float | None = None  # the machine's sampling interval, when known
        self.clear_count = 0  # windows since clear_since
        self.band_since: float | None = None  # the settle rule's steady stretch
        self.band_low = self.band_high = 0.0
        self.band_count = 0
        self.deep_since: float | None = None  # the deep clear's stretch of windows <= threshold
        self.deep_at: str | None = None
        self.deep_count = 0
        self.deep_sum = 0.0  # sum of log(score / threshold) over the deep stretch
        self.heard = time  # the partition's clock when its machine's last window came
        self.label: str | None = None  # an operator's: false-alarm, fault or new-normal
        self.held_since: float | None = None  # a labelled close's hold: its start (data time)
        self.held_count = 0  # windows of the machine since the hold began

    def copy(self) -> Episode:
        twin = Episode.__new__(Episode)
        for name in Episode.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.weights = dict(self.weights)
        twin.versions = list(self.versions)
        return twin

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the state topic."""
        return {name: getattr(self, name) for name in Episode.__slots__} | {
            "weights": dict(self.weights),
            "versions": list(self.versions),
            "peak_ratios": dict(self.peak_ratios),
            "peak_score": _finite(self.peak_score),
            "reported_peak": _finite(self.reported_peak),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Episode:
        episode = cls.__new__(cls)
        for name in Episode.__slots__:
            if name not in LATER_FIELDS:
                setattr(episode, name, data[name])
        # Saved before a model could change under an open episode: none recorded.
        episode.versions = list(data.get("versions", []))
        episode.peak_ratios = dict(data.get("peak_ratios", {}))
        for name, value in LATER_DEFAULTS.items():
            setattr(episode, name, data.get(name, value))
        episode.heard = data.get("heard", episode.last)
        episode.peak_score = _infinite(data["peak_score"])
        episode.reported_peak = _infinite(data["reported_peak"])
        episode.weights = dict(data["weights"])
        return episode

    def add(
        self, timestamp: str, score: float, shares: Shares, detector: str, ratios: Ratios | None
    ) -> None:
        """One more anomalous window."""
        self.windows += 1
        if score > self.peak_score:
            self.peak_score, self.peak_at, self.detector = score, timestamp, detector
            self.peak_ratios = ratios() if ratios is not None else {}
        weights = self.weights
        for channel, share in shares():
            weights[channel] = weights.get(channel, 0.0) + score * share

    def top_channels(self, n: int) -> list[dict[str, Any]]:
        """The channels that carried the most score over the whole episode."""
        total = sum(self.weights.values())
        top = sorted(self.weights.items(), key=lambda item: (-item[1], item[0]))[:n]
        return [{"channel": c, "share": round(w / total, 4) if total else 0.0} for c, w in top]


Shares = Callable[[], Sequence[tuple[str, float]]]  # a window's (channel, share), computed lazily
Ratios = Callable[[], dict[str, float]]  # a window's ratio per detector, computed lazily
# Absent from state saved by earlier versions: their defaults.
LATER_DEFAULTS: dict[str, Any] = {
    "step": None,
    "clear_count": 0,
    "band_since": None,
    "band_low": 0.0,
    "band_high": 0.0,
    "band_count": 0,
    "deep_since": None,
    "deep_at": None,
    "deep_count": 0,
    "deep_sum": 0.0,
    "label": None,
    "held_since": None,  # saved without it, a hold starts again at the machine's next window
    "held_count": 0,
}
# `heard` too: saved without it, an episode was last heard at its last window
LATER_FIELDS = ("versions", "peak_ratios", "heard", *LATER_DEFAULTS)


@dataclass(frozen=True, slots=True)
class Cause:
    """The window at hand when an event is made: its time, its threshold and where it came from."""

    time: float
    timestamp: str
    threshold: float
    source: dict[str, Any]


class Tracker:
    """The episodes of the machines of one partition (or one recording)."""

    def __init__(self, config: EpisodeConfig, top_channels: int = 3) -> None:
        self.config = config
        self.top_n = top_channels
        self.episodes: dict[str, Episode] = {}  # pending and open, by machine
        self.baselines: dict[str, Baseline] = {}  # every machine's adapted normal
        self.seen: dict[str, float] = {}  # every machine's newest window time
        self.clock = -math.inf  # the newest window time of any machine
        self.late = 0  # windows older than their machine's newest, since the last take_late
        self.resets: list[tuple[str, float, float]] = []  # (machine, newest, then), since taken
        # A machine's clock set back further than every rule looks is a reset; machines quiet
        # that long are forgotten (their next window starts afresh, as after a reset).
        self.reset_seconds = max(
            RESET_FLOOR,
            config.open_seconds,
            config.clear_seconds,
            config.update_seconds,
            config.silent_seconds,
        )
        # A labelled close holds its machine this long at most (and clear_windows windows):
        # the settle rule's time, in which a steady machine would have been re-based anyway.
        self.hold_seconds = max(config.settle_seconds, config.clear_seconds)
        self.max_machines = MAX_MACHINES
        self._next_scan = math.inf
        self._touched: set[str] = set()  # machines whose episode the batch may have changed
        self._observed: set[str] = set()  # machines whose newest window time the batch moved
        self._adapted: set[str] = set()  # machines whose baseline the batch changed
        self._due: set[str] = set()  # ... and moved far enough to be written to the changelog

    # --- batches: what changed, and loading it back (the undo is the worker's state store)

    def begin(self) -> None:
        """Start a batch: `changed` reports what follows."""
        self._touched, self._observed = set(), set()
        self._adapted, self._due = set(), set()

    def changed(self) -> tuple[set[str], set[str]]:
        """(machines whose episode the batch may have changed, machines it saw a window of)."""
        return self._touched, self._observed

    def adapted(self) -> tuple[set[str], set[str]]:
        """(machines whose baseline the batch changed, those of them to write to the
        changelog: moved 5 % since last written, or re-based)."""
        return self._adapted, self._due

    def written(self, machine: str) -> None:
        """The machine's baseline as it is now is in the changelog."""
        baseline = self.baselines.get(machine)
        if baseline is not None:
            baseline.saved_level = baseline.level

    def load_baseline(self, machine: str, data: dict[str, Any] | None) -> None:
        """Put one machine's baseline back as it was (a batch undone, or a restore)."""
        if data is None:
            self.baselines.pop(machine, None)
        else:
            self.baselines[machine] = Baseline.from_dict(data, self.config.adapt_max)

    def load(self, machine: str, episode: Episode | None, seen: float | None) -> None:
        """Put one machine back as it was (a batch undone): its episode and newest window time."""
        if episode is None:
            self.episodes.pop(machine, None)
        else:
            self.episodes[machine] = episode
        if seen is None:
            self.seen.pop(machine, None)
        else:
            self.seen[machine] = seen
        self._next_scan = -math.inf  # rescan at the next window

    def restore(
        self,
        episodes: Sequence[Episode],
        clock: float,
        baselines: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Start from saved episodes, baselines and the partition's clock (the state topic)."""
        self.episodes = {e.machine_id: e for e in episodes}
        self.seen = {e.machine_id: e.last for e in episodes}
        cap = self.config.adapt_max
        self.baselines = {m: Baseline.from_dict(b, cap) for m, b in (baselines or {}).items()}
        self.clock = clock
        self._next_scan = -math.inf
        self.begin()

    # --- windows

    def observe(
        self,
        machine: str,
        time: float,
        timestamp: str,
        score: float,
        threshold: float,
        shares: Shares,
        detector: str,
        source: dict[str, Any],
        muted: bool = False,
        version: str = "",
        ratios: Ratios | None = None,
        interval: float | None = None,
        typical: float | None = None,
    ) -> list[dict[str, Any]]:
        """One scored window, in its partition's order; returns the events it causes.

        `version`: the model that scored it (an episode lives on across a model change and
        lists every version that scored it); `ratios`: its detectors' ratios, kept at the peak;
        `interval`: the model's sampling interval (None: the machine's last step); `typical`:
        the model's typical normal score (None: no baseline adaptation for this window).
        """
        seen = self.seen.get(machine)
        events: list[dict[str, Any]] = []
        if seen is not None and time < seen:
            if seen - time <= self._horizon(interval):
                self.late += 1  # out of order: the machine's episode has moved past it
                return []
            events += self._reset(machine, seen, Cause(time, timestamp, threshold, source))
        elif seen is None and len(self.seen) >= self.max_machines:
            self._prune(self.max_machines // 2)
        self._observed.add(machine)
        self.seen[machine] = time
        if time > self.clock:
            events += self._advance(time, Cause(time, timestamp, threshold, source))
        config = self.config
        raw, baseline, step = score, None, 0.0
        if typical is not None and config.adapt_seconds > 0:
            baseline = self._baseline(machine, time, typical)
            # the recent level's time constant, and clear_windows windows at least: on hourly
            # data 30 minutes would be the last window alone (a re-base on one sample)
            recent = max(
                max(config.settle_seconds, config.clear_seconds) / 4,
                config.clear_windows * (interval or 0.0),
            )
            step = baseline.watch(time, raw, typical, max(recent, 1e-9))
            score = raw / baseline.factor  # what the rules compare with the threshold
        episode = self.episodes.get(machine)
        if episode is not None and episode.phase == "labelled" and self._released(episode, time):
            self._touch(machine)  # the hold is over: the usual rules again, from this window
            del self.episodes[machine]
            episode = None
        if episode is None:
            if score <= threshold or muted:
                # the common case: a normal window of a normal machine, its baseline learns
                if baseline is not None and not muted:
                    if baseline.learn(step, raw, config.adapt_seconds, config.adapt_max):
                        self._due.add(machine)
                return events
            self._touch(machine)
            episode = self.episodes[machine] = Episode(machine, time, timestamp)
        else:
            self._touch(machine)
        if interval is not None and interval > 0:
            episode.step = interval
        elif seen is not None and time > seen:
            episode.step = time - seen
        episode.heard = self.clock
        if episode.windows == 0:
            self._schedule(episode)
        episode.last, episode.last_at, episode.score = time, timestamp, raw
        if version and version not in episode.versions:
            episode.versions.append(version)
        cause = Cause(time, timestamp, threshold, source)
        if muted:
            return events + self._end(episode, "muted", time, timestamp, cause)
        if baseline is not None and episode.phase == "open" and config.settle_seconds > 0:
            score = self._settle(episode, baseline, time, raw, threshold)
        if score > threshold:  # events report the model's own scores: `raw`
            episode.add(timestamp, raw, shares, detector, ratios)
            episode.clear_since = episode.clear_at = None
            episode.clear_count = episode.deep_count = 0
            episode.deep_since = None
            if (
                episode.phase == "pending"
                and time - episode.started >= config.open_seconds
                and episode.windows >= config.open_windows
            ):
                episode.phase, episode.opened_at = "open", timestamp
                episode.reported_peak, episode.reported = episode.peak_score, time
                return events + [self._event("opened", episode, cause)]
        elif episode.phase == "pending":  # not anomalous for long enough: no episode
            del self.episodes[machine]
            return events
        elif self._deep(episode, time, timestamp, score, threshold):
            since = time if episode.deep_since is None else episode.deep_since
            return events + self._end(
                episode, "cleared", since, episode.deep_at or timestamp, cause
            )
        elif score < config.clear_ratio * threshold:
            if episode.clear_since is None:
                episode.clear_since, episode.clear_at, episode.clear_count = time, timestamp, 0
            episode.clear_count += 1
            if (
                time - episode.clear_since >= config.clear_seconds
                and episode.clear_count >= config.clear_windows
            ):
                since, at = episode.clear_since, episode.clear_at or timestamp
                return events + self._end(episode, "cleared", since, at, cause)
        else:  # between clear_ratio x threshold and the threshold: not clear yet
            episode.clear_since = episode.clear_at = None
            episode.clear_count = 0
        if (
            episode.phase == "open"
            and episode.peak_score > episode.reported_peak
            and time - episode.reported >= config.update_seconds
        ):
            episode.reported_peak, episode.reported = episode.peak_score, time
            events.append(self._event("updated", episode, cause))
        return events

    def rebase(self, machine: str) -> bool:
        """Take the machine's recent score level as its normal at once (an operator's
        `new-normal`); False when it has no baseline (adaptation off, or never scored)."""
        baseline = self.baselines.get(machine)
        if baseline is None:
            return False
        baseline.rebase(self.config.adapt_max)
        self._adapted.add(machine)
        self._due.add(machine)
        return True

    def close_muted(self, is_muted: Callable[[str], bool], cause: Cause) -> list[dict[str, Any]]:
        """Close the episodes of machines muted since their last window; `cause` is at hand.

        Each ends at its own machine's last window: another machine's time says nothing of it
        (and may be older than the episode)."""
        events: list[dict[str, Any]] = []
        for machine in sorted(m for m in self.episodes if is_muted(m)):
            self._touch(machine)
            episode = self.episodes[machine]
            events += self._end(episode, "muted", episode.last, episode.last_at, cause)
        return events

    def apply_labels(
        self, label_of: Callable[[str], str | None], cause: Cause
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Operators' labels on the open episodes: `false-alarm` closes one `dismissed`,
        `new-normal` closes it `new_normal` and re-bases the machine's normal (`rebase`); either
        way the machine opens no new episode before it has cleared, or for `hold_seconds` and
        clear_windows windows at most (`_released`). `fault` confirms it (it
        stays open, its events carry the label). Returns the events and the
        (machine, label) applied. Each episode ends at its own machine's last window."""
        events: list[dict[str, Any]] = []
        applied: list[tuple[str, str]] = []
        for machine in sorted(self.episodes):
            episode = self.episodes[machine]
            label = label_of(episode.id) if episode.phase == "open" else None
            if label is None or label == episode.label:
                continue
            self._touch(machine)
            episode.label = label
            applied.append((machine, label))
            reason = LABEL_CLOSES.get(label)
            if reason is not None:
                events += self._end(episode, reason, episode.last, episode.last_at, cause)
                # Held, unpublished, until the machine clears by the usual rule: a condition
                # the operator just dismissed must not open the next episode a window later;
                # but not for ever (`_released`): a fault developing later must still open.
                episode.phase = "labelled"
                episode.held_since, episode.held_count = episode.last, 0
                self.episodes[machine] = episode
            if label == "new-normal":
                self.rebase(machine)  # the drift adaptation's re-base, at once
        return events, applied

    def due(self, to: float) -> bool:
        """Whether moving the clock on to `to` may close an episode for silence."""
        return to > self.clock and to >= self._next_scan

    def idle(self, to: float, cause: Cause) -> list[dict[str, Any]]:
        """The partition's clock moves on to `to` without a window (the worker's idle rule):
        the episodes of machines silent since close. Nothing changes unless one is due."""
        if not self.due(to):
            return []
        return self._advance(to, cause)

    def open_count(self) -> int:
        return sum(1 for e in self.episodes.values() if e.phase == "open")

    def take_resets(self) -> list[tuple[str, float, float]]:
        """(machine, its newest window time, the older one that came) of each reset since the
        last call."""
        resets, self.resets = self.resets, []
        return resets

    def take_late(self) -> int:
        """Late windows since the last call."""
        late, self.late = self.late, 0
        return late

    # --- the rest

    def _touch(self, machine: str) -> None:
        """The batch changes the machine's episode (the store saves it, and undoes it)."""
        self._touched.add(machine)

    def _baseline(self, machine: str, time: float, typical: float) -> Baseline:
        """The machine's baseline (the batch changes it: the store keeps it, and undoes it)."""
        self._adapted.add(machine)
        baseline = self.baselines.get(machine)
        if baseline is None:
            baseline = self.baselines[machine] = Baseline(typical, time)
        return baseline

    def _released(self, episode: Episode, time: float) -> bool:
        """A held (labelled) machine's window: True once the hold has lasted `hold_seconds`
        and clear_windows windows, whatever the scores (the hold's bound: held, its baseline
        does not adapt and the settle rule does not apply, so a machine that stays above the
        threshold would otherwise never open an episode again)."""
        if episode.held_since is None:  # state saved before the bound: the hold starts now
            episode.held_since, episode.held_count = time, 0
        episode.held_count += 1
        return (
            time - episode.held_since >= self.hold_seconds
            and episode.held_count >= self.config.clear_windows
        )

    def _settle(
        self, episode: Episode, baseline: Baseline, time: float, raw: float, threshold: float
    ) -> float:
        """The settle rule on an open episode's window; returns its adapted score, re-based
        when the machine has run steadily for settle_seconds and the cap allows its level."""
        score = raw / baseline.factor
        low, high = min(episode.band_low, raw), max(episode.band_high, raw)
        if episode.band_since is None or high > SETTLE_BAND * low:
            episode.band_since, episode.band_low, episode.band_high = time, raw, raw
            episode.band_count = 1
            return score
        episode.band_low, episode.band_high = low, high
        episode.band_count += 1
        config = self.config
        if (
            time - episode.band_since < config.settle_seconds
            or episode.band_count < config.clear_windows
        ):
            return score
        level = 0.5 * (math.log(max(low, 1e-6)) + math.log(max(high, 1e-6)))
        factor = min(config.adapt_max, max(1.0, math.exp(level) / (MARGIN * baseline.typical)))
        if high / factor >= config.clear_ratio * threshold:
            return score  # too far from normal to be learned: it stays open
        baseline.recent = level
        baseline.rebase(config.adapt_max)
        self._due.add(episode.machine_id)
        episode.band_since = None
        return raw / baseline.factor

    def _deep(
        self, episode: Episode, time: float, timestamp: str, score: float, threshold: float
    ) -> bool:
        """The deep clear on a window at or below the threshold of an open episode: True once
        the stretch of such windows has lasted clear_deep_seconds and clear_windows windows
        with its geometric mean below DEEP_RATIO x threshold. Hysteresis on depth: a machine
        back well inside its normal closes in a quarter of the clear rule's time, and a
        stray window between clear_ratio x threshold and the threshold (which restarts the
        clear rule) does not restart it; one above the threshold does."""
        seconds = self.config.clear_deep_seconds
        if seconds <= 0:
            return False
        if episode.deep_since is None:
            episode.deep_since, episode.deep_count, episode.deep_sum = time, 0, 0.0
            episode.deep_at = timestamp
        episode.deep_count += 1
        episode.deep_sum += math.log(max(score, 1e-9) / threshold) if threshold > 0 else 0.0
        return (
            time - episode.deep_since >= seconds
            and episode.deep_count >= self.config.clear_windows
            and episode.deep_sum <= episode.deep_count * math.log(DEEP_RATIO)
        )

    def _silence(self, episode: Episode) -> float:
        """How long the machine may send nothing: seconds, and windows of its interval."""
        silent = self.config.silent_seconds
        if silent <= 0:
            return math.inf
        if episode.step is not None:
            return max(silent, self.config.silent_windows * episode.step)
        return silent

    def _schedule(self, episode: Episode) -> None:
        self._next_scan = min(self._next_scan, episode.heard + self._silence(episode))

    def _close_silent(self, cause: Cause) -> list[dict[str, Any]]:
        """Episodes of machines that sent nothing for their silence of the partition's time."""
        if self.config.silent_seconds <= 0:
            self._next_scan = math.inf
            return []
        events: list[dict[str, Any]] = []
        now = self.clock
        quiet = sorted(m for m, e in self.episodes.items() if now - e.heard >= self._silence(e))
        for machine in quiet:
            self._touch(machine)
            episode = self.episodes[machine]
            events += self._end(episode, "silent", episode.last, episode.last_at, cause)
        ends = [e.heard + self._silence(e) for e in self.episodes.values()]
        self._next_scan = min(ends) if ends else math.inf
        return events

    def _advance(self, to: float, cause: Cause) -> list[dict[str, Any]]:
        """The partition's clock moves on: silent machines close, quiet ones are forgotten (each
        time it enters a new span of `reset_seconds`: a function of the clock alone, so a
        redone batch prunes where its first attempt did)."""
        crossed = to // self.reset_seconds > self.clock // self.reset_seconds
        self.clock = to
        events = self._close_silent(cause) if to >= self._next_scan else []
        if crossed:
            self._prune(self.max_machines)
        return events

    def _horizon(self, interval: float | None) -> float:
        """How far back a machine's window may lie and still be late, not a reset: every rule's
        span, in seconds and in windows of the model's sampling interval."""
        if not interval or interval <= 0:
            return self.reset_seconds
        config = self.config
        windows = max(config.open_windows, config.clear_windows, config.silent_windows)
        return max(self.reset_seconds, windows * interval)

    def _reset(self, machine: str, newest: float, cause: Cause) -> list[dict[str, Any]]:
        """The machine's clock went back: its episode ends at its last window; it starts afresh."""
        self.resets.append((machine, newest, cause.time))
        self._observed.add(machine)
        del self.seen[machine]
        episode = self.episodes.get(machine)
        if episode is None:
            return []
        self._touch(machine)
        return self._end(episode, "reset", episode.last, episode.last_at, cause)

    def _prune(self, keep: int) -> None:
        """Forget the newest window times of machines quiet for `reset_seconds` of the
        partition's time, then the oldest beyond `keep`; never a machine with an episode."""
        horizon = self.clock - self.reset_seconds
        episodes, seen = self.episodes, self.seen
        quiet = [m for m, t in seen.items() if t < horizon and m not in episodes]
        if len(seen) - len(quiet) > keep:
            rest = sorted((t, m) for m, t in seen.items() if t >= horizon and m not in episodes)
            quiet += [m for _, m in rest[: len(seen) - len(quiet) - keep]]
        for machine in quiet:
            del seen[machine]
        self._observed.update(quiet)
        self._forget_baselines(keep)

    def _forget_baselines(self, keep: int) -> None:
        """Forget the baselines of machines quiet for BASELINE_QUIET (or twice adapt_seconds)
        of the partition's time, then the oldest beyond `keep`; never a machine with an
        episode. The store deletes them with the batch (`adapted`)."""
        horizon = self.clock - max(BASELINE_QUIET, 2 * self.config.adapt_seconds)
        baselines, episodes = self.baselines, self.episodes
        old = [m for m, b in baselines.items() if b.at < horizon and m not in episodes]
        if len(baselines) - len(old) > keep:
            rest = sorted(
                (b.at, m) for m, b in baselines.items() if b.at >= horizon and m not in episodes
            )
            old += [m for _, m in rest[: len(baselines) - len(old) - keep]]
        for machine in old:
            del baselines[machine]
        self._adapted.update(old)
        self._due.update(old)

    def _end(
        self, episode: Episode, reason: CloseReason, ended: float, ended_at: str, cause: Cause
    ) -> list[dict[str, Any]]:
        """Forget the episode; a `closed` event if it had opened (a pending one ends quietly)."""
        del self.episodes[episode.machine_id]
        if episode.phase != "open":
            return []
        event = self._event("closed", episode, cause)
        event["ended_at"] = ended_at
        event["duration_seconds"] = _round(ended - episode.started)
        event["close_reason"] = reason
        return [event]

    def _event(self, kind: Kind, episode: Episode, cause: Cause) -> dict[str, Any]:
        return {
            "kind": kind,
            "event_id": episode_event_id(episode.id, kind, cause.source),
            "episode_id": episode.id,
            "machine_id": episode.machine_id,
            "started_at": episode.started_at,
            "opened_at": episode.opened_at,
            "timestamp": cause.timestamp,
            "ended_at": None,
            "duration_seconds": _round(cause.time - episode.started),
            "windows": episode.windows,
            "peak_score": _round(episode.peak_score),
            "peak_at": episode.peak_at,
            "score": _round(episode.score),
            "threshold": cause.threshold,
            "top_channels": episode.top_channels(self.top_n),
            "detector": episode.detector,
            "detectors": _rounded(episode.peak_ratios),
            "model_versions": list(episode.versions),
            "label": episode.label,
            "close_reason": None,
            "source": cause.source,
        }


def leading_detectors(scores: Any) -> list[str] | None:
    """Each window's leading detector, where the scores name them (Scores.detectors, .leader)."""
    names, leader = getattr(scores, "detectors", None), getattr(scores, "leader", None)
    if not names or leader is None:
        return None
    return [names[k] for k in np.asarray(leader).tolist()]


def parse_seconds(timestamp: str) -> float:
    """An RFC 3339 timestamp (as the decoder writes them) in epoch seconds."""
    return datetime.fromisoformat(timestamp).timestamp()


def shares_of(channels: Sequence[str], row: np.ndarray) -> Shares:
    """A window's channel shares (a row of Scores.channel_share), read only when needed."""
    return lambda: [(c, float(s)) for c, s in zip(channels, row, strict=True) if s > 0]


def _round(value: float) -> float:
    return float(f"{value:.{DIGITS}g}")


def _rounded(ratios: dict[str, float]) -> dict[str, float]:
    return {name: _round(value) for name, value in ratios.items()}


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def _infinite(value: float | None) -> float:
    return -math.inf if value is None else value


@dataclass
class EpisodeRow:
    """One episode of a recording, as `faultwatch score --episodes` writes it."""

    episode_id: str
    machine_id: str
    opened_row: int
    closed_row: int | None  # None: still open at the end of the recording
    started_at: str
    opened_at: str
    ended_at: str | None
    duration_seconds: float
    windows: int
    peak_score: float
    close_reason: str | None
    detector: str
    top_channels: list[dict[str, Any]]


def recording_episodes(
    machine_id: str,
    end_rows: Sequence[int],
    timestamps: Sequence[str],
    scores: np.ndarray,
    threshold: float,
    channel_share: np.ndarray,
    channels: Sequence[str],
    config: EpisodeConfig,
    detectors: Sequence[str] | None = None,
    top_channels: int = 3,
    interval: float | None = None,
    typical: float | None = None,
) -> list[EpisodeRow]:
    """The episodes the worker would publish for one machine's windows, in order.

    `timestamps` are the windows' end times in RFC 3339 (as the worker's decoder writes them);
    `scores` (B,) and `channel_share` (B, C) as `Scorer.score` gives them; `interval` and
    `typical` as the worker passes them (Scorer.interval, Scorer.typical).
    """
    tracker = Tracker(config, top_channels)
    rows: dict[str, EpisodeRow] = {}
    for j, (row, timestamp) in enumerate(zip(end_rows, timestamps, strict=True)):
        detector = detectors[j] if detectors is not None else "autoencoder"
        events = tracker.observe(
            machine_id,
            parse_seconds(timestamp),
            timestamp,
            float(scores[j]),
            threshold,
            shares_of(channels, channel_share[j]),
            detector,
            {"row": int(row)},
            interval=interval,
            typical=typical,
        )
        for event in events:
            if event["kind"] == "opened":
                rows[event["episode_id"]] = _row(event, int(row))
            elif event["kind"] == "closed":
                done = rows[event["episode_id"]]
                done.closed_row = int(row)
                for name in ("ended_at", "duration_seconds", "windows", "peak_score"):
                    setattr(done, name, event[name])
                done.close_reason, done.detector = event["close_reason"], event["detector"]
                done.top_channels = event["top_channels"]
    for episode in tracker.episodes.values():  # open at the end: as far as it went
        if episode.id in rows:
            left = rows[episode.id]
            left.windows, left.peak_score = episode.windows, _round(episode.peak_score)
            left.duration_seconds = _round(episode.last - episode.started)
            left.detector, left.top_channels = episode.detector, episode.top_channels(top_channels)
    return list(rows.values())


def scored_episodes(
    scorer: Scorer,
    machine_id: str,
    end_rows: Sequence[int],
    timestamps: Sequence[str],
    scores: Scores,
    config: EpisodeConfig,
    leaders: bool = False,
) -> list[EpisodeRow]:
    """The episodes of one machine's windows as `scorer` scored them (`end_rows`, `timestamps`
    and `scores` one per window), with the scorer's threshold, channels, interval and typical
    score. Windows whose score is not a number are left out, as the worker dead-letters them;
    `leaders` names each episode's leading detector (as `score --episodes` does) rather than
    the default one."""
    finite = np.flatnonzero(np.isfinite(scores.score))
    kept = scores.subset(finite)
    return recording_episodes(
        machine_id,
        [end_rows[j] for j in finite],
        [timestamps[j] for j in finite],
        kept.score,
        scorer.threshold,
        kept.channel_share,
        scorer.channels,
        config,
        leading_detectors(kept) if leaders else None,
        interval=scorer.interval,
        typical=scorer.typical,
    )


def _row(opened: dict[str, Any], row: int) -> EpisodeRow:
    return EpisodeRow(
        opened["episode_id"],
        opened["machine_id"],
        row,
        None,
        opened["started_at"],
        opened["opened_at"],
        None,
        opened["duration_seconds"],
        opened["windows"],
        opened["peak_score"],
        None,
        opened["detector"],
        opened["top_channels"],
    )
