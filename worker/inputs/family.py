"""The assembly family: each input partition's Assembler, kept in its state store.

In the store (worker/state/store.py): `assembly` (machine -> Machine.to_dict(): its grid,
latest time, open buckets, last value per channel, last W-1 closed rows) and `assembly_clock`
(key "": the partition's newest reading time, microseconds). The assembler keeps live Machine
objects for speed and says which machines a batch touched; `save` puts those into the store,
`rolled_back` loads them back from it, `restored` builds the assembler from a restored store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from worker.inputs.assembler import Assembler, Machine, Rules

if TYPE_CHECKING:
    from worker.state.store import Store

log = logging.getLogger(__name__)

ASSEMBLY, ASSEMBLY_CLOCK = "assembly", "assembly_clock"


class AssemblyFamily:
    """The assemblers of the partitions in hand."""

    names = (ASSEMBLY, ASSEMBLY_CLOCK)
    memory_only: tuple[str, ...] = ()

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.assemblers: dict[int, Assembler] = {}

    def restored(self, partition: int, store: Store) -> int:
        machines, unusable = {}, 0
        for machine, data in store.items(ASSEMBLY):
            try:
                Machine.from_dict(data)
            except (KeyError, TypeError, ValueError, AttributeError):
                unusable += 1
                store.put(ASSEMBLY, machine, None)
                continue
            machines[machine] = data
        clock = store.get(ASSEMBLY_CLOCK, "")
        if not isinstance(clock, int) or isinstance(clock, bool):
            unusable += clock is not None
            clock = None
        store.begin()  # what was unusable is gone, not a change of the next batch
        assembler = Assembler(self.rules)
        assembler.restore(machines, clock)
        self.assemblers[partition] = assembler
        if machines:
            log.info(
                "assembly restored partition=%d machines=%d open_buckets=%d",
                partition,
                len(machines),
                assembler.open_buckets(),
            )
        return unusable

    def save(self, partition: int, store: Store) -> None:
        assembler = self.assemblers[partition]
        for machine, (_, now) in sorted(assembler.changed().items()):
            store.put(ASSEMBLY, machine, now)
        store.put(ASSEMBLY_CLOCK, "", assembler.clock)
        assembler.begin()

    def rolled_back(self, partition: int, store: Store, undone: list[tuple[str, str]]) -> None:
        assembler = self.assemblers[partition]
        machines = set(assembler.changed()) | {key for name, key in undone if name == ASSEMBLY}
        for machine in machines:
            assembler.load(machine, store.get(ASSEMBLY, machine))
        assembler.load_clock(store.get(ASSEMBLY_CLOCK, ""))

    def forget(self, partition: int) -> None:
        self.assemblers.pop(partition, None)

    def open_buckets(self) -> int:
        return sum(a.open_buckets() for a in list(self.assemblers.values()))

    def machines(self) -> int:
        return sum(len(a.machines) for a in list(self.assemblers.values()))

    # Both are read by the metrics thread: numbers and dict sizes, never a walk of the machines.


def machine_states(store: Store) -> dict[str, Any]:
    """The assembly states in a store (for tests and tools)."""
    return dict(store.items(ASSEMBLY))
