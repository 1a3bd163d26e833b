"""The input contract: each record's JSON window becomes a row of the batch array, or a reason."""

# Reasons are stable codes, sent as the `faultwatch.error.reason` header of a dead letter:
#
#   too_large     the value is longer than FAULTWATCH_MAX_RECORD_BYTES (checked before parsing)
#   invalid_json  not UTF-8 JSON text (also: an empty value, nesting deeper than parsers allow)
#   schema        not an object with a machine_id, a timestamp (RFC 3339 or epoch seconds,
#                 within years 1-9999) and values made of numbers
#   channels      `channels` is given and is not the model's channel list, in its order
#   shape         `values` is not window rows of one number per channel
#   non_finite    a value is NaN or infinite (NaN/Infinity tokens, numbers beyond float range);
#                 the pipeline adds windows whose values overflow the model (score not finite)
#   key_mismatch  the record's key is present and is not its machine_id (the pipeline checks:
#                 the window may sit in another partition than its machine's episode state)
#
# Fields the contract does not name are ignored, so producers may add their own.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.errors import DataError
from model.recording import to_rfc3339

Reason = Literal[
    "too_large", "invalid_json", "schema", "channels", "shape", "non_finite", "key_mismatch"
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


@dataclass(frozen=True)
class Decoded:
    """A batch split into scoreable windows and dead letters, by position in the batch."""

    windows: np.ndarray  # (V, W, C) float64, the valid records in batch order
    valid: list[tuple[int, Origin]]
    invalid: list[tuple[int, Invalid]]


class Decoder:
    """Checks records against the model's window and channels."""

    def __init__(self, window: int, channels: Sequence[str], max_bytes: int) -> None:
        self.window = window
        self.channels = list(channels)
        self.max_bytes = max_bytes
        self._row_lengths = [len(self.channels)] * window  # what a well-shaped window has

    def decode_batch(self, values: Sequence[bytes | None]) -> Decoded:
        """One pydantic parse per record, whose rows go straight into the batch's array."""
        # A record's nested lists die as soon as they are copied: kept for the whole batch,
        # they would outlive the collector's young generations and trigger full passes over
        # every object of the process (torch's and kafka's included): more than the parse.
        windows = np.empty((len(values), self.window, len(self.channels)))  # (N, W, C)
        valid: list[tuple[int, Origin]] = []
        invalid: list[tuple[int, Invalid]] = []
        for i, value in enumerate(values):
            result = self._check(value)
            if isinstance(result, Invalid):
                invalid.append((i, result))
                continue
            message, timestamp = result
            windows[len(valid)] = message.values
            valid.append((i, Origin(message.machine_id, timestamp)))
        windows = windows[: len(valid)]  # (V, W, C)
        finite = np.isfinite(windows).all(axis=(1, 2))  # (V,)
        if finite.all():
            return Decoded(windows, valid, invalid)
        for j in np.flatnonzero(~finite):
            invalid.append((valid[j][0], Invalid("non_finite", "values hold NaN or infinity")))
        invalid.sort(key=lambda item: item[0])
        return Decoded(windows[finite], [valid[j] for j in np.flatnonzero(finite)], invalid)

    def _check(self, value: bytes | None) -> tuple[WindowMessage, str] | Invalid:
        """The parsed message and its RFC 3339 timestamp, or the reason it cannot be scored."""
        if not value:
            return Invalid("invalid_json", "empty value, expected a JSON object")
        if len(value) > self.max_bytes:
            return Invalid("too_large", f"{len(value)} bytes, the limit is {self.max_bytes}")
        try:
            message = WindowMessage.model_validate_json(value)
        except ValidationError as exc:
            return _invalid(exc)
        if message.channels is not None and message.channels != self.channels:
            return Invalid(
                "channels",
                _clip(f"channels {message.channels} are not the model's {self.channels}"),
            )
        rows = message.values
        # Checked before copying: numpy would broadcast a row of one number, or one row.
        if list(map(len, rows)) != self._row_lengths:
            return Invalid("shape", self._shape_problem(rows))
        stamp = message.timestamp
        try:
            timestamp = to_rfc3339(stamp if isinstance(stamp, str) else repr(stamp))
        except DataError as exc:  # it says which: not a time, out of range, milliseconds?
            return Invalid("schema", _clip(str(exc)))
        return message, timestamp

    def _shape_problem(self, rows: list[list[float]]) -> str:
        expected = f"the model needs {self.window} rows of {len(self.channels)} numbers"
        if len(rows) != self.window:
            return f"{len(rows)} rows, {expected}"
        bad = next(i for i, row in enumerate(rows) if len(row) != len(self.channels))
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
