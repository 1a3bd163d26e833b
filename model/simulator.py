"""A small pump-line simulator: normal operation and typical faults, for the demo and tests.

The channels and their scales follow a water-circulation test bed (1 sample per second):
two vibration RMS values, motor current, pressure, motor and fluid temperature, supply
voltage and volume flow. The motor warms up slowly after start: normal, yet unseen by a
model fitted on the first minutes, just as on a real line.
"""

from __future__ import annotations

from collections.abc import Callable
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


# --- a plant over weeks: what a real line does to a detector, labelled

Scenario = Literal["normal", "bearing_wear", "stuck_flow", "valve_closing"]
SCENARIOS: tuple[Scenario, ...] = ("normal", "bearing_wear", "stuck_flow", "valve_closing")
DAY = 86400.0


@dataclass(frozen=True)
class PlantRun:
    """Weeks of one machine, a row every `interval` seconds; labels mark faults only."""

    run: SimulatedRun
    interval: float
    nuisances: dict[str, tuple[int, int]]  # name -> rows [start, end) where it acts
    fault: tuple[int, int] | None  # rows [start, end) of the labelled fault


def simulate_plant(
    days: float = 14.0,
    *,
    seed: int = 0,
    scenario: Scenario = "normal",
    interval: float = 60.0,
    start: datetime = datetime(2026, 1, 5, 0, 0, tzinfo=UTC),
) -> PlantRun:
    """A pump line for `days`, with every nuisance a plant has and, by `scenario`, a fault.

    Nuisances (unlabelled: none may open an episode): daily cycles on both temperatures (the
    hall's air) and a slow ambient drift (+3 degrees over two weeks); normal wear (vibration
    up 3 noise widths over two weeks, far outside the training days); day and night load (flow,
    current, pressure follow it, ramped over 10 minutes) and a change of the night setpoint on
    day 5 (inside the loads seen in the first two days); a cold start at row 0 and a restart
    after four hours of maintenance on day 6 (no readings while stopped, then the motor warms
    up again); short dropouts of the pressure reading every 6 hours (filled) and a two-hour
    outage of the thermocouple on day 8 (windows skipped). Faults (labelled, from day 9):
    `bearing_wear` creeps over three days (vibration up 10 noise widths, motor temperature up
    6 degrees), `stuck_flow` freezes the flow meter for 6 hours, `valve_closing` closes the
    inlet valve partly for 2 hours and then opens it again (the recovery).
    Train on the first two days: they hold the cycles, both loads and a cold start.
    """
    rng = np.random.default_rng(seed)
    rows = int(days * DAY / interval)
    t = np.arange(rows, dtype=np.float64) * interval  # seconds from start
    values = BASE + NOISE * rng.standard_normal((rows, 8))
    hour = (t % DAY) / 3600.0
    daily = np.sin(2 * np.pi * (hour - 9.0) / 24.0)  # warmest mid-afternoon
    drift = 3.0 * t / (14 * DAY)
    values[:, TEMP] += 1.2 * daily + drift
    values[:, THERMO] += 0.8 * daily + 0.7 * drift
    wear = t / (14 * DAY)  # normal wear: vibration up 3 noise widths in two weeks
    values[:, ACC1] += 3 * NOISE[ACC1] * wear
    values[:, ACC2] += 2 * NOISE[ACC2] * wear
    night = np.where(t < 5 * DAY, 0.85, 0.9)  # the night setpoint changes on day 5
    load = _ramped(np.where((hour >= 6) & (hour < 22), 1.0, night), interval, 600.0)
    values[:, FLOW] = values[:, FLOW] - BASE[FLOW] + BASE[FLOW] * load
    values[:, CURRENT] = values[:, CURRENT] - BASE[CURRENT] + BASE[CURRENT] * load
    values[:, PRESSURE] += 0.01 * (load - 1.0)
    values[:, ACC1] += 0.002 * (load - 1.0)
    nuisances: dict[str, tuple[int, int]] = {}
    row = lambda seconds: min(rows, int(seconds / interval))  # noqa: E731
    values[:, TEMP] -= 4.0 * np.exp(-t / 1800.0)  # the cold start: warming over ~30 minutes
    stop, restart = row(6 * DAY + 10 * 3600), row(6 * DAY + 14 * 3600)
    if stop < rows:
        nuisances["maintenance stop and restart"] = (stop, restart)
        values[stop:restart] = np.nan
        since = t[restart:] - t[min(restart, rows - 1)]
        values[restart:, TEMP] -= 4.0 * np.exp(-since / 1800.0)
    for begin in range(row(3 * 3600), rows, max(1, row(6 * 3600))):
        values[begin : begin + 3, PRESSURE] = np.nan  # three readings lost: interpolated
    outage = row(8 * DAY + 3 * 3600)
    if outage < rows:
        nuisances["thermocouple outage"] = (outage, row(8 * DAY + 5 * 3600))
        values[outage : row(8 * DAY + 5 * 3600), THERMO] = np.nan
    nuisances["night setpoint change"] = (row(5 * DAY), rows)
    labels = np.zeros(rows, dtype=np.int8)
    fault = None
    if scenario != "normal":
        fault = _plant_fault(values, t, scenario, row)
        if fault[0] < rows:
            labels[fault[0] : fault[1]] = 1
    stamps = [format_time(start + timedelta(seconds=float(s))) for s in t]
    return PlantRun(SimulatedRun(stamps, values, labels), interval, nuisances, fault)


def _plant_fault(
    values: np.ndarray, t: np.ndarray, scenario: Scenario, row: Callable[[float], int]
) -> tuple[int, int]:
    begin = row(9 * DAY + 12 * 3600)
    if scenario == "bearing_wear":  # creeps for three days, then stays (until repaired)
        end = len(values)
        creep = np.clip((t[begin:] - t[begin]) / (3 * DAY), 0.0, 1.0)
        values[begin:, ACC1] += 10 * NOISE[ACC1] * creep
        values[begin:, ACC2] += 5 * NOISE[ACC2] * creep
        values[begin:, TEMP] += 6.0 * creep
        return begin, end
    if scenario == "stuck_flow":
        end = row(9 * DAY + 18 * 3600)
        values[begin:end, FLOW] = values[begin - 1, FLOW]
        return begin, end
    end = row(9 * DAY + 14 * 3600)  # valve_closing: two hours, then opened again
    values[begin:end, FLOW] -= 1.6
    values[begin:end, PRESSURE] += 0.02
    values[begin:end, CURRENT] -= 0.06
    return begin, end


def _ramped(level: np.ndarray, interval: float, seconds: float) -> np.ndarray:
    """Steps of `level` turned into ramps over `seconds` (a moving average)."""
    k = max(1, int(round(seconds / interval)))
    padded = np.concatenate([np.full(k - 1, level[0]), level])
    return np.convolve(padded, np.ones(k) / k, mode="valid")
