"""Windows from readings, per machine, in data time: the grid `score` sees in a recording.

Pure: no Kafka. One Assembler holds the machines of one input partition (their readings share
a partition because the key is the machine id), like the episode Tracker.

- The grid: the model's sampling interval, epoch-aligned buckets [k*step, (k+1)*step). A
  window's row k holds, per channel, the last reading (by its time) in bucket k, and its
  timestamp is the bucket's start: a recording whose rows sit on the grid comes back exactly.
- A machine's watermark is its latest reading time minus the grace; a bucket closes once the
  watermark reaches its end. A reading for a closed bucket is `late`; one more than
  max_future ahead of the machine's latest time (or, for a machine new here or idle, the
  partition's) is `future`, unless the reading before it was `future` too and earlier: two
  readings agreeing on a new time are a machine back from a pause, one alone a bad clock.
- A closed bucket's missing channel carries the channel's last value for at most fill_limit
  buckets, never before its first reading (model/preprocessing.py fill_forward, what
  Recording.windows(fill="carry") does to a file). Every closed bucket yields the window of
  the last W buckets ending at it; a window still holding a gap is skipped and counted.
- A run of empty buckets longer than fill_limit restarts the machine's rows: nothing could
  fill them, so every window over them would be skipped; the silence costs no work.
- A machine whose latest reading is `silent` behind the partition's clock has its open
  buckets closed, so its last windows are scored (and its episode can close `silent`); never
  before the partition's clock passes the end of the machine's latest bucket by the grace, as
  its own watermark would (on an hourly grid, a machine read every 20 minutes is not silent).
- A machine with nothing open, quiet for an hour (QUIET) of the partition's time, is forgotten.

Everything is integer microseconds, so bucket edges are exact. The state of a machine is
plain JSON (`Machine.to_dict`); a batch can be undone (`begin`, `rollback`, `changed`).
"""

from __future__ import annotations

import base64
import functools
import heapq
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from model.errors import DataError
from model.preprocessing import sliding_windows
from model.recording import format_time
from worker.inputs.readings import Readings

log = logging.getLogger(__name__)

MICROS = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BEFORE = -(2**62)  # a cell's reading time before any reading
BEYOND = 2**62  # no wall-clock bound
# A machine quiet this long (and longer than its fill limit's buckets), with nothing open, is
# forgotten, checked each time the partition's clock enters a new span of it: memory and state
# stay bounded by the machines heard lately, whatever the ids (a sequence number per record).
QUIET = 3600 * MICROS


@dataclass(frozen=True)
class Grid:
    """What a machine's windows are made of: its model's channels, window and interval."""

    channels: tuple[str, ...]
    window: int
    step: int  # microseconds per bucket

    @classmethod
    def of(
        cls, channels: Sequence[str], window: int, interval: float | None, source: str = "model"
    ) -> Grid:
        """The grid of a model; DataError for a model that stores no sampling interval."""
        if interval is None:
            raise DataError(
                f"{source} stores no sampling interval (trained before faultwatch kept it): "
                "retrain it to assemble samples or tags, or send windows"
            )
        step = round(interval * MICROS)
        if step <= 0:
            raise DataError(f"{source}: sampling interval {interval!r} s is not positive")
        return cls(tuple(channels), window, step)

    def key(self) -> list[Any]:
        return [list(self.channels), self.window, self.step]


@dataclass(frozen=True)
class Rules:
    """The assembly settings, in microseconds (FAULTWATCH_INPUT_*, EPISODE_SILENT_SECONDS)."""

    grace: int = 5 * MICROS
    fill_limit: int = 5
    max_future: int = 120 * MICROS
    silent: int = 600 * MICROS  # 0: a silent machine's buckets stay open

    @classmethod
    def of(cls, grace: float, fill_limit: int, max_future: float, silent: float) -> Rules:
        """From seconds (the settings)."""
        return cls(
            round(grace * MICROS), fill_limit, round(max_future * MICROS), round(silent * MICROS)
        )


