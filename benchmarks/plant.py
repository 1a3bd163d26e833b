"""The simulated plant (model/simulator.py, simulate_plant): nuisances must open no episode,
faults must, and a fault that is undone must close.

One model is trained on the first two days of a normal machine (a row a minute: daily cycles,
day and night load, a cold start), as a plant trains one model per machine type. It then
serves other machines for 14 days each, scored from day 2 through the episode rules
(model.episodes.recording_episodes, what the worker and `score --episodes` run), with the
product's defaults: 3 normal machines (every nuisance: ambient drift, cycles, a setpoint
change, a maintenance stop and restart, dropouts, an outage) and one machine per fault
(the same nuisances, plus bearing wear creeping over three days, a stuck flow meter, a valve
closed for two hours).
- false episodes: opened on an unlabelled row, per machine-week of scored time;
- caught: an episode opens inside the labelled fault; delay from its first row;
- recovery: from the fault's last row to the `closed` of the episode open then (negative:
  it closed before the fault ended, the settle rule having taken a steady fault as normal).

    .venv/bin/python benchmarks/plant.py            # about a minute
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from model.episodes import EpisodeConfig, EpisodeRow, scored_episodes  # noqa: E402
from model.recording import to_rfc3339  # noqa: E402
from model.scoring import Scorer  # noqa: E402
from model.simulator import DAY, PlantRun, Scenario, simulate_plant  # noqa: E402
from model.training import TrainConfig, train  # noqa: E402

DAYS, TRAIN_DAYS = 14.0, 2.0
MACHINES: list[tuple[str, Scenario, int]] = [
    ("normal-1", "normal", 1),
    ("normal-2", "normal", 2),
    ("normal-3", "normal", 3),
    ("bearing-wear", "bearing_wear", 4),
    ("stuck-flow", "stuck_flow", 5),
    ("valve-closed-2h", "valve_closing", 6),
]


@dataclass
class PlantResult:
    machine: str
    scenario: str
    weeks: float  # scored machine-weeks
    episodes: int
    false: int
    caught: bool | None  # None: no fault
    delay: float | None  # seconds
    recovery: float | None  # seconds from the fault's last row to `closed`; inf: never
    detector: str


def plant_model(train_config: TrainConfig | None = None) -> Scorer:
    """The model of the machine type: two days of a normal machine."""
    run = simulate_plant(DAYS, seed=0)
    rows = int(TRAIN_DAYS * DAY / run.interval)
    recording = run.run.recording(Path("plant-0.csv"))
    config = replace(train_config or TrainConfig(), train_rows=rows)
    return Scorer(train([recording], config).artifact)


def episodes_of(plant: PlantRun, scorer: Scorer, config: EpisodeConfig, name: str):
    recording = plant.run.recording(Path(f"{name}.csv"))
    first = int(TRAIN_DAYS * DAY / plant.interval)
    end_rows, windows, _ = recording.windows(
        scorer.window, max_gap=scorer.artifact.preprocess.max_gap, from_row=first
    )
    stamps = [to_rfc3339(recording.timestamps[r]) for r in end_rows]
    found = scored_episodes(scorer, name, end_rows, stamps, scorer.score(windows), config)
    return found, first


def judge(
    name: str, scenario: str, plant: PlantRun, found: list[EpisodeRow], first: int
) -> PlantResult:
    labels = plant.run.labels.astype(bool)
    rows = len(labels)
    weeks = (rows - first) * plant.interval / (7 * DAY)
    false = [e for e in found if not labels[e.opened_row]]
    caught = delay = recovery = None
    detector = ""
    if plant.fault is not None:
        a, b = plant.fault
        inside = [e for e in found if a <= e.opened_row < b]
        caught = bool(inside)
        if inside:
            delay = (inside[0].opened_row - a) * plant.interval
            detector = inside[0].detector
        if b < rows:  # undone before the end: how long until the episode closed
            open_then = [e for e in found if e.opened_row < b]
            if open_then:  # negative: it closed while the fault lasted (the settle rule)
                closed = open_then[-1].closed_row
                recovery = float("inf") if closed is None else (closed - b) * plant.interval
    return PlantResult(
        name, scenario, weeks, len(found), len(false), caught, delay, recovery, detector
    )


def run_plant(
    config: EpisodeConfig | None = None, train_config: TrainConfig | None = None
) -> list[PlantResult]:
    config = config or EpisodeConfig()
    scorer = plant_model(train_config)
    results = []
    for name, scenario, seed in MACHINES:
        plant = simulate_plant(DAYS, seed=seed, scenario=scenario)
        found, first = episodes_of(plant, scorer, config, name)
        results.append(judge(name, scenario, plant, found, first))
    return results


def table(results: list[PlantResult]) -> str:
    lines = [
        "| simulated machine | scored weeks | episodes | false episodes | fault caught "
        "| delay | recovery (fault end to closed) | detector at the peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        caught = "-" if r.caught is None else ("yes" if r.caught else "**no**")
        delay = "-" if r.delay is None else f"{r.delay / 3600:.1f} h"
        recovery = "-"
        if r.recovery is not None:
            recovery = "never" if r.recovery == float("inf") else f"{r.recovery / 60:.0f} min"
        lines.append(
            f"| {r.machine} | {r.weeks:.1f} | {r.episodes} | {r.false} | {caught} | {delay} "
            f"| {recovery} | {r.detector or '-'} |"
        )
    weeks = sum(r.weeks for r in results)
    false = sum(r.false for r in results)
    faults = [r for r in results if r.caught is not None]
    delays = [r.delay for r in faults if r.delay is not None]
    median = f"{statistics.median(delays) / 3600:.1f} h" if delays else "-"
    worst = max(results, key=lambda r: r.false)
    lines.append(
        f"| **all** | {weeks:.1f} | {sum(r.episodes for r in results)} | **{false / weeks:.2f} "
        f"per machine-week** (most: {worst.machine}, {worst.false}) | "
        f"**{sum(bool(r.caught) for r in faults)}/{len(faults)}** | median {median} | | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    started = time.monotonic()
    print(table(run_plant()))
    print(f"\n{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
