"""The input contract: each record's JSON window becomes a row of the batch array, or a reason."""

# Reasons are stable codes, sent as the `faultwatch.error.reason` header of a dead letter:
#
#   too_large     the value is longer than FAULTWATCH_MAX_RECORD_BYTES (checked before parsing)
#   invalid_json  not UTF-8 JSON text (also: an empty value, nesting deeper than parsers allow)
#   schema        not an object with a machine_id, a timestamp (RFC 3339 or epoch seconds,
#                 within years 1-9999) and values made of numbers
#   no_model      no model in service serves the machine_id (worker/routing.py)
#   channels      `channels` is given and is not the model's channel list, in its order
#   shape         `values` is not window rows of one number per channel
#   non_finite    a value is NaN or infinite (NaN/Infinity tokens, numbers beyond float range);
#                 the pipeline adds windows whose values overflow the model (score not finite)
#   key_mismatch  the record's key is present and is not its machine_id (the pipeline checks:
#                 the window may sit in another partition than its machine's episode state)
#   late          (samples, tags) a reading for a bucket its machine has closed; header
#                 faultwatch.error.late_seconds (worker/inputs/assembler.py)
#   future        stamped more than FAULTWATCH_INPUT_MAX_FUTURE_SECONDS ahead of the wall clock
#                 (windows: the pipeline checks, worker/clocks.py) or, samples and tags, a
#                 reading that far ahead of its machine's latest time (the assembler's)
#
# Fields the contract does not name are ignored, so producers may add their own.

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, NamedTuple, get_args

import msgspec
import numpy as np
import simdjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.errors import DataError
from model.recording import to_rfc3339

Reason = Literal[
    "too_large",
    "invalid_json",
    "schema",
    "no_model",
    "channels",
    "shape",
    "non_finite",
    "key_mismatch",
    "late",
    "future",
]
REASONS: tuple[Reason, ...] = get_args(Reason)
MAX_MESSAGE = 300  # characters of an error message kept for the dead-letter header


# Validation stops at a list's first wrong item: one error per item of a 1 MB record would
# cost seconds and hundreds of MiB, and only the first is reported.
FIRST_ERROR = Field(fail_fast=True)
Row = Annotated[list[float], FIRST_ERROR]


class WindowMessage(BaseModel):
    """The JSON object of one input record; strict, so "1.5" and true are not numbers."""

    model_config = ConfigDict(strict=True, frozen=True)

    machine_id: str = Field(min_length=1, max_length=255)
    timestamp: Annotated[str, Field(max_length=64)] | float
    channels: list[str] | None = None
    values: Annotated[list[Row], FIRST_ERROR]  # (W, C), checked against the model after parsing


class Origin(NamedTuple):
    """The machine and time of a window whose values went into a batch's array."""

    # A named tuple, not a frozen dataclass: one per window, built 5x faster.
    machine_id: str
    timestamp: str  # RFC 3339, UTC


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a record goes to the dead-letter topic."""

    reason: Reason
    message: str
    headers: tuple[tuple[str, bytes], ...] = ()  # more headers of its dead letter


@dataclass(frozen=True)
class Group:
    """The windows of one model in a batch: that model's (G, W, C) array."""

    slot: int  # the model's index in the routes
    windows: np.ndarray  # (G, W, C) float64, in batch order
    members: np.ndarray  # (G,) their positions in Decoded.valid, ascending


@dataclass(frozen=True)
class Decoded:
    """A batch split into scoreable windows, grouped by model, and dead letters."""

    valid: list[tuple[int, Origin]]  # (position in the batch, origin), in batch order
    invalid: list[tuple[int, Invalid]]  # (position in the batch, why), in batch order
    groups: list[Group]

    @property
    def windows(self) -> np.ndarray:
        """The valid windows of a batch that one model scores: (V, W, C)."""
        (group,) = self.groups
        return group.windows

    def drop(self, problems: dict[int, Invalid]) -> Decoded:
        """The same batch with the valid windows at these positions (of `valid`) dead-lettered."""
        if not problems:
            return self
        keep = np.ones(len(self.valid), dtype=bool)
        keep[list(problems)] = False
        renumber = np.cumsum(keep) - 1  # old position in `valid` -> new one
        invalid = self.invalid + [(self.valid[j][0], why) for j, why in problems.items()]
        invalid.sort(key=lambda item: item[0])
        groups = []
        for group in self.groups:
            kept = keep[group.members]
            groups.append(Group(group.slot, group.windows[kept], renumber[group.members[kept]]))
        valid = [v for j, v in enumerate(self.valid) if keep[j]]
        return Decoded(valid, invalid, groups)


