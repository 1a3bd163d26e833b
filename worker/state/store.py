"""A partition's keyed state: plain-JSON values by family and key, undone per batch.

Everything a worker must carry from one batch to the next about the machines of an input
partition lives in one `Store` per partition, under a *family* (who owns the value: `episode`,
`clock`, ...) and a key (usually the machine id). The worker begins a batch, the stages read and
put values while they process it, and at the end the store says which keys the batch changed,
each with its value before and after: the changelog (worker/state/changelog.py) writes exactly
those to the state topic with the batch's other outputs. A batch redone (its publish failed, or
its commit was refused) is rolled back first, so the second attempt starts from the same state
as the first. Values are plain JSON (dicts, lists, str, numbers, None) and are never mutated
after a `put`: put a new value instead (that is what lets the store keep the old one cheaply).

A new family of per-machine state plugs in with a `Family` (worker/state/partitions.py): the
names of its values in the store and the topic, and four hooks that move its live objects in
and out of the store. A family that keeps no live objects (it reads and puts the store as it
goes) has nothing to do in them:

    class LastSeen:
        names = ("last_seen",)      # its values' family names, in the store and the topic
        memory_only = ()            # those of them undone per batch but never written

        def restored(self, partition, store) -> int: return 0   # unusable values dropped
        def save(self, partition, store) -> None: ...            # batch done: put live changes
        def rolled_back(self, partition, store, undone) -> None: ...  # live objects <- store
        def forget(self, partition) -> None: ...                 # partition gone elsewhere

    state = EpisodeState(config, input_topic, group, reader, families=(LastSeen(),))
    state.begin({partition: first_offset})       # restored, the next batch, or the same again
    store = state.store(partition)
    store.put("last_seen", "pump-1", {"at": 1700000000.0})
    store.get("last_seen", "pump-1")             # -> {"at": 1700000000.0}
    records = state.finish(partition, through=last_offset + 1)  # publish with the batch

In the worker, `worker/service.py` (episode_stage) builds the state and the pipeline begins and
finishes every batch's partitions (`EpisodeState.trackers` begins them all, whatever family).
Restoring a partition reads its changelog and gives each family its keys back
(`store.items(family)`), so nothing else is needed for a new family to survive restarts,
rebalances and crashes: no new topic, no new record format.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

MISSING: Any = object()  # no value under the key (a deletion, or a key new in the batch)
Key = tuple[str, str]  # (family, key)


class Store:
    """One input partition's state: family -> key -> plain-JSON value, with per-batch undo."""

    def __init__(self, memory_only: Iterable[str] = ()) -> None:
        self.memory_only = frozenset(memory_only)  # families never written to the changelog
        self._families: dict[str, dict[str, Any]] = {}
        # family -> key -> its value before the batch first put it (MISSING: absent)
        self._before: dict[str, dict[str, Any]] = {}

    def get(self, family: str, key: str, default: Any = None) -> Any:
        return self._families.get(family, {}).get(key, default)

    def items(self, family: str) -> Iterator[tuple[str, Any]]:
        """The family's (key, value) pairs (a copy: safe to put while iterating)."""
        return iter(list(self._families.get(family, {}).items()))

    def size(self, family: str) -> int:
        return len(self._families.get(family, ()))

    def put(self, family: str, key: str, value: Any) -> None:
        """Set a value (None: delete the key); undone by `rollback` until the next `begin`."""
        self.update(family, ((key, value),))

    def update(self, family: str, values: Iterable[tuple[str, Any]]) -> None:
        """`put` for many keys of one family (None: delete)."""
        data = self._families.setdefault(family, {})
        before = self._before.setdefault(family, {})
        for key, value in values:
            if key not in before:
                before[key] = data.get(key, MISSING)
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    def load(self, family: str, key: str, value: Any) -> None:
        """A value as restored: not a change of the batch (no undo, no changelog record)."""
        if value is not None:
            self._families.setdefault(family, {})[key] = value

    def begin(self) -> None:
        """A batch starts: what it puts can be rolled back, and is what `changed` reports."""
        self._before = {}

    def rollback(self) -> list[Key]:
        """The batch since `begin` never happened; returns the keys it had changed."""
        undone = []
        for family, before in self._before.items():
            data = self._families.setdefault(family, {})
            for key, value in before.items():
                if value is MISSING:
                    data.pop(key, None)
                else:
                    data[key] = value
                undone.append((family, key))
        self._before = {}
        return undone

    def changed(self) -> dict[Key, tuple[Any, Any]]:
        """(family, key) -> (value before the batch, value now; None: absent), of the logged
        families, for each key the batch put with a different value."""
        found = {}
        for family, before in self._before.items():
            if family in self.memory_only:
                continue
            data = self._families.get(family, {})
            for key, value in before.items():
                old = None if value is MISSING else value
                now = data.get(key)
                if old != now:
                    found[(family, key)] = (old, now)
        return found
