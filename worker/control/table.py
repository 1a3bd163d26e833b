"""The control table: the control topic read whole by every worker (no consumer group).

Mutes are held by record key: a later mute under the same key replaces it, a tombstone of
that key lifts it. Labels are held by episode id, the last one standing; a label never
replaces or lifts a mute, and a tombstone never deletes a label (worker/control/records.py).
Mutes are an operator's action on the live plant, so they follow the wall clock: a window is
muted when it is processed while a mute holds, whatever its data time.

`muted_machines()` is what `faultwatch_muted_machines` reports: the machines this worker
scored in the last `SEEN_SECONDS` (wall clock) that a mute names now. Partitions are split
between workers, so the sum over workers is the plant's muted machines that still send data;
a machine that went quiet leaves the count after `SEEN_SECONDS`, and one whose partition moved
may be counted by both workers for that long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from worker.control.records import Label, Mute, Skipped, Unmute, parse

log = logging.getLogger(__name__)

NOT_MUTED = -1.0  # cached "no mute names this machine"
SEEN_SECONDS = 3600.0  # a machine counts as this worker's for an hour after its last window
PRUNE_SECONDS = 60.0  # how often the machines gone quiet are forgotten
MAX_CACHED = 100_000  # machine ids cached per version at most (as the routing cache): a
# gateway that puts a sequence number in machine_id makes a new one per record

Checker = Callable[[str], bool]


class Snapshot(NamedTuple):
    """A checker of the mutes and the version it reflects, read together."""

    muted: Checker
    version: int


class MuteTable:
    """The control topic's mutes (by key) and labels (by episode); thread-safe."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        skipped: Callable[[str], None] | None = None,
        max_cached: int = MAX_CACHED,
    ) -> None:
        self.clock = clock
        self.max_cached = max_cached
        self._mutes: dict[bytes, Mute] = {}
        self._labels: dict[str, Label] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped by every change of the mutes
        self.labels_version = 0  # bumped by every label
        self.skipped: Counter[str] = Counter()  # reason -> records skipped
        self._on_skip = skipped
        self._cache: dict[str, float | None] = {}  # machine -> until (None: no end), this version
        self._cached_version = -1
        self._seen: dict[str, float] = {}  # machine -> wall-clock time of its last window here
        self._next_prune = 0.0

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One control record: a mute, a tombstone that lifts the mute under its key, a label."""
        record = parse(key, value)
        with self._lock:
            if isinstance(record, Unmute):
                if self._mutes.pop(record.key, None) is not None:
                    self.version += 1
            elif isinstance(record, Mute):
                self._mutes[record.key] = record
                self.version += 1
            elif isinstance(record, Label):
                self._labels[record.episode_id] = record
                self.labels_version += 1
            else:
                self._skip(key or b"", record)

    def _skip(self, key: bytes, record: Skipped) -> None:
        self.skipped[record.reason] += 1
        if self._on_skip is not None:
            self._on_skip(record.reason)
        first = self.skipped[record.reason] == 1  # then counted only: a topic full of them
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "control record skipped key=%r reason=%s error=%s", key[:100], record.reason,
            record.detail,
        )  # fmt: skip

    def mutes(self) -> list[Mute]:
        with self._lock:
            return list(self._mutes.values())

    def labels(self) -> dict[str, Label]:
        """episode id -> its standing label (a copy)."""
        with self._lock:
            return dict(self._labels)

    def label(self, episode_id: str) -> Label | None:
        with self._lock:
            return self._labels.get(episode_id)

    def active(self, now: float | None = None) -> list[Mute]:
        """The mutes that hold now."""
        now = self.clock() if now is None else now
        return sorted((m for m in self.mutes() if m.holds(now)), key=lambda m: m.target)

    def checker(self) -> Checker:
        """Whether a machine is muted now (one `now` for a whole batch)."""
        return self.snapshot().muted

    def snapshot(self) -> Snapshot:
        """The version and its checker under one lock: a retried batch sees the same mutes."""
        now = self.clock()
        with self._lock:
            version, mutes = self.version, list(self._mutes.values())
            if self._cached_version != version or now >= self._next_prune:
                self._cache, self._cached_version = {}, version
            cache = self._cache
            if now >= self._next_prune:
                self._prune(now)
        seen, bound = self._seen, self.max_cached
        if not mutes:

            def never(machine: str) -> bool:
                seen[machine] = now
                return False

            return Snapshot(never, version)

        def muted(machine: str) -> bool:
            seen[machine] = now
            if machine in cache:
                until = cache[machine]
            else:
                if len(cache) >= bound:  # then start over: bounded whatever the ids
                    cache.clear()
                until = cache[machine] = _until(machine, mutes)
            return until != NOT_MUTED and (until is None or now < until)

        return Snapshot(muted, version)

    def _prune(self, now: float) -> None:
        """Forget the machines gone quiet, and the cache with them: both stay bounded by the
        machines seen in the last SEEN_SECONDS (a batch's checker holds its own references)."""
        self._next_prune = now + PRUNE_SECONDS
        self._seen = {m: at for m, at in self._seen.items() if at >= now - SEEN_SECONDS}

    def muted_machines(self) -> int:
        """Machines scored here in the last SEEN_SECONDS that a mute names now."""
        now = self.clock()
        mutes = [m for m in self.mutes() if m.holds(now)]
        if not mutes:
            return 0
        seen = self._seen.copy()  # one C call: safe against the loop's thread writing it
        recent = (m for m, at in seen.items() if at >= now - SEEN_SECONDS)
        return sum(1 for machine in recent if _until(machine, mutes) != NOT_MUTED)


def _until(machine: str, mutes: list[Mute]) -> float | None:
    """How long the mutes that name the machine hold: the latest end (None: no end)."""
    ends = [m.until for m in mutes if m.names(machine)]
    if not ends:
        return NOT_MUTED
    return None if None in ends else max(e for e in ends if e is not None)