Shape = tuple[int, Sequence[str]]  # (window, channels) of a model
Router = Callable[[str], int | None]  # machine id -> the index of its model, None: no model


class WindowFields(msgspec.Struct):
    """The fast path's view of a record: its fields typed, its values left as raw JSON."""

    machine_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    timestamp: Annotated[str, msgspec.Meta(max_length=64)] | float
    values: msgspec.Raw  # checked as JSON by msgspec, read by simdjson with the poll's others
    channels: list[str] | None = None


# What a window's values hold besides brackets and commas: numbers and JSON whitespace.
NUMBER_BYTES = b"0123456789+-.eE \t\n\r"
# Brackets and braces outside `values` that the fast path takes: the pydantic parser refuses
# documents nested beyond ~250 levels, msgspec only beyond ~1000 (those go the checked way).
MAX_OTHER_NESTING = 200
_FIELDS = msgspec.json.Decoder(WindowFields)
MAX_STAMPS = 4_096  # timestamps remembered, then forgotten all at once

Fast = tuple[str, str, int, bytes]  # machine id, RFC 3339 time, model slot, raw values
Slow = tuple[str, str, int, list[list[float]]]  # the same with pydantic's rows


class Decoder:
    """Checks records against the window and channels of the model that serves their machine.

    The hot path parses each record's fields with msgspec and a whole poll's numbers with one
    simdjson parse into an array of doubles. A record it cannot vouch for (anything but W rows
    of C plain JSON numbers, a field of the wrong type, a number simdjson will not take) goes
    through the pydantic model instead: the reasons and messages stay that model's, exactly.
    """

    def __init__(self, window: int, channels: Sequence[str], max_bytes: int) -> None:
        """One model for every machine."""
        self.max_bytes = max_bytes
        self._use([(window, channels)], _first)

    @classmethod
    def routed(cls, shapes: Sequence[Shape], route: Router, max_bytes: int) -> Decoder:
        """Models by machine: `route` names the index in `shapes` of each machine's model."""
        decoder = cls.__new__(cls)
        decoder.max_bytes = max_bytes
        decoder._use(shapes, route)
        return decoder

    def _use(self, shapes: Sequence[Shape], route: Router) -> None:
        self.shapes = [(window, list(channels)) for window, channels in shapes]
        self.route = route
        # What a well-shaped window of each model has: a row length per time step.
        self._row_lengths = [[len(channels)] * window for window, channels in self.shapes]
        # ...and what is left of its values once the numbers and spaces are taken out.
        self._skeletons = [
            b"[" + b",".join([b"[" + b"," * (len(channels) - 1) + b"]"] * window) + b"]"
            for window, channels in self.shapes
        ]
        self._parser = simdjson.Parser()
        self._stamps: dict[str | float, str] = {}  # a record's timestamp -> RFC 3339

    def decode_batch(self, values: Sequence[bytes | None]) -> Decoded:
        """Every record to a row of its model's (N, W, C) array, or to a reason."""
        parsed: list[Fast | Slow | Invalid] = []
        for value in values:
            result = self._fast(value)
            parsed.append(self._check(value) if result is None else result)
        fast = _fast_ones(parsed)
        numbers = self._numbers([parsed[i][3] for i in fast])  # type: ignore[index]
        if numbers is None:  # a number simdjson will not take: find its record, check it
            for i in fast:
                if self._numbers([parsed[i][3]]) is None:  # type: ignore[index]
                    parsed[i] = self._check(values[i])
            fast = _fast_ones(parsed)
            numbers = self._numbers([parsed[i][3] for i in fast])  # type: ignore[index]
            assert numbers is not None
        return _finite(self._arrays(parsed, fast, numbers))

    def _fast(self, value: bytes | None) -> Fast | Invalid | None:
        """The record's fields and raw values, its reason, or None: the checked way decides."""
        if (unsized := size_problem(value, self.max_bytes)) is not None:
            return unsized
        try:
            fields = _FIELDS.decode(value)
        except (msgspec.DecodeError, ValueError, RecursionError):  # also bad UTF-8
            return None
        raw = bytes(fields.values)
        skeleton = raw.translate(None, NUMBER_BYTES)
        if skeleton not in self._skeletons:  # not rows of numbers, or not a model's shape
            return None
        if len(value) - len(raw) > MAX_OTHER_NESTING:  # room for deep nesting outside values
            nesting = value.count(b"[") + value.count(b"{") - skeleton.count(b"[")
            if nesting > MAX_OTHER_NESTING:
                return None
        slot = 0 if self.route is _first else self.route(fields.machine_id)
        if slot is None:
            return Invalid("no_model", _clip(f"no model serves machine {fields.machine_id!r}"))
        window, channels = self.shapes[slot]
        if fields.channels is not None and fields.channels != channels:
            return Invalid(
                "channels", _clip(f"channels {fields.channels} are not the model's {channels}")
            )
        if skeleton != self._skeletons[slot]:
            return None  # another model's shape: the checked way says which row is wrong
        timestamp = self._stamps.get(fields.timestamp)  # machines share their times
        if timestamp is None:
            timestamp = _rfc3339(fields.timestamp)
            if isinstance(timestamp, Invalid):
                return timestamp
            if len(self._stamps) >= MAX_STAMPS:
                self._stamps.clear()
            self._stamps[fields.timestamp] = timestamp
        return fields.machine_id, timestamp, slot, raw

    def _numbers(self, raws: list[bytes]) -> np.ndarray | None:
        """The numbers of these values, in order, from one parse; None if simdjson refuses."""
        if not raws:
            return np.empty(0)
        try:
            document = self._parser.parse(b"[" + b",".join(raws) + b"]")
            try:
                flat = document.as_buffer(of_type="d")
            finally:
                del document  # the parser is reused only once nothing points into it
        except (ValueError, RuntimeError, TypeError):  # a number beyond int64 or double range
            return None
        return np.frombuffer(flat, dtype=np.float64)

    def _arrays(
        self, parsed: list[Fast | Slow | Invalid], fast: list[int], numbers: np.ndarray
    ) -> Decoded:
        """Each model's windows in batch order; the fast ones' numbers in one copy per model."""
        valid: list[tuple[int, Origin]] = []
        invalid: list[tuple[int, Invalid]] = []
        members: list[list[int]] = [[] for _ in self.shapes]  # per model: positions in `valid`
        for i, result in enumerate(parsed):
            if result.__class__ is Invalid:
                invalid.append((i, result))  # type: ignore[arg-type]
            else:
                machine_id, timestamp, slot, _ = result  # type: ignore[misc]
                members[slot].append(len(valid))
                valid.append((i, Origin(machine_id, timestamp)))
        arrays = [
            np.empty((len(rows), window, len(channels)))  # (G, W, C)
            for rows, (window, channels) in zip(members, self.shapes, strict=True)
        ]
        if len(fast) == len(valid) == len(members[0]):  # the usual batch: one model, no fallback
            arrays[0][:] = numbers.reshape(arrays[0].shape)
        else:
            self._scatter(parsed, fast, numbers, arrays)
        groups = [
            Group(slot, array, np.array(rows, dtype=np.intp))
            for slot, (array, rows) in enumerate(zip(arrays, members, strict=True))
            if rows or (slot == 0 and not valid)  # no window at all: still one (0, W, C) array
        ]
        return Decoded(valid, invalid, groups)

    def _scatter(
        self,
        parsed: list[Fast | Slow | Invalid],
        fast: list[int],
        numbers: np.ndarray,
        arrays: list[np.ndarray],
    ) -> None:
        """Rows of several models, or of both paths: each record to its row of its array."""
        row_of: dict[int, int] = {}  # record -> its row in its model's array
        counts = [0] * len(arrays)
        for i, result in enumerate(parsed):
            if result.__class__ is not Invalid:
                slot = result[2]  # type: ignore[index]
                row_of[i], counts[slot] = counts[slot], counts[slot] + 1
        start = 0
        for slot, records in itertools.groupby(fast, key=lambda i: parsed[i][2]):  # type: ignore[index]
            rows = [row_of[i] for i in records]
            array = arrays[slot]
            size = len(rows) * array[0].size
            array[rows] = numbers[start : start + size].reshape(len(rows), *array.shape[1:])
            start += size
        for i, result in enumerate(parsed):
            if isinstance(result, tuple) and not isinstance(result[3], bytes):
                arrays[result[2]][row_of[i]] = result[3]

    def _check(self, value: bytes | None) -> Slow | Invalid:
        """The checked way: the pydantic model decides, and says why a record cannot be scored."""
        if (unsized := size_problem(value, self.max_bytes)) is not None:
            return unsized
        try:
            message = WindowMessage.model_validate_json(value)
        except ValidationError as exc:
            return _invalid(exc)
        slot = 0 if self.route is _first else self.route(message.machine_id)
        if slot is None:
            return Invalid("no_model", _clip(f"no model serves machine {message.machine_id!r}"))
        window, channels = self.shapes[slot]
        if message.channels is not None and message.channels != channels:
            return Invalid(
                "channels",
                _clip(f"channels {message.channels} are not the model's {channels}"),
            )
        rows = message.values
        # Checked before copying: numpy would broadcast a row of one number, or one row.
        if list(map(len, rows)) != self._row_lengths[slot]:
            return Invalid("shape", _shape_problem(rows, window, len(channels)))
        timestamp = _rfc3339(message.timestamp)
        if isinstance(timestamp, Invalid):
            return timestamp
        return message.machine_id, timestamp, slot, rows


