"""NAB (six real single-sensor streams, hourly to 5-minute rows): the standard-profile score
per file, with episodes as detections, through the product's own train, Scorer and episode
rules.

Protocol (../shared/data/nab/README.md, NAB's own): per file, train on the first 15 % of the
rows (the probationary period), score every later row by the window ending at it, run the
windows through the episode rules (model.episodes.recording_episodes, what the worker and
`score --episodes` run) and take each episode's `opened_row` as a detection. NAB's standard
profile (A_TP = 1, A_FP = 0.11, A_FN = 1): in each labelled window only the earliest detection
counts, weighted by the scaled sigmoid of its position (full weight at the window's start); a
window without one costs A_FN; each detection outside the windows costs A_FP times the
scaled sigmoid of its distance past the previous window's end (relative to that window's
length; before the first window: the full A_FP). Per file, normalised: 0 = never fires,
100 = perfect. Detections in the probationary period are not counted.

    .venv/bin/python benchmarks/nab.py            # six files, about a minute
The NAB folder is $FAULTWATCH_NAB_DIR, else ../shared/data/nab beside the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from evaluation import data_dir  # noqa: E402

from model.episodes import EpisodeConfig, scored_episodes  # noqa: E402
from model.recording import Recording, parse_time, read_recording, to_rfc3339  # noqa: E402
from model.scoring import Scorer  # noqa: E402
from model.training import TrainConfig, train  # noqa: E402

PROBATION = 0.15
A_TP, A_FP, A_FN = 1.0, 0.11, 1.0  # NAB's standard profile
NAB_WHERE = "see ../shared/data/nab/README.md and set FAULTWATCH_NAB_DIR"


def scaled_sigmoid(position: float) -> float:
    """NAB's weight of a detection at a relative position (-1: a window's start, 0: its end,
    > 0: past it in units of its length); -1 from 3 lengths past a window."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def nab_score(detections: list[int], windows: list[tuple[int, int]], rows: int) -> float:
    """The normalised standard-profile score of detection rows against windows (row ranges,
    inclusive, in time order) over a file of `rows` rows; probation already left out."""
    raw = 0.0
    first_in: dict[int, int] = {}
    for d in sorted(detections):
        inside = [k for k, (a, b) in enumerate(windows) if a <= d <= b]
        if inside:
            first_in.setdefault(inside[0], d)
            continue
        before = [(a, b) for a, b in windows if b < d]
        if not before:
            raw -= A_FP  # before the first window: the full weight
            continue
        a, b = before[-1]
        width = b - a + 1
        raw += A_FP * scaled_sigmoid((d - b) / max(width - 1, 1))
    top = scaled_sigmoid(-1.0)
    for k, (a, b) in enumerate(windows):
        if k in first_in:
            width = b - a + 1
            raw += A_TP * scaled_sigmoid(-(b - first_in[k] + 1) / width) / top
        else:
            raw -= A_FN
    null, perfect = -A_FN * len(windows), A_TP * len(windows)
    return 100.0 * (raw - null) / (perfect - null) if windows else 0.0


@dataclass
class NabFile:
    name: str
    rows: int
    interval: float  # seconds
    windows: int
    episodes: int
    inside: int  # episodes opening inside a labelled window
    caught: int  # windows with a detection
    score: float


def nab_dir() -> Path:
    path = data_dir("FAULTWATCH_NAB_DIR", "nab")
    if not (path / "windows.json").is_file():
        sys.exit(f"bench: NAB data not found at {path}: {NAB_WHERE}")
    return path


def window_rows(recording: Recording, limits: list[list[str]]) -> list[tuple[int, int]]:
    """Labelled windows as inclusive row ranges (NAB scores files in row order)."""
    times = np.array([parse_time(to_rfc3339(t)).timestamp() for t in recording.timestamps])
    found = []
    for start, end in limits:
        a = parse_time(to_rfc3339(start)).timestamp()
        b = parse_time(to_rfc3339(end)).timestamp()
        rows = np.flatnonzero((times >= a) & (times <= b))
        if len(rows):
            found.append((int(rows[0]), int(rows[-1])))
    return found


def run_file(
    path: Path, limits: list[list[str]], train_config: TrainConfig, config: EpisodeConfig
) -> tuple[NabFile, list]:
    """Train on the probation rows, score the rest, episodes as detections."""
    recording = read_recording(path)
    probation = int(PROBATION * len(recording))
    artifact = train([recording], replace(train_config, train_rows=probation)).artifact
    scorer = Scorer(artifact)
    end_rows, windows, _ = recording.windows(
        scorer.window, max_gap=artifact.preprocess.max_gap, from_row=probation
    )
    stamps = [to_rfc3339(recording.timestamps[r]) for r in end_rows]
    found = scored_episodes(scorer, path.stem, end_rows, stamps, scorer.score(windows), config)
    labelled = window_rows(recording, limits)
    detections = [e.opened_row for e in found if e.opened_row >= probation]
    inside = sum(1 for d in detections if any(a <= d <= b for a, b in labelled))
    caught = sum(1 for a, b in labelled if any(a <= d <= b for d in detections))
    result = NabFile(
        path.name,
        len(recording),
        scorer.interval or 0.0,
        len(labelled),
        len(detections),
        inside,
        caught,
        nab_score(detections, labelled, len(recording)),
    )
    return result, found


def run_nab(
    folder: Path, train_config: TrainConfig | None = None, config: EpisodeConfig | None = None
) -> list[NabFile]:
    limits = json.loads((folder / "windows.json").read_text())
    return [
        run_file(
            folder / name, limits[name], train_config or TrainConfig(), config or EpisodeConfig()
        )[0]
        for name in sorted(limits)
    ]


def table(results: list[NabFile]) -> str:
    lines = [
        "| NAB file | rows | sampling | labelled windows | episodes | inside a window "
        "| windows caught | standard score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        every = f"{r.interval / 60:g} min" if r.interval < 3600 else f"{r.interval / 3600:g} h"
        lines.append(
            f"| {r.name} | {r.rows:,} | {every} | {r.windows} | {r.episodes} | {r.inside} "
            f"| {r.caught}/{r.windows} | {r.score:.1f} |"
        )
    scores = [r.score for r in results]
    worst = min(results, key=lambda r: r.score)
    lines.append(
        f"| **mean** | | | | {sum(r.episodes for r in results)} | "
        f"{sum(r.inside for r in results)} | {sum(r.caught for r in results)}/"
        f"{sum(r.windows for r in results)} | **{np.mean(scores):.1f}** (worst: "
        f"{worst.name} {worst.score:.1f}) |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    results = run_nab(nab_dir())
    print(table(results))
    print(f"\n{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