@dataclass
class Machine:
    """One machine's assembly: what it has seen, its open buckets and its last closed rows."""

    grid: Grid
    latest: int | None = None  # its newest reading time, microseconds
    closed: int | None = None  # its last closed bucket
    ahead: int | None = None  # time of its last reading refused as `future`
    # bucket -> (value per channel, reading time per channel); NaN: no value
    open: dict[int, tuple[list[float], list[int]]] = field(default_factory=dict)
    last_value: list[float] = field(default_factory=list)  # per channel, NaN: never
    last_bucket: list[int | None] = field(default_factory=list)  # where it was read
    rows: np.ndarray | None = None  # (<= W-1, C) its last closed rows, filled

    def __post_init__(self) -> None:
        c = len(self.grid.channels)
        if not self.last_value:
            self.last_value = [math.nan] * c
            self.last_bucket = [None] * c
        if self.rows is None:
            self.rows = np.empty((0, c))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the state topic: new values, never the live lists (the store keeps a
        value as it was put). The arrays (the closed rows, each open bucket's values and times)
        are base64 of little-endian float64 / int64: exact, NaN included, and an eighth of the
        cost of writing and reading them as decimal numbers, which every batch pays."""
        return {
            "grid": self.grid.key(),
            "latest": self.latest,
            "closed": self.closed,
            "ahead": self.ahead,
            "open": {
                str(b): [_pack(v, "<f8"), _pack(t, "<i8")]
                for b, (v, t) in sorted(self.open.items())
            },
            "last_value": _nulls(self.last_value),
            "last_bucket": list(self.last_bucket),
            "rows": _pack(self.rows, "<f8"),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Machine:
        channels, window, step = doc["grid"]
        grid = Grid(tuple(channels), window, step)
        rows = _unpack(doc["rows"], "<f8").reshape(-1, len(channels))
        opened = {
            int(b): (_unpack(v, "<f8").tolist(), _unpack(t, "<i8").tolist())
            for b, (v, t) in doc["open"].items()
        }
        if any(len(v) != len(channels) or len(t) != len(channels) for v, t in opened.values()):
            raise ValueError("an open bucket of another number of channels")
        return cls(
            grid,
            doc["latest"],
            doc["closed"],
            doc["ahead"],
            opened,
            _nans(doc["last_value"]),
            list(doc["last_bucket"]),
            rows,
        )


@dataclass(frozen=True)
class Built:
    """The windows one machine's closed buckets yielded in a batch."""

    machine: str
    slot: int  # its model's index in the grids
    buckets: np.ndarray  # (n,) int64, the bucket each window ends at
    windows: np.ndarray  # (n, W, C) float64, gap-free
    records: np.ndarray  # (n,) intp, the batch record whose reading closed the bucket
    step: int  # microseconds per bucket

    def timestamps(self) -> list[str]:
        """Each window's time: its last bucket's start, RFC 3339."""
        return [bucket_time(b, self.step) for b in self.buckets.tolist()]


@dataclass
class Counts:
    """What a batch did, for the metrics."""

    readings: int = 0  # accepted into a bucket
    late: int = 0  # readings refused: their bucket had closed
    future: int = 0  # readings refused: too far ahead
    filled: int = 0  # cells carried forward
    assembled: int = 0  # windows built
    skipped: int = 0  # windows skipped for gaps longer than the fill limit
    restarts: int = 0  # machines whose model's grid changed


@dataclass(frozen=True)
class Refusal:
    """Why a record's readings were not taken: `late` or `future`, and by how many seconds."""

    reason: str
    seconds: float
    ahead_of: str = "the machine's latest reading"  # a `future` one's reference


@dataclass
class Assembled:
    built: list[Built]
    refused: dict[int, Refusal]  # batch record -> why
    counts: Counts


@dataclass
class _Segment:
    """Closed rows of one machine in a batch, continuing `history` (its earlier rows)."""

    history: np.ndarray  # (h, C)
    buckets: list[int] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)
    records: list[int] = field(default_factory=list)


