"""The readings stage of a batch: sample or tag records in, the windows they close out.

The pipeline (worker/pipeline.py) hands the batch's records here instead of to the window
decoder when FAULTWATCH_INPUT_FORMAT is `samples` or `tags`. Records are decoded into reading
arrays (worker/inputs/readings.py), each partition's readings go through that partition's
assembler (worker/inputs/assembler.py, state in the store: worker/inputs/family.py), and the
windows come back as a `Decoded` batch, exactly what the window decoder gives: grouped by
model, in batch order (a window's record is the one whose reading closed its last bucket),
with dead letters for what could not be read, was late or too far ahead. The partitions'
state must have been begun for the batch (the pipeline does it before calling `decode`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from model.scoring import Scorer
from worker.inputs.assembler import MICROS, Built, Counts, Grid, Refusal, bucket_time
from worker.inputs.family import AssemblyFamily
from worker.inputs.readings import Format, ReadingDecoder
from worker.inputs.windows import Decoded, Group, Invalid, Origin

if TYPE_CHECKING:
    from worker.routing import Routes


class Record(Protocol):
    partition: int
    key: bytes | None
    value: bytes | None


@dataclass
class ReadingCounts(Counts):
    """A batch's readings, for the metrics: the assembler's counts and the decoder's."""

    received: int = 0  # readings in records that could be read
    extra: int = 0  # readings of channels the model does not have: ignored

    def add(self, counts: Counts) -> None:
        for f in fields(Counts):
            setattr(self, f.name, getattr(self, f.name) + getattr(counts, f.name))


def grid_of(scorer: Scorer, name: str = "model") -> Grid:
    """The grid a model's windows are assembled on; DataError for a model without interval."""
    interval = scorer.artifact.sampling_interval
    return Grid.of(scorer.channels, scorer.window, interval, name)


def interval_loader(load: Callable[[Path], Scorer] = Scorer.load) -> Callable[[Path], Scorer]:
    """The model loader of a worker reading samples or tags: a model that stores no sampling
    interval is refused (at start: the worker stops with that line; on reload: the file is
    refused and what served keeps serving)."""

    def loaded(path: Path) -> Scorer:
        scorer = load(path)
        grid_of(scorer, str(path))
        return scorer

    return loaded


class ReadingStage:
    """Decoder and assemblers of a worker reading samples or tags."""

    def __init__(
        self,
        form: Format,
        family: AssemblyFamily,
        max_record_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.form = form
        self.family = family
        self.max_record_bytes = max_record_bytes
        self.clock = clock  # the wall clock: readings past it by max_future are `future`

    def serve(self, models: Routes) -> None:
        """Assemble for these models from the next batch on (a machine whose grid changes
        restarts its assembly)."""
        channels = [served.scorer.channels for served in models.models]
        route = _first if models.every_machine else models.route
        self.decoder = ReadingDecoder(self.form, channels, self.max_record_bytes, route)
        self.grids = [grid_of(served.scorer, served.name) for served in models.models]

    def decode(self, records: Sequence[Record]) -> tuple[Decoded, ReadingCounts]:
        """The windows the batch's readings close, and its dead letters."""
        decoded = self.decoder.decode_batch([r.value for r in records], [r.key for r in records])
        readings, counts = decoded.readings, ReadingCounts()
        counts.received, counts.extra = len(readings), decoded.extra
        partition_of = np.array([r.partition for r in records], dtype=np.int64)
        partitions = partition_of[readings.record]  # (R,)
        built: list[Built] = []
        refused: dict[int, Refusal] = {}
        now = round(self.clock() * MICROS)
        for p in sorted(set(partitions.tolist())):
            assembler = self.family.assemblers[p]
            mine = readings.take(partitions == p)
            out = assembler.assemble(mine, self.grids, readings.slots, now)
            built += out.built
            refused.update(out.refused)
            counts.add(out.counts)
        grace = self.family.rules.grace / 1e6
        invalid = decoded.invalid + [(i, _refusal(why, grace)) for i, why in refused.items()]
        invalid.sort(key=lambda item: item[0])
        return _windows(built, invalid), counts


def _windows(built: list[Built], invalid: list[tuple[int, Invalid]]) -> Decoded:
    """The built windows in batch order (their records', then their buckets'), by model."""
    if not built:
        return Decoded([], invalid, [])
    records = np.concatenate([b.records for b in built])
    buckets = np.concatenate([b.buckets for b in built])
    which = np.concatenate([np.full(len(b.buckets), n) for n, b in enumerate(built)])
    rows = np.concatenate([np.arange(len(b.buckets)) for b in built])
    order = np.lexsort((buckets, which, records))  # by record, then machine, then bucket
    valid: list[tuple[int, Origin]] = []
    members: dict[int, list[int]] = defaultdict(list)
    windows: dict[int, list[np.ndarray]] = defaultdict(list)
    for j, o in enumerate(order.tolist()):
        b, k = built[which[o]], rows[o]
        valid.append((int(records[o]), Origin(b.machine, bucket_time(int(buckets[o]), b.step))))
        members[b.slot].append(j)
        windows[b.slot].append(b.windows[k])
    groups = [
        Group(slot, np.stack(windows[slot]), np.array(members[slot], dtype=np.intp))
        for slot in sorted(members)
    ]
    return Decoded(valid, invalid, groups)


def _refusal(why: Refusal, grace: float) -> Invalid:
    if why.reason == "late":
        message = (
            f"its bucket closed: {why.seconds:g} s before the end of the machine's last closed "
            f"bucket (FAULTWATCH_INPUT_GRACE_SECONDS {grace:g})"
        )
        header = ("faultwatch.error.late_seconds", f"{why.seconds:g}".encode())
        return Invalid("late", message, (header,))
    message = (
        f"{why.seconds:g} s ahead of {why.ahead_of} (more than FAULTWATCH_INPUT_MAX_FUTURE_SECONDS)"
    )
    return Invalid("future", message)


def _first(machine: str) -> int:
    return 0
