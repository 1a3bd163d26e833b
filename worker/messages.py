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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import numpy as np
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


@dataclass(frozen=True, slots=True)
class Origin:
    """The machine and time of a window whose values went into a batch's array."""

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


class Decoder:
    """Checks records against the window and channels of the model that serves their machine."""

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

    def decode_batch(self, values: Sequence[bytes | None]) -> Decoded:
        """One pydantic parse per record, whose rows go straight into its model's array."""
        # A record's nested lists die as soon as they are copied: kept for the whole batch,
        # they would outlive the collector's young generations and trigger full passes over
        # every object of the process (torch's and kafka's included): more than the parse.
        if self.route is _first:  # one model for every machine: the hot path, no grouping
            return self._decode_one(values)
        n = len(values)
        arrays: list[np.ndarray | None] = [None] * len(self.shapes)  # (N, W, C) per model
        members: list[list[int]] = [[] for _ in self.shapes]
        valid: list[tuple[int, Origin]] = []
        invalid: list[tuple[int, Invalid]] = []
        for i, value in enumerate(values):
            result = self._check(value)
            if isinstance(result, Invalid):
                invalid.append((i, result))
                continue
            message, timestamp, slot = result
            rows, array = members[slot], arrays[slot]
            if array is None:
                window, channels = self.shapes[slot]
                array = arrays[slot] = np.empty((n, window, len(channels)))
            array[len(rows)] = message.values
            rows.append(len(valid))
            valid.append((i, Origin(message.machine_id, timestamp)))
        groups = [
            Group(slot, array[: len(rows)], np.array(rows, dtype=np.intp))
            for slot, (array, rows) in enumerate(zip(arrays, members, strict=True))
            if array is not None
        ]
        return _finite(Decoded(valid, invalid, groups))

    def _decode_one(self, values: Sequence[bytes | None]) -> Decoded:
        window, channels = self.shapes[0]
        windows = np.empty((len(values), window, len(channels)))  # (N, W, C)
        valid: list[tuple[int, Origin]] = []
        invalid: list[tuple[int, Invalid]] = []
        for i, value in enumerate(values):
            result = self._check(value)
            if isinstance(result, Invalid):
                invalid.append((i, result))
                continue
            message, timestamp, _ = result
            windows[len(valid)] = message.values
            valid.append((i, Origin(message.machine_id, timestamp)))
        members = np.arange(len(valid), dtype=np.intp)
        return _finite(Decoded(valid, invalid, [Group(0, windows[: len(valid)], members)]))

    def _check(self, value: bytes | None) -> tuple[WindowMessage, str, int] | Invalid:
        """The parsed message, its RFC 3339 timestamp and its model, or why it cannot be scored."""
        if not value:
            return Invalid("invalid_json", "empty value, expected a JSON object")
        if len(value) > self.max_bytes:
            return Invalid("too_large", f"{len(value)} bytes, the limit is {self.max_bytes}")
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
        stamp = message.timestamp
        try:
            timestamp = to_rfc3339(stamp if isinstance(stamp, str) else repr(stamp))
        except DataError as exc:  # it says which: not a time, out of range, milliseconds?
            return Invalid("schema", _clip(str(exc)))
        return message, timestamp, slot


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


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
