"""A small pump-line simulator: normal operation and typical faults, for the demo and tests.

The channels and their scales follow a water-circulation test bed (1 sample per second):
two vibration RMS values, motor current, pressure, motor and fluid temperature, supply
voltage and volume flow. The motor warms up slowly after start: normal, yet unseen by a
model fitted on the first minutes, just as on a real line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np

from model.recording import Recording, format_time

CHANNELS = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
]
ACC1, ACC2, CURRENT, PRESSURE, TEMP, THERMO, VOLTAGE, FLOW = range(8)

Fault = Literal["valve_closing", "rotor_imbalance", "leak", "stuck_sensor", "dead_sensor"]
FAULTS: tuple[Fault, ...] = (
    "valve_closing",
    "rotor_imbalance",
    "leak",
    "stuck_sensor",
    "dead_sensor",
)
BASE = np.array([0.027, 0.040, 1.0, 0.060, 74.0, 25.8, 231.0, 32.0])
NOISE = np.array([0.0012, 0.0012, 0.12, 0.006, 0.15, 0.01, 4.0, 0.35])


@dataclass(frozen=True)
class SimulatedRun:
    timestamps: list[str]  # RFC 3339, one per second
    values: np.ndarray  # (N, 8)
    labels: np.ndarray  # (N,) 1 while the fault is present
    channels: tuple[str, ...] = tuple(CHANNELS)

    def recording(self, path: Path) -> Recording:
        """As if read from a CSV at `path` (named in messages; nothing is written)."""
        return Recording(path, self.timestamps, list(self.channels), self.values)


def simulate(
    rows: int,
    *,
    seed: int = 0,
    fault: Fault | None = None,
    fault_start: int | None = None,
    fault_rows: int | None = None,
    start: datetime = datetime(2026, 1, 5, 6, 0, tzinfo=UTC),
) -> SimulatedRun:
    """One machine's run; a fault (if any) from `fault_start` for `fault_rows` samples."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    values = BASE + NOISE * rng.standard_normal((rows, 8))
    values[:, TEMP] -= 2.5 * np.exp(-t / 900.0)  # motor warm-up over ~15 minutes
    values[:, THERMO] += 0.4 * t / 3600.0  # fluid warms slowly
    values[:, FLOW] += 0.3 * np.sin(2 * np.pi * t / 300.0)  # demand cycle
    labels = np.zeros(rows, dtype=np.int8)
    if fault is not None:
        begin = rows // 2 if fault_start is None else fault_start
        end = rows if fault_rows is None else min(rows, begin + fault_rows)
        _inject(values, fault, begin, end, rng)
        labels[begin:end] = 1
    stamps = [format_time(start + timedelta(seconds=int(i))) for i in t]
    return SimulatedRun(stamps, values, labels)


def _inject(
    values: np.ndarray, fault: Fault, begin: int, end: int, rng: np.random.Generator
) -> None:
    part = values[begin:end]  # a view: edits land in `values`
    n = len(part)
    ramp = np.minimum(1.0, np.arange(n) / 30.0)  # faults set in over ~30 s
    if fault == "valve_closing":  # inlet valve partly closed: less flow, suction pressure up
        part[:, FLOW] -= 1.6 * ramp
        part[:, PRESSURE] += 0.02 * ramp
        part[:, CURRENT] -= 0.06 * ramp
    elif fault == "rotor_imbalance":  # vibration at the rotation frequency, a little more load
        wobble = 1 + 0.3 * np.sin(np.arange(n) * 0.9)
        part[:, ACC1] += 0.03 * ramp * wobble
        part[:, ACC2] += 0.02 * ramp * wobble
        part[:, CURRENT] += 0.08 * ramp
    elif fault == "leak":  # flow and pressure sink as the leak grows
        growth = np.linspace(0.0, 1.0, n)
        part[:, FLOW] -= 4.0 * growth
        part[:, PRESSURE] -= 0.025 * growth
    elif fault == "stuck_sensor":  # the flow meter freezes at its last reading
        part[:, FLOW] = part[0, FLOW]
    elif fault == "dead_sensor":  # the pressure transmitter loses power
        part[:, PRESSURE] = 0.0 + 0.0005 * rng.standard_normal(n)


def write_csv(run: SimulatedRun, path: str | Path, *, with_labels: bool = True) -> Path:
    """The DATA format (`;` separated, time first) that `train`, `score` and `replay` read."""
    path = Path(path)
    header = ["datetime", *run.channels] + (["anomaly"] if with_labels else [])
    with path.open("w") as out:
        out.write(";".join(header) + "\n")
        for stamp, row, label in zip(run.timestamps, run.values, run.labels, strict=True):
            cells = [stamp, *(f"{v:.6g}" for v in row)] + ([str(label)] if with_labels else [])
            out.write(";".join(cells) + "\n")
    return path