def _fast_ones(parsed: list[Fast | Slow | Invalid]) -> list[int]:
    """The records whose numbers simdjson reads, by model (their numbers then lie together)."""
    fast = [i for i, p in enumerate(parsed) if isinstance(p, tuple) and isinstance(p[3], bytes)]
    if any(parsed[i][2] for i in fast):  # type: ignore[index]
        fast.sort(key=lambda i: parsed[i][2])  # type: ignore[index]
    return fast


def _rfc3339(stamp: str | float) -> str | Invalid:
    try:
        return to_rfc3339(stamp if isinstance(stamp, str) else repr(stamp))
    except DataError as exc:  # it says which: not a time, out of range, milliseconds?
        return Invalid("schema", _clip(str(exc)))


def _first(machine: str) -> int:
    return 0


def _finite(decoded: Decoded) -> Decoded:
    """Windows holding NaN or infinity leave the batch as dead letters."""
    problems = {}
    for group in decoded.groups:
        finite = np.isfinite(group.windows).all(axis=(1, 2))  # (G,)
        if not finite.all():
            for j in group.members[~finite].tolist():
                problems[j] = Invalid("non_finite", "values hold NaN or infinity")
    return decoded.drop(problems)


def _shape_problem(rows: list[list[float]], window: int, channels: int) -> str:
    expected = f"the model needs {window} rows of {channels} numbers"
    if len(rows) != window:
        return f"{len(rows)} rows, {expected}"
    bad = next(i for i, row in enumerate(rows) if len(row) != channels)
    return f"row {bad} has {len(rows[bad])} numbers, {expected}"


def _invalid(exc: ValidationError) -> Invalid:
    """The first pydantic error as a reason and one line, without echoing the input."""
    error = exc.errors(include_url=False, include_input=False)[0]
    if error["type"] == "json_invalid":
        return Invalid("invalid_json", _clip(error["msg"]))
    loc = error["loc"]
    if not loc:
        return Invalid("schema", "expected a JSON object")
    if loc[0] == "timestamp":
        return Invalid("schema", "timestamp: expected RFC 3339 text or epoch seconds")
    return Invalid("schema", _clip(".".join(map(str, loc)) + ": " + error["msg"]))


def size_problem(value: bytes | None, max_bytes: int) -> Invalid | None:
    """The checks every input format makes before parsing: an empty or an oversized value."""
    if not value:
        return Invalid("invalid_json", "empty value, expected a JSON object")
    if len(value) > max_bytes:
        return Invalid("too_large", f"{len(value)} bytes, the limit is {max_bytes}")
    return None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
