"""The episode family: each partition's `Tracker`, kept in its store (worker/state/store.py).

In the store: `episode` (machine -> Episode.to_dict(), pending and open ones), `clock` (key "":
the partition's clock, its newest window time), `seen` (in memory only: machine -> its newest
window time; a redone batch must find it as it was, a restore rebuilds it from the episodes)
and `mutes` (in memory only, key "version": the mute table version the partition's episodes
have seen, the pipeline's; undone with the batch whose mute closes it caused), `baseline`
(machine -> Baseline.to_dict(), written when it moved 5 % or was re-based: it survives a
restart) and `baseline-live` (in memory only: the exact baselines, for a redone batch). The
tracker keeps
live Episode objects for speed and says which machines a batch touched; `save` puts those into
the store, `rolled_back` loads them back from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from model.baseline import Baseline
from model.episodes import Episode, EpisodeConfig, Tracker
from worker.clocks import WallClock
from worker.state.changelog import CLOCK, EPISODE, Reader
from worker.state.partitions import Family, State
from worker.state.store import Store

SEEN = "seen"
BASELINE, BASELINE_LIVE = "baseline", "baseline-live"  # model/baseline.py
MUTES = "mutes"  # key "version": the mute table version the partition's episodes have seen


class EpisodeFamily:
    """The trackers of the partitions in hand."""

    names = (EPISODE, CLOCK, SEEN, MUTES, BASELINE, BASELINE_LIVE)
    memory_only = (SEEN, MUTES, BASELINE_LIVE)

    def __init__(
        self, config: EpisodeConfig, top_channels: int = 3, clock: WallClock | None = None
    ) -> None:
        self.config = config
        self.top_channels = top_channels
        self.clock = clock or WallClock()
        self.trackers: dict[int, Tracker] = {}

    def restored(self, partition: int, store: Store) -> int:
        episodes, unusable = [], 0
        limit = self.clock.limit()  # no saved time from the future holds the clock
        for machine, data in store.items(EPISODE):
            try:
                episode = Episode.from_dict(data)
                _check(episode, machine)
            except (KeyError, TypeError, ValueError, AttributeError):
                unusable += 1
                store.put(EPISODE, machine, None)
                continue
            episode.heard = min(episode.heard, limit)  # saved by a release without the bound
            episodes.append(episode)
            store.load(SEEN, machine, episode.last)
        baselines = {}
        for machine, data in store.items(BASELINE):
            try:
                Baseline.from_dict(data, self.config.adapt_max)
            except (KeyError, TypeError, ValueError, AttributeError):
                unusable += 1
                store.put(BASELINE, machine, None)
                continue
            baselines[machine] = data
            store.load(BASELINE_LIVE, machine, data)
        clock = store.get(CLOCK, "")
        if not isinstance(clock, int | float) or isinstance(clock, bool):
            if clock is not None:
                unusable += 1
            clock = -math.inf
        store.begin()  # what was unusable is gone, not a change of the next batch
        tracker = Tracker(self.config, self.top_channels)
        tracker.restore(episodes, min(float(clock), limit), baselines)
        self.trackers[partition] = tracker
        return unusable

    def save(self, partition: int, store: Store) -> None:
        tracker = self.trackers[partition]
        touched, observed = tracker.changed()
        episodes, seen = tracker.episodes, tracker.seen
        store.update(EPISODE, ((m, _dict(episodes.get(m))) for m in touched))
        store.update(SEEN, ((m, seen.get(m)) for m in observed))
        adapted, due = tracker.adapted()
        for machine in adapted:
            baseline = tracker.baselines.get(machine)
            value = None if baseline is None else baseline.to_dict()
            store.put(BASELINE_LIVE, machine, value)
            if machine in due:
                store.put(BASELINE, machine, value)
                tracker.written(machine)
        store.put(CLOCK, "", None if math.isinf(tracker.clock) else tracker.clock)
        tracker.begin()

    def rolled_back(self, partition: int, store: Store, undone: list[tuple[str, str]]) -> None:
        tracker = self.trackers[partition]
        touched, observed = tracker.changed()  # not saved yet (the batch failed before finish)
        machines = touched | observed | {key for name, key in undone if name in (EPISODE, SEEN)}
        for machine in machines:
            data = store.get(EPISODE, machine)
            episode = None if data is None else Episode.from_dict(data)
            tracker.load(machine, episode, store.get(SEEN, machine))
        adapted, _ = tracker.adapted()
        undone_baselines = {key for name, key in undone if name in (BASELINE, BASELINE_LIVE)}
        for machine in adapted | undone_baselines:
            tracker.load_baseline(machine, store.get(BASELINE_LIVE, machine))
        tracker.clock = store.get(CLOCK, "", -math.inf)
        tracker.begin()

    def forget(self, partition: int) -> None:
        self.trackers.pop(partition, None)

    def open_count(self) -> int:
        return sum(tracker.open_count() for tracker in self.trackers.values())


class EpisodeState(State):
    """The state of the partitions in hand, with the episode family first among its families."""

    def __init__(
        self,
        config: EpisodeConfig,
        input_topic: str,
        group: str,
        reader: Reader,
        top_channels: int = 3,
        families: tuple[Family, ...] = (),
        on_skip: Callable[[str, int], None] | None = None,
        clock: WallClock | None = None,
    ) -> None:
        self.clock = clock or WallClock()
        self.episodes = EpisodeFamily(config, top_channels, self.clock)
        super().__init__(input_topic, group, reader, (self.episodes, *families), on_skip)
        self.config = config
        self.open_now = 0  # open episodes after the last batch: read by the metrics thread
        # partition -> (its clock, the wall time) after its last batch: the idle rule's origin
        self._marks: dict[int, tuple[float, float]] = {}

    def trackers(self, starts: dict[int, int]) -> dict[int, Tracker]:
        """Each partition's tracker as of the offset where its next batch begins."""
        self.begin(starts)
        return {partition: self.episodes.trackers[partition] for partition in starts}

    def tracker(self, partition: int, first_offset: int) -> Tracker:
        """One partition's tracker as of `first_offset`."""
        return self.trackers({partition: first_offset})[partition]

    def finish(self, partition: int, through: int) -> list[tuple[bytes, bytes | None]]:
        records = super().finish(partition, through)
        self._marks[partition] = (self.episodes.trackers[partition].clock, self.clock.now())
        self.open_now = self.open_count()
        return records

    def forget(self, partitions) -> None:  # noqa: ANN001 (State's signature)
        partitions = list(partitions)
        super().forget(partitions)
        for partition in partitions:
            self._marks.pop(partition, None)
        self.open_now = self.open_count()

    # --- idle partitions (worker/clocks.py): the clock moved on by processing time

    def idle_clocks(self) -> dict[int, float]:
        """Partitions whose clock, moved on by the wall time since their last batch, would close
        an episode for silence: partition -> that clock."""
        now, limit, due = self.clock.now(), self.clock.limit(), {}
        for partition in self.partitions:
            tracker = self.episodes.trackers[partition]
            mark = self._marks.get(partition)
            if mark is None:  # restored, no batch yet: silence counts from now
                self._marks[partition] = (tracker.clock, now)
                continue
            clock, since = mark
            to = min(clock + max(0.0, now - since), limit)
            if not math.isinf(clock) and tracker.due(to):
                due[partition] = to
        return due

    def begin_idle(self, partition: int) -> Tracker:
        """An idle step of a partition: a batch without input, at its last batch's offsets."""
        owned = self.partitions[partition]
        owned.store.begin()
        owned.begun = False  # a batch at `start` again is not a redo of this step
        return self.episodes.trackers[partition]

    def finish_idle(self, partition: int) -> list[tuple[bytes, bytes | None]]:
        """The idle step is done: its state records (the last batch's `through`)."""
        records = State.finish(self, partition, self.partitions[partition].through)
        self.open_now = self.open_count()
        return records

    def undo_idle(self, partitions: list[int]) -> None:
        """The idle step's outputs were not published: it never happened."""
        for partition in partitions:
            owned = self.partitions.get(partition)
            if owned is not None:
                self._rollback(partition, owned)
        self.open_now = self.open_count()

    def open_count(self) -> int:
        return self.episodes.open_count()


def _dict(episode: Episode | None) -> dict | None:
    return None if episode is None else episode.to_dict()


def _check(episode: Episode, machine: str) -> None:
    """ValueError unless the fields the tracker computes with have their types."""
    if episode.machine_id != machine or episode.phase not in ("pending", "open", "labelled"):
        raise ValueError("not this machine's episode")
    for number in (episode.started, episode.last, episode.reported, episode.score, episode.heard):
        if type(number) not in (int, float):  # bool is an int, and no number here
            raise ValueError("a time or score is not a number")
    if not isinstance(episode.windows, int) or not isinstance(episode.weights, dict):
        raise ValueError("windows or weights of the wrong type")