class Assembler:
    """The machines of one partition; readings in, the windows of closed buckets out."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.machines: dict[str, Machine] = {}
        self.clock: int | None = None  # the partition's newest reading time
        # (when silent, machine) of machines with open buckets: see `_silent_at`
        self._heap: list[tuple[int, str]] = []
        self.open_count = 0  # open buckets of all machines, kept as they open and close
        self.begin()

    # --- batches: what changed, and taking it back

    def begin(self) -> None:
        """Start a batch: what follows can be rolled back, and is reported by `changed`."""
        self._before: dict[str, dict[str, Any] | None] = {}
        self._clock_before = self.clock

    def rollback(self) -> None:
        """The batch since `begin` never happened (it is about to be redone)."""
        for name, doc in self._before.items():
            if doc is None:
                self.machines.pop(name, None)
            else:
                self.machines[name] = Machine.from_dict(doc)
        self.clock = self._clock_before
        self._rebuild_heap()
        self.begin()

    def changed(self) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """machine -> (state before the batch, state now) of each machine the batch touched."""
        now = {name: self.machines.get(name) for name in self._before}
        return {
            name: (before, None if now[name] is None else now[name].to_dict())
            for name, before in self._before.items()
        }

    @property
    def clock_before(self) -> int | None:
        return self._clock_before

    def restore(self, machines: dict[str, dict[str, Any]], clock: int | None) -> None:
        """Start from saved machine states and the partition's clock."""
        self.machines = {name: Machine.from_dict(doc) for name, doc in machines.items()}
        self.clock = clock
        self._rebuild_heap()
        self.begin()

    def load(self, name: str, doc: dict[str, Any] | None) -> None:
        """One machine's state as the store holds it (None: none), after a rollback there;
        `load_clock` ends the rollback."""
        if doc is None:
            self.machines.pop(name, None)
        else:
            self.machines[name] = Machine.from_dict(doc)

    def load_clock(self, clock: int | None) -> None:
        """The partition's clock as the store holds it; ends the rollback (a new batch)."""
        self.clock = clock
        self._rebuild_heap()
        self.begin()

    def open_buckets(self) -> int:
        return self.open_count

    # --- readings

    def assemble(
        self,
        readings: Readings,
        grids: Sequence[Grid],
        slots: Sequence[int],
        now: int | None = None,
    ) -> Assembled:
        """A batch's readings, in batch order. `slots[m]` is the model of readings.machines[m],
        `grids[slot]` its grid; a machine whose grid changed restarts its assembly. `now`: the
        wall clock (microseconds; None: unbounded): a reading more than max_future past it is
        `future` whatever its machine's time, so no clock here or in the episodes holds it."""
        counts = Counts()
        names = readings.machines
        states: list[Machine | None] = [None] * len(names)  # made at a machine's first reading
        pending: dict[str, list[_Segment]] = {}
        refused: dict[int, Refusal] = {}
        rules, clock = self.rules, self.clock
        started = clock
        # One pass per record: a sample's readings share its machine and time (checked once),
        # a tag is a record of one reading.
        record = readings.record
        starts = np.flatnonzero(np.diff(record, prepend=-1)) if len(record) else record
        ends = [*starts[1:].tolist(), len(record)]
        channels, values = readings.channel.tolist(), readings.value.tolist()
        heads = zip(
            starts.tolist(),
            ends,
            record[starts].tolist(),
            readings.machine[starts].tolist(),
            readings.time[starts].tolist(),
            strict=True,
        )
        limit = BEYOND if now is None else now + rules.max_future
        for a, b, r, m, t in heads:
            if t > limit:
                refused.setdefault(r, Refusal("future", (t - now) / MICROS, "the wall clock"))
                counts.future += b - a
                continue
            state, name = states[m], names[m]
            if state is None:
                state = states[m] = self._machine(name, grids[slots[m]], counts)
            step = state.grid.step
            reference = clock if state.latest is None else max(state.latest, clock or BEFORE)
            if reference is not None and t - reference > rules.max_future:
                ahead = state.ahead
                if ahead is None or not ahead < t <= ahead + rules.max_future:
                    state.ahead = t
                    refused.setdefault(r, Refusal("future", (t - reference) / MICROS))
                    counts.future += b - a
                    continue
            bucket = t // step
            if state.closed is not None and bucket <= state.closed:
                seconds = ((state.closed + 1) * step - t) / MICROS
                refused.setdefault(r, Refusal("late", seconds))
                counts.late += b - a
                continue
            state.ahead = None
            cell = state.open.get(bucket)
            if cell is None:
                cell = state.open[bucket] = (
                    [math.nan] * len(state.grid.channels),
                    [BEFORE] * len(state.grid.channels),
                )
                self.open_count += 1
            cell_values, cell_times = cell
            for k in range(a, b):
                c = channels[k]
                if t >= cell_times[c]:  # a bucket's last reading; of equal times, the later
                    cell_values[c], cell_times[c] = values[k], t
            counts.readings += b - a
            if state.latest is None or t > state.latest:
                state.latest = t
                heapq.heappush(self._heap, (self._silent_at(state), name))
                through = (t - rules.grace) // step - 1
                first = state.closed + 1 if state.closed is not None else min(state.open)
                if through >= first:
                    self._close(name, state, through, r, pending)
            if clock is None or t > clock:
                clock = t
                if rules.silent and self._heap and self._heap[0][0] <= clock:
                    self._close_silent(clock, r, pending)
        self.clock = clock
        if len(self._heap) > 2 * len(self.machines) + 1024:
            self._rebuild_heap()  # drop the stale entries
        built = []
        slot_of = dict(zip(names, slots, strict=True))
        for name, segments in pending.items():
            state = self.machines[name]
            slot = slot_of.get(name, -1)
            built += self._windows(name, slot, state, segments, counts)
        if started is not None and clock is not None and clock // QUIET > started // QUIET:
            self._forget_quiet(clock)
        return Assembled(built, refused, counts)

    def _machine(self, name: str, grid: Grid, counts: Counts) -> Machine:
        """The machine's state, new or restarted when its model's grid changed; kept as it was
        before the batch (at its first reading in it) for `changed` and `rollback`."""
        self._touch(name)
        state = self.machines.get(name)
        if state is not None and state.grid == grid:
            return state
        if state is not None:
            counts.restarts += 1
            self.open_count -= len(state.open)
            log.info(
                "assembly restarted machine=%s reason=model grid changed (channels, window or "
                "interval) open_buckets_dropped=%d",
                name,
                len(state.open),
            )
        state = self.machines[name] = Machine(grid)
        return state

    def _touch(self, name: str) -> None:
        if name not in self._before:
            state = self.machines.get(name)
            self._before[name] = None if state is None else state.to_dict()

    def _close(
        self,
        name: str,
        state: Machine,
        through: int,
        record: int,
        pending: dict[str, list[_Segment]],
    ) -> None:
        """Close the machine's buckets up to `through`, empty ones included, in order."""
        self._touch(name)
        segments = pending.get(name)
        if segments is None:
            segments = pending[name] = [_Segment(state.rows)]
        segment = segments[-1]
        start = state.closed + 1 if state.closed is not None else min(state.open)
        empty = [math.nan] * len(state.grid.channels)
        limit = self.rules.fill_limit
        k = start
        for bucket in [*sorted(b for b in state.open if b <= through), through + 1]:
            gap = bucket - k  # empty buckets k .. bucket-1
            for e in range(k, k + min(gap, limit)):
                segment.buckets.append(e)
                segment.rows.append(empty)
                segment.records.append(record)
            if gap > limit:  # nothing can fill the rest: the machine's rows start afresh
                segment = _Segment(np.empty((0, len(empty))))
                segments.append(segment)
            if bucket <= through:
                segment.buckets.append(bucket)
                segment.rows.append(state.open.pop(bucket)[0])
                self.open_count -= 1
                segment.records.append(record)
            k = bucket + 1
        state.closed = through

    def _close_silent(self, clock: int, record: int, pending: dict[str, list[_Segment]]) -> None:
        """Close the open buckets of machines silent by the partition's time."""
        heap = self._heap
        while heap and heap[0][0] <= clock:
            due, name = heapq.heappop(heap)
            state = self.machines.get(name)
            if state is None or not state.open or self._silent_at(state) != due:
                continue  # a stale entry: the machine spoke since, or has nothing open
            self._close(name, state, max(state.open), record, pending)

    def _windows(
        self, name: str, slot: int, state: Machine, segments: list[_Segment], counts: Counts
    ) -> list[Built]:
        """Fill the batch's closed rows of one machine and cut their windows (stride 1)."""
        window, limit = state.grid.window, self.rules.fill_limit
        built = []
        for segment in segments:
            if not segment.rows:
                state.rows = segment.history[len(segment.history) :]  # a restart: no rows
                continue
            rows = np.array(segment.rows, dtype=np.float64)  # (n, C)
            buckets = np.array(segment.buckets, dtype=np.int64)  # (n,)
            counts.filled += _carry(rows, buckets, state, limit)
            every = np.concatenate([segment.history, rows])  # (h + n, C)
            state.rows = every[max(0, len(every) - (window - 1)) :] if window > 1 else every[:0]
            first = max(window - 1, len(segment.history))  # the first new row with a window
            if len(every) <= first:
                continue
            windows = sliding_windows(every, window)[first - window + 1 :]  # (b, W, C)
            new = slice(first - len(segment.history), None)
            keep = ~np.isnan(windows).any(axis=(1, 2))
            counts.skipped += int((~keep).sum())
            if not keep.any():
                continue
            counts.assembled += int(keep.sum())
            ends = buckets[new][keep]
            built.append(
                Built(
                    name,
                    slot,
                    ends,
                    np.ascontiguousarray(windows[keep]),
                    np.array(segment.records, dtype=np.intp)[new][keep],
                    state.grid.step,
                )
            )
        state.rows = np.array(state.rows)  # a copy: not a view into a batch's array
        return built

    def _silent_at(self, state: Machine) -> int:
        """The partition time at which the machine is silent: `silent` after its latest
        reading, and not before the end of that reading's bucket plus the grace (its own
        watermark's rule; it decides on grids coarser than `silent`)."""
        latest, step = state.latest or 0, state.grid.step
        return max(latest + self.rules.silent, (latest // step + 1) * step + self.rules.grace)

    def _forget_quiet(self, clock: int) -> None:
        """Forget the machines with nothing open that have been quiet for QUIET (and for their
        fill limit's buckets: after that, their next reading starts their rows afresh anyway)."""
        rules = self.rules
        quiet = [
            name
            for name, m in self.machines.items()
            if not m.open
            and m.latest is not None
            and clock - m.latest >= max(QUIET, (rules.fill_limit + 1) * m.grid.step + rules.grace)
        ]
        for name in quiet:
            self._touch(name)
            del self.machines[name]
        if quiet:
            log.info("assembly forgot machines=%d quiet for an hour or more", len(quiet))

    def _rebuild_heap(self) -> None:
        self.open_count = sum(len(m.open) for m in self.machines.values())
        self._heap = [
            (self._silent_at(m), n)
            for n, m in self.machines.items()
            if m.open and m.latest is not None
        ]
        heapq.heapify(self._heap)


def _carry(rows: np.ndarray, buckets: np.ndarray, state: Machine, limit: int) -> int:
    """Fill `rows` (n, C) in place: each missing cell takes its channel's last value when it
    was read at most `limit` buckets before; updates the machine's last values. Returns the
    number of cells filled."""
    n, c = rows.shape
    missing = np.isnan(rows)
    index = np.where(missing, -1, np.arange(n)[:, None])
    last = np.maximum.accumulate(index, axis=0)  # (n, C) the row of each channel's last value
    before_bucket = np.array([BEFORE if b is None else b for b in state.last_bucket])
    before_value = np.array(state.last_value, dtype=np.float64)
    cols = np.broadcast_to(np.arange(c), (n, c))
    seen = last >= 0
    source_bucket = np.where(seen, buckets[np.maximum(last, 0)], before_bucket)  # (n, C)
    source_value = np.where(seen, rows[np.maximum(last, 0), cols], before_value)
    fill = missing & (source_bucket != BEFORE) & (buckets[:, None] - source_bucket <= limit)
    rows[fill] = source_value[fill]
    final = last[-1]  # (C,)
    for ch in np.flatnonzero(final >= 0).tolist():
        state.last_bucket[ch] = int(buckets[final[ch]])
        state.last_value[ch] = float(rows[final[ch], ch])
    return int(fill.sum())


@functools.lru_cache(maxsize=4096)  # the machines of a partition share their buckets
def bucket_time(bucket: int, step: int) -> str:
    """The start of a bucket as RFC 3339 UTC."""
    return format_time(EPOCH + timedelta(microseconds=bucket * step))


def _pack(values: Sequence[float] | np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode("ascii")


def _unpack(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype).astype(dtype[1:])


def _nulls(values: Sequence[float]) -> list[float | None]:
    return [None if v != v else v for v in values]


def _nans(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]
