"""The stores of the input partitions in hand: restored, begun, rolled back and logged per batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.state.changelog import Reader, StateRecord, encode, restore
from worker.state.store import Store

log = logging.getLogger(__name__)


class Family(Protocol):
    """One kind of per-machine state kept in the partitions' stores (see worker/state/store.py).

    `names`: the store families it owns, in the order their records are written;
    `memory_only`: those of them kept across batches (and undone) but never written.
    """

    names: tuple[str, ...]
    memory_only: tuple[str, ...]

    def restored(self, partition: int, store: Store) -> int:
        """The store holds the partition's restored state; returns how many values were unusable
        (the family has dropped them from the store)."""

    def save(self, partition: int, store: Store) -> None:
        """The batch is done: put what it changed into the store."""

    def rolled_back(self, partition: int, store: Store, undone: list[tuple[str, str]]) -> None:
        """The batch was undone in the store (`undone`: the (family, key) it had put): bring
        live objects back to the store's values."""

    def forget(self, partition: int) -> None:
        """The partition went to another worker."""


@dataclass
class Owned:
    """A partition this worker processes: its store, and the offsets of its last batch."""

    store: Store
    start: int  # first input offset of the last batch
    through: int  # the offset after it
    begun: bool = False  # the store's undo holds a batch that began at `start`


class State:
    """Every family's state of the partitions in hand, and the records that log its changes."""

    def __init__(
        self,
        input_topic: str,
        group: str,
        reader: Reader,
        families: Sequence[Family],
        on_skip: Callable[[str, int], None] | None = None,
    ) -> None:
        self.input_topic = input_topic
        self.group = group
        self.reader = reader
        self.families = list(families)
        self.on_skip = on_skip  # (reason, records): a malformed or foreign record was skipped
        self.partitions: dict[int, Owned] = {}
        self.restores: list[tuple[int, int, float]] = []  # (partition, values, seconds)
        self.redone: set[int] = set()  # partitions whose batch is a redo, as of the last begin
        names = [name for family in self.families for name in family.names]
        self._order = {name: i for i, name in enumerate(names)}

    def begin(self, starts: dict[int, int]) -> dict[int, Store]:
        """Each partition's store as of the offset where its next batch begins."""
        unknown = {}
        self.redone = set()
        for partition, first in starts.items():
            owned = self.partitions.get(partition)
            if owned is not None and owned.begun and owned.start == first:
                self._rollback(partition, owned)  # the last batch again: it was not committed
                self.redone.add(partition)
            elif owned is not None and first >= owned.through:
                owned.store.begin()  # the next batch (offsets may skip transaction markers)
            else:
                unknown[partition] = first  # new here, or moved on elsewhere: restore
        if unknown:
            self._restore(unknown)
        found = {}
        for partition, first in starts.items():
            owned = self.partitions[partition]
            owned.start = owned.through = first
            owned.begun = True
            found[partition] = owned.store
        return found

    def store(self, partition: int) -> Store:
        """The partition's store (begun by `begin`)."""
        return self.partitions[partition].store

    def finish(self, partition: int, through: int) -> list[StateRecord]:
        """The batch is done up to `through`: the state records to publish with it."""
        owned = self.partitions[partition]
        owned.through = through
        for family in self.families:
            family.save(partition, owned.store)
        changed = owned.store.changed()
        order = self._order
        return [
            encode(name, key, through, now, before, self.group, self.input_topic)
            for (name, key), (before, now) in sorted(
                changed.items(), key=lambda item: (order.get(item[0][0], 0), item[0][1])
            )
        ]

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions gone to another worker: their state is theirs now."""
        for partition in partitions:
            if self.partitions.pop(partition, None) is not None:
                for family in self.families:
                    family.forget(partition)

    def _rollback(self, partition: int, owned: Owned) -> None:
        undone = owned.store.rollback()
        for family in self.families:
            family.rolled_back(partition, owned.store, undone)
        owned.store.begin()

    def _restore(self, resume: dict[int, int]) -> None:
        """Read the partitions' state (together: one wait for all) before their records."""
        started = time.monotonic()
        changelogs = self.reader(sorted(resume))
        seconds = time.monotonic() - started
        memory_only = [name for family in self.families for name in family.memory_only]
        for partition, first in sorted(resume.items()):
            found = restore(changelogs.get(partition, ()), first, self.group, self.input_topic)
            store = Store(memory_only)
            for (name, key), value in found.values.items():
                store.load(name, key, value)
            unusable = sum(family.restored(partition, store) for family in self.families)
            if unusable:
                found.skipped["state"] += unusable
            self.partitions[partition] = Owned(store, first, first)
            self.restores.append((partition, len(found.values), seconds))
            log.info(
                "state restored partition=%d episodes=%d keys=%d records=%d resume_offset=%d "
                "seconds=%.3f",
                partition,
                store.size("episode"),
                len(found.values),
                found.records,
                first,
                seconds,
            )
            self._skipped(partition, found.skipped)

    def _skipped(self, partition: int, skipped: dict[str, int]) -> None:
        for reason, count in sorted(skipped.items()):
            if self.on_skip is not None:
                self.on_skip(reason, count)
            if reason == "foreign":
                log.warning(
                    "state topic partition=%d holds %d records of another group or input "
                    "topic: ignored (give each group its own FAULTWATCH_STATE_TOPIC)",
                    partition,
                    count,
                )
            else:
                log.warning(
                    "state topic partition=%d: %d records skipped reason=%s",
                    partition,
                    count,
                    reason,
                )
