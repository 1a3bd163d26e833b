"""Episode-level quality: what an operator sees (incidents), beside the window-level figures.

Reusable by `make bench`: score labelled files once (`score_skab`, `score_tep`), then judge
the episodes the worker would publish under any settings (`evaluate`, `summarise`), as often
as a grid needs, with the state machine alone (model.episodes.recording_episodes):
  - a labelled anomaly (a run of rows labelled 1) is caught when an episode opens inside it;
  - a false episode is one that opens on a normal row; counted per file and per normal hour
    (normal rows scored, times the file's row period);
  - delay: from the anomaly's first row to the `opened` of the first episode inside it.

    .venv/bin/python benchmarks/episodes.py            # both data sets, a grid, about 1-2 min
    .venv/bin/python benchmarks/episodes.py --sets tep --clear-seconds 0 300
Data: $FAULTWATCH_SKAB_DIR (valve1) and $FAULTWATCH_TEP_DIR, else ../shared/data beside the
repository. SKAB protocol: per file, train on rows [0, 400) with the product's defaults and
score the rest. TEP: train on normal-train.csv, score normal-test.csv and the 21 fault files
(the fault begins at row 160; faults 3, 9 and 15 are near-invisible and listed apart).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from evaluation import (  # noqa: E402
    SKAB_TRAIN_ROWS,
    TEP_HIDDEN,
    read_labelled,
    skab_files,
    tep_dir,
)

from model.episodes import EpisodeConfig, EpisodeRow, recording_episodes  # noqa: E402
from model.recording import Recording, parse_time, to_rfc3339  # noqa: E402
from model.scoring import Scorer  # noqa: E402
from model.training import TrainConfig, train  # noqa: E402


@dataclass(frozen=True)
class ScoredRun:
    """One labelled file, scored once: every window ending at row >= from_row."""

    name: str
    labels: np.ndarray  # (N,) bool per row
    times: np.ndarray  # (N,) epoch seconds per row
    end_rows: np.ndarray  # (B,)
    timestamps: list[str]  # (B,) RFC 3339, the worker's form
    scores: np.ndarray  # (B,)
    channel_share: np.ndarray  # (B, C)
    threshold: float
    channels: list[str]
    from_row: int
    interval: float | None = None  # the model's sampling interval
    typical: float | None = None  # the model's typical normal score (baselines)

    @property
    def row_seconds(self) -> float:
        return float(np.median(np.diff(self.times))) if len(self.times) > 1 else 1.0


@dataclass(frozen=True)
class FileResult:
    name: str
    anomalies: int  # labelled intervals that begin at or after from_row
    caught: int
    delays: list[float]  # seconds, one per caught anomaly
    false_episodes: int
    normal_hours: float
    episodes: int


@dataclass(frozen=True)
class Summary:
    files: int
    anomalies: int
    caught: int
    false_episodes: int
    false_per_file: list[int]
    normal_hours: float
    median_delay: float | None  # seconds

    @property
    def false_per_hour(self) -> float:
        return self.false_episodes / self.normal_hours if self.normal_hours else 0.0


def score_run(name: str, scorer: Scorer, recording: Recording, labels, from_row: int) -> ScoredRun:
    end_rows, windows, _ = recording.windows(
        scorer.window, max_gap=scorer.artifact.preprocess.max_gap, from_row=from_row
    )
    scores = scorer.score(windows)
    stamps = [to_rfc3339(t) for t in recording.timestamps]
    times = np.array([parse_time(t).timestamp() for t in stamps])
    return ScoredRun(
        name,
        labels,
        times,
        end_rows,
        [stamps[r] for r in end_rows],
        scores.score,
        scores.channel_share,
        scorer.threshold,
        list(scorer.channels),
        from_row,
        scorer.interval,
        scorer.typical,
    )


def score_skab(files: list[Path], config: TrainConfig | None = None) -> list[ScoredRun]:
    """Each valve1 file: train on its first 400 rows (product defaults), score the rest."""
    config = replace(config or TrainConfig(), train_rows=SKAB_TRAIN_ROWS)
    scorers = [Scorer(train([read_labelled(path)[0]], config).artifact) for path in files]
    return skab_runs(files, scorers)


def skab_runs(files: list[Path], scorers: list[Scorer]) -> list[ScoredRun]:
    """Each valve1 file scored by the model fitted on its first 400 rows."""
    runs = []
    for path, scorer in zip(files, scorers, strict=True):
        recording, labels = read_labelled(path)
        runs.append(score_run(f"skab/{path.stem}", scorer, recording, labels, SKAB_TRAIN_ROWS))
    return runs


def score_tep(folder: Path, config: TrainConfig | None = None) -> list[ScoredRun]:
    """Train once on normal-train.csv; score normal-test.csv and every fault file whole."""
    normal, _ = read_labelled(folder / "normal-train.csv")
    return tep_runs(folder, Scorer(train([normal], config or TrainConfig()).artifact))


def tep_runs(folder: Path, scorer: Scorer) -> list[ScoredRun]:
    """normal-test.csv and every fault file, scored whole by the model of normal-train.csv."""
    runs = []
    for path in [folder / "normal-test.csv", *sorted(folder.glob("fault-*.csv"))]:
        recording, labels = read_labelled(path)
        runs.append(score_run(f"tep/{path.stem}", scorer, recording, labels, 0))
    return runs


def episodes_of(run: ScoredRun, config: EpisodeConfig) -> list[EpisodeRow]:
    """The episodes the worker would publish for the run's windows under `config`."""
    return recording_episodes(
        run.name,
        run.end_rows,
        run.timestamps,
        run.scores,
        run.threshold,
        run.channel_share,
        run.channels,
        config,
        interval=run.interval,
        typical=run.typical,
    )


