"""Per-partition state with per-batch undo, and its changelog in the state topic.

store.py: the keyed store; changelog.py: its records and their restore; partitions.py: the
stores of the partitions in hand; episodes.py: the episode family (and `EpisodeState`).
"""

from worker.state.changelog import CLOCK_KEY, ChangelogReader, StateRecord, restore
from worker.state.episodes import EpisodeFamily, EpisodeState
from worker.state.partitions import Family, Owned, State
from worker.state.store import Store

__all__ = [
    "CLOCK_KEY",
    "ChangelogReader",
    "EpisodeFamily",
    "EpisodeState",
    "Family",
    "Owned",
    "State",
    "StateRecord",
    "Store",
    "restore",
]
