"""Samples and tags: a poll's records become arrays of readings, or a reason per record.

samples: {"machine_id", "timestamp", "values": {channel: number | null}}, one machine's
         channels at one time; null or absent: no reading of that channel.
tags:    {"machine_id", "channel", "timestamp", "value": number | null, "quality"}, one
         channel at one time; quality is "good" unless given (case does not matter), and a
         reading of another quality, or a null value, is a missing value.

Channels are matched by name against the model of the record's machine; others are ignored
and counted (`extra`). Reasons (worker/inputs/windows.py): too_large, invalid_json, schema (also a
timestamp that is no time), non_finite (a number beyond float range), key_mismatch (a key
that is not the machine_id: the machine's readings must share its partition), no_model.
`late` and `future` are the assembler's. Fields the contract does not name are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec
import numpy as np

from model.errors import DataError
from model.recording import parse_time
from worker.inputs.windows import MAX_MESSAGE, Invalid, Router, size_problem

Format = Literal["samples", "tags"]
FORMATS: tuple[Format, ...] = ("samples", "tags")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICRO = timedelta(microseconds=1)
FIRST = -62_135_596_800  # 0001-01-01T00:00:00Z in epoch seconds
LAST = 253_402_300_799  # 9999-12-31T23:59:59Z

MachineId = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Timestamp = Annotated[str, msgspec.Meta(max_length=64)] | float


class Sample(msgspec.Struct, frozen=True):
    machine_id: MachineId
    timestamp: Timestamp
    values: dict[str, float | None]


class Tag(msgspec.Struct, frozen=True):
    machine_id: MachineId
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    timestamp: Timestamp
    value: float | None
    quality: str = "good"


@dataclass(frozen=True)
class Readings:
    """One poll's readings, in batch order: one entry per (record, channel) read."""

    record: np.ndarray  # (R,) intp, the record's position in the batch
    machine: np.ndarray  # (R,) intp, index in `machines`
    channel: np.ndarray  # (R,) intp, index in the channels of the machine's model
    time: np.ndarray  # (R,) int64, microseconds since the epoch
    value: np.ndarray  # (R,) float64, NaN when not good
    good: np.ndarray  # (R,) bool
    machines: list[str]  # the batch's machines, by first appearance
    slots: list[int]  # each machine's model (its index in the routes)

    def __len__(self) -> int:
        return len(self.record)

    def take(self, mask: np.ndarray) -> Readings:
        """Some of the readings (a boolean mask), with the same machines."""
        return Readings(
            self.record[mask],
            self.machine[mask],
            self.channel[mask],
            self.time[mask],
            self.value[mask],
            self.good[mask],
            self.machines,
            self.slots,
        )


@dataclass(frozen=True)
class DecodedReadings:
    """A batch's readings, and the records that go to the dead-letter topic."""

    readings: Readings
    invalid: list[tuple[int, Invalid]]  # (position in the batch, why), in batch order
    extra: int  # readings of channels no model of their machine has: ignored


def _first(machine: str) -> int:
    return 0


class ReadingDecoder:
    """Turns samples or tags records into Readings against their machines' models' channels."""

    def __init__(
        self,
        form: Format,
        channels: Sequence[Sequence[str]],
        max_bytes: int,
        route: Router = _first,
    ) -> None:
        """`channels[slot]`: the channels of model `slot`; `route`: machine id -> its slot."""
        self.form = form
        self.max_bytes = max_bytes
        self.route = route
        self.index = [{name: i for i, name in enumerate(names)} for names in channels]
        self._decoder = msgspec.json.Decoder(Sample if form == "samples" else Tag)

    def decode_batch(
        self, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> DecodedReadings:
        """One msgspec parse per record; readings appended to plain lists, one array each."""
        record, machine, channel, time, value, good = [], [], [], [], [], []
        machines: dict[str, int] = {}
        slots: list[int] = []
        invalid: list[tuple[int, Invalid]] = []
        extra = 0
        stamps: dict[str, int] = {}  # records of one poll often share a timestamp
        samples = self.form == "samples"
        for i, raw in enumerate(values):
            message = self._parse(raw)
            if isinstance(message, Invalid):
                invalid.append((i, message))
                continue
            name = message.machine_id
            key = keys[i] if keys is not None else None
            if key is not None and key != name.encode():
                why = f"key {key[:100]!r} is not the machine_id {name[:100]!r}"
                invalid.append((i, Invalid("key_mismatch", why)))
                continue
            m = machines.get(name)
            if m is None:
                slot = self.route(name)
                if slot is None:
                    why = _clip(f"no model serves machine {name!r}")
                    invalid.append((i, Invalid("no_model", why)))
                    continue
                m = machines[name] = len(slots)
                slots.append(slot)
            at = _micros(message.timestamp, stamps)
            if isinstance(at, Invalid):
                invalid.append((i, at))
                continue
            index = self.index[slots[m]]
            if samples:
                for channel_name, reading in message.values.items():
                    c = index.get(channel_name)
                    if c is None:
                        extra += 1
                    elif reading is not None:
                        record.append(i)
                        machine.append(m)
                        channel.append(c)
                        time.append(at)
                        value.append(reading)
                        good.append(True)
                continue
            c = index.get(message.channel)
            if c is None:
                extra += 1
                continue
            ok = message.value is not None and message.quality.lower() == "good"
            record.append(i)
            machine.append(m)
            channel.append(c)
            time.append(at)
            value.append(message.value if ok else math.nan)
            good.append(ok)
        readings = Readings(
            np.array(record, dtype=np.intp),
            np.array(machine, dtype=np.intp),
            np.array(channel, dtype=np.intp),
            np.array(time, dtype=np.int64),
            np.array(value, dtype=np.float64),
            np.array(good, dtype=bool),
            list(machines),
            slots,
        )
        return DecodedReadings(readings, invalid, extra)

    def _parse(self, raw: bytes | None) -> Sample | Tag | Invalid:
        if (unsized := size_problem(raw, self.max_bytes)) is not None:
            return unsized
        try:
            return self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            text = str(exc)
            if text.startswith("Number out of range"):
                return Invalid("non_finite", _clip(text))
            return Invalid("schema", _clip(text))
        except msgspec.DecodeError as exc:
            return Invalid("invalid_json", _clip(str(exc)))


def _micros(stamp: str | float, seen: dict[str, int]) -> int | Invalid:
    """A timestamp (RFC 3339 text or epoch seconds) as integer microseconds since the epoch."""
    if isinstance(stamp, float):
        if math.isfinite(stamp) and FIRST <= stamp <= LAST:
            return round(stamp * 1_000_000)
        stamp = repr(stamp)  # parse_time names the problem (milliseconds?)
    at = seen.get(stamp)
    if at is not None:
        return at
    try:
        at = (parse_time(stamp) - EPOCH) // MICRO
    except DataError as exc:
        return Invalid("schema", _clip(str(exc)))
    seen[stamp] = at
    return at


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