def recoveries(run: ScoredRun, config: EpisodeConfig) -> list[tuple[float | None, float]]:
    """Per labelled anomaly with an episode open at its last row: (seconds from that row to
    the episode's `closed`, or None when still open at the end; seconds of recording left)."""
    found = episodes_of(run, config)
    out = []
    for _, last in intervals(run.labels, run.from_row):
        left = float(run.times[-1] - run.times[last])
        for e in found:
            if e.opened_row <= last and (e.closed_row is None or e.closed_row > last):
                closed = None if e.closed_row is None else run.times[e.closed_row] - run.times[last]
                out.append((None if closed is None else float(closed), left))
                break
    return out


def intervals(labels: np.ndarray, from_row: int) -> list[tuple[int, int]]:
    """(first, last) rows of each labelled run that begins at or after from_row."""
    found, start = [], None
    for row, flag in enumerate(labels):
        if flag and start is None:
            start = row
        elif not flag and start is not None:
            found.append((start, row - 1))
            start = None
    if start is not None:
        found.append((start, len(labels) - 1))
    return [(a, b) for a, b in found if a >= from_row]


def evaluate(run: ScoredRun, config: EpisodeConfig) -> FileResult:
    """Caught anomalies, their delays, and false episodes of one file under `config`."""
    episodes = episodes_of(run, config)
    labelled = intervals(run.labels, run.from_row)
    caught, delays = 0, []
    for first, last in labelled:
        inside = [e.opened_row for e in episodes if first <= e.opened_row <= last]
        if inside:
            caught += 1
            delays.append(float(run.times[min(inside)] - run.times[first]))
    false = sum(1 for e in episodes if not run.labels[e.opened_row])
    scored = np.zeros(len(run.labels), dtype=bool)
    if len(run.end_rows):
        scored[run.end_rows[0] :] = True
    normal_hours = float((scored & ~run.labels).sum()) * run.row_seconds / 3600
    return FileResult(run.name, len(labelled), caught, delays, false, normal_hours, len(episodes))


def summarise(results: Sequence[FileResult]) -> Summary:
    delays = [d for r in results for d in r.delays]
    return Summary(
        len(results),
        sum(r.anomalies for r in results),
        sum(r.caught for r in results),
        sum(r.false_episodes for r in results),
        [r.false_episodes for r in results],
        sum(r.normal_hours for r in results),
        statistics.median(delays) if delays else None,
    )


def describe(summary: Summary, row_seconds: float) -> str:
    """One line: caught, false episodes per file (spread) and per normal hour, median delay."""
    spread = summary.false_per_file
    delay = "-" if summary.median_delay is None else f"{summary.median_delay:.0f} s"
    if summary.median_delay is not None and row_seconds > 1:
        delay += f" ({summary.median_delay / row_seconds:.1f} rows)"
    return (
        f"caught {summary.caught:>2}/{summary.anomalies:<2}  false/file "
        f"{np.mean(spread):4.2f} (max {max(spread, default=0)})  false/normal h "
        f"{summary.false_per_hour:6.2f}  median delay {delay}"
    )


def visible_faults(results: Sequence[FileResult]) -> list[FileResult]:
    """TEP's files without the faults papers leave out (3, 9 and 15)."""
    hidden = {f"fault-{f:02d}" for f in TEP_HIDDEN}
    return [r for r in results if Path(r.name).stem not in hidden]


def grid(args: argparse.Namespace) -> Iterable[EpisodeConfig]:
    for open_s, clear_s, ratio in itertools.product(
        args.open_seconds, args.clear_seconds, args.clear_ratio
    ):
        yield EpisodeConfig(open_s, clear_s, ratio, update_seconds=60.0, silent_seconds=0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["skab", "tep"], choices=["skab", "tep"])
    parser.add_argument("--open-seconds", nargs="+", type=float, default=[0, 10, 60])
    parser.add_argument("--clear-seconds", nargs="+", type=float, default=[0, 60, 300, 600])
    parser.add_argument("--clear-ratio", nargs="+", type=float, default=[1.0, 0.8])
    parser.add_argument("--per-file", action="store_true", help="one line per file as well")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets: dict[str, list[ScoredRun]] = {}
    for name in args.sets:
        started = time.monotonic()
        sets[name] = score_skab(skab_files()) if name == "skab" else score_tep(tep_dir())
        print(f"{name}: {len(sets[name])} files scored in {time.monotonic() - started:.0f} s")
    for name, runs in sets.items():
        row = runs[0].row_seconds
        windows = sum(int((r.scores > r.threshold).sum()) for r in runs)
        print(
            f"\n{name} ({len(runs)} files, a row every {row:g} s; {windows} anomalous windows, "
            "each an event with FAULTWATCH_EVENTS=windows)"
        )
        print("open_s clear_s ratio  result")
        for config in grid(args):
            results = [evaluate(run, config) for run in runs]
            label = f"{config.open_seconds:>6g} {config.clear_seconds:>7g} {config.clear_ratio:>5g}"
            total = sum(r.episodes for r in results)
            print(f"{label}  {describe(summarise(results), row)}  episodes {total}")
            if args.per_file:
                for r in results:
                    delays = ", ".join(f"{d:.0f}" for d in r.delays) or "-"
                    print(
                        f"{'':>20}  {r.name:<16} caught {r.caught}/{r.anomalies}  false "
                        f"{r.false_episodes}  episodes {r.episodes}  delay s {delays}"
                    )
            if name == "tep":
                visible = visible_faults(results)
                print(f"{'':>20}  without faults 3, 9, 15: {describe(summarise(visible), row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
