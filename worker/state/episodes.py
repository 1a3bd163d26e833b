"""The episode family: each partition's `Tracker`, kept in its store (worker/state/store.py).

In the store: `episode` (machine -> Episode.to_dict(), pending and open ones), `clock` (key "":
the partition's clock, its newest window time), `seen` (in memory only: machine -> its newest
window time; a redone batch must find it as it was, a restore rebuilds it from the episodes)
and `mutes` (in memory only, key "version": the mute table version the partition's episodes
have seen, the pipeline's; undone with the batch whose mute closes it caused). The tracker keeps
live Episode objects for speed and says which machines a batch touched; `save` puts those into
the store, `rolled_back` loads them back from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from model.episodes import Episode, EpisodeConfig, Tracker
from worker.state.changelog import CLOCK, EPISODE, Reader
from worker.state.partitions import Family, State
from worker.state.store import Store

SEEN = "seen"
MUTES = "mutes"  # key "version": the mute table version the partition's episodes have seen


class EpisodeFamily:
    """The trackers of the partitions in hand."""

    names = (EPISODE, CLOCK, SEEN, MUTES)
    memory_only = (SEEN, MUTES)

    def __init__(self, config: EpisodeConfig, top_channels: int = 3) -> None:
        self.config = config
        self.top_channels = top_channels
        self.trackers: dict[int, Tracker] = {}

    def restored(self, partition: int, store: Store) -> int:
        episodes, unusable = [], 0
        for machine, data in store.items(EPISODE):
            try:
                episode = Episode.from_dict(data)
                _check(episode, machine)
            except (KeyError, TypeError, ValueError, AttributeError):
                unusable += 1
                store.put(EPISODE, machine, None)
                continue
            episodes.append(episode)
            store.load(SEEN, machine, episode.last)
        clock = store.get(CLOCK, "")
        if not isinstance(clock, int | float) or isinstance(clock, bool):
            if clock is not None:
                unusable += 1
            clock = -math.inf
        store.begin()  # what was unusable is gone, not a change of the next batch
        tracker = Tracker(self.config, self.top_channels)
        tracker.restore(episodes, float(clock))
        self.trackers[partition] = tracker
        return unusable

    def save(self, partition: int, store: Store) -> None:
        tracker = self.trackers[partition]
        touched, observed = tracker.changed()
        episodes, seen = tracker.episodes, tracker.seen
        for machine in touched:
            episode = episodes.get(machine)
            store.put(EPISODE, machine, None if episode is None else episode.to_dict())
        for machine in observed:
            store.put(SEEN, machine, seen.get(machine))
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
    ) -> None:
        self.episodes = EpisodeFamily(config, top_channels)
        super().__init__(input_topic, group, reader, (self.episodes, *families), on_skip)
        self.config = config
        self.open_now = 0  # open episodes after the last batch: read by the metrics thread

    def trackers(self, starts: dict[int, int]) -> dict[int, Tracker]:
        """Each partition's tracker as of the offset where its next batch begins."""
        self.begin(starts)
        return {partition: self.episodes.trackers[partition] for partition in starts}

    def tracker(self, partition: int, first_offset: int) -> Tracker:
        """One partition's tracker as of `first_offset`."""
        return self.trackers({partition: first_offset})[partition]

    def finish(self, partition: int, through: int) -> list[tuple[bytes, bytes | None]]:
        records = super().finish(partition, through)
        self.open_now = self.open_count()
        return records

    def forget(self, partitions) -> None:  # noqa: ANN001 (State's signature)
        super().forget(partitions)
        self.open_now = self.open_count()

    def open_count(self) -> int:
        return self.episodes.open_count()


def _check(episode: Episode, machine: str) -> None:
    """ValueError unless the fields the tracker computes with have their types."""
    numbers = (episode.started, episode.last, episode.reported, episode.score)
    if episode.machine_id != machine or episode.phase not in ("pending", "open"):
        raise ValueError("not this machine's episode")
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        raise ValueError("a time or score is not a number")
    if not isinstance(episode.windows, int) or not isinstance(episode.weights, dict):
        raise ValueError("windows or weights of the wrong type")
