"""What every detection benchmark shares: entries to compare, the two data sets' protocols,
point counts, and the in-process scoring rate.

An entry is anything that fits on normal recordings and then flags windows: a faultwatch
model (ModelEntry: a TrainConfig through the product's own train and Scorer) or a reference
monitor written for the benchmark. Every protocol is causal: a row takes the label of the
one window that ends at it (what the live worker sees); rows before the first full window,
or whose window spans a gap, count as not flagged.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from model.recording import Recording, read_recording  # noqa: E402
from model.scoring import Scorer  # noqa: E402
from model.training import TrainConfig, train  # noqa: E402

SKAB_TRAIN_ROWS = 400  # fixed by SKAB's protocol
SKAB_WHERE = "get SKAB v0.9 (Kaggle, DOI 10.34740/KAGGLE/DSV/1693952) and set FAULTWATCH_SKAB_DIR"
TEP_WHERE = (
    "get the Braatz TEP data (github.com/camaramm/tennessee-eastman-profBraatz) as CSV "
    "(see ../shared/data/tep/README.md) and set FAULTWATCH_TEP_DIR"
)
TEP_HIDDEN = (3, 9, 15)  # faults statistically invisible: left out of the mean, as in papers
RATE_BATCH, RATE_WINDOWS = 500, 4000  # the worker's batch size; windows per timing round


class Monitor(Protocol):
    """A fitted entry: flags raw (B, W, C) windows."""

    window: int
    max_gap: int
    parameters: int

    def anomaly(self, windows: np.ndarray) -> np.ndarray: ...


class Entry(Protocol):
    """One row of a benchmark table."""

    name: str

    def fit(self, recordings: list[Recording], train_rows: int | None) -> Monitor: ...


@dataclass
class ScorerMonitor:
    scorer: Scorer

    @property
    def window(self) -> int:
        return self.scorer.window

    @property
    def max_gap(self) -> int:
        return self.scorer.artifact.preprocess.max_gap

    @property
    def parameters(self) -> int:
        return sum(t.numel() for t in self.scorer.artifact.state.values())

    def anomaly(self, windows: np.ndarray) -> np.ndarray:
        return self.scorer.score(windows).anomaly


@dataclass
class ModelEntry:
    """A faultwatch model: train() with this config, then Scorer.score, as the product does."""

    name: str
    config: TrainConfig = field(default_factory=TrainConfig)

    def fit(self, recordings: list[Recording], train_rows: int | None) -> ScorerMonitor:
        result = train(recordings, replace(self.config, train_rows=train_rows))
        return ScorerMonitor(Scorer(result.artifact))


@dataclass
class PcaMonitor:
    """The classic process monitor: PCA of standardised samples, alarm when Hotelling's T2 or
    Q (SPE) passes its 99 % control limit (here the training rows' own 99th percentile)."""

    mean: np.ndarray
    scale: np.ndarray
    loadings: np.ndarray  # (C, K)
    variances: np.ndarray  # (K,)
    t2_limit: float
    q_limit: float
    window: int = 1
    max_gap: int = 5

    @property
    def parameters(self) -> int:
        return self.loadings.size + self.variances.size + self.mean.size + self.scale.size

    def statistics(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = (samples - self.mean) / self.scale  # (N, C)
        t = x @ self.loadings  # (N, K)
        residual = x - t @ self.loadings.T
        return (t**2 / self.variances).sum(axis=1), (residual**2).sum(axis=1)

    def anomaly(self, windows: np.ndarray) -> np.ndarray:
        t2, q = self.statistics(windows[:, -1, :])  # the newest sample of each window
        return (t2 > self.t2_limit) | (q > self.q_limit)


@dataclass
class PcaEntry:
    """PCA T2/Q one sample at a time, as process monitoring sets it up (Russell, Chiang &
    Braatz 2000): the components that explain `explained` of the training variance; 99 %
    control limits from theory, T2 by the chi-squared quantile (Wilson-Hilferty) and Q by
    Jackson & Mudholkar's approximation over the left-out eigenvalues."""

    name: str = "PCA T2/Q monitor (reference)"
    explained: float = 0.9
    factor: float = 1.0  # on both limits: 2 is faultwatch's own margin over its references

    def fit(self, recordings: list[Recording], train_rows: int | None) -> PcaMonitor:
        rows = np.concatenate([r.head(train_rows).values for r in recordings])
        rows = rows[~np.isnan(rows).any(axis=1)]
        mean, std = rows.mean(axis=0), rows.std(axis=0)
        scale = np.where(std > 1e-9, std, 1.0)
        _, singular, vt = np.linalg.svd((rows - mean) / scale, full_matrices=False)
        variances = singular**2 / (len(rows) - 1)
        k = int(np.searchsorted(np.cumsum(variances) / variances.sum(), self.explained) + 1)
        t2_limit, q_limit = control_limits(variances, k)
        return PcaMonitor(
            mean, scale, vt[:k].T, variances[:k], self.factor * t2_limit, self.factor * q_limit
        )


Z99 = 2.3263478740408408  # the standard normal's 99th percentile


def control_limits(variances: np.ndarray, k: int) -> tuple[float, float]:
    """99 % limits of T2 (chi-squared, k degrees of freedom) and of Q (Jackson-Mudholkar)."""
    t2 = k * (1 - 2 / (9 * k) + Z99 * np.sqrt(2 / (9 * k))) ** 3
    rest = variances[k:]
    if rest.sum() <= 0:
        return float(t2), float("inf")
    t1, t2_, t3 = rest.sum(), (rest**2).sum(), (rest**3).sum()
    h0 = 1 - 2 * t1 * t3 / (3 * t2_**2)
    q = t1 * (Z99 * np.sqrt(2 * t2_ * h0**2) / t1 + 1 + t2_ * h0 * (h0 - 1) / t1**2) ** (1 / h0)
    return float(t2), float(q)


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def of(cls, predicted: np.ndarray, labels: np.ndarray) -> Counts:
        p, y = predicted, labels
        return cls(
            int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum()), int((~p & ~y).sum())
        )

    def add(self, other: Counts) -> None:
        self.tp, self.fp = self.tp + other.tp, self.fp + other.fp
        self.fn, self.tn = self.fn + other.fn, self.tn + other.tn

    def f1(self) -> float:
        return self.tp / (self.tp + (self.fp + self.fn) / 2) if self.tp else 0.0

    def far(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    def mar(self) -> float:
        return self.fn / (self.fn + self.tp) if self.fn + self.tp else 0.0

    def detection_rate(self) -> float:
        return 1.0 - self.mar()


# ------------------------------------------------------------------ reading labelled data


def data_dir(variable: str, name: str) -> Path:
    return Path(os.environ.get(variable, ROOT.parent / "shared" / "data" / name))


def read_labelled(path: Path) -> tuple[Recording, np.ndarray]:
    """The recording without its label columns, and its `anomaly` column as booleans (all
    False when the file has none): one read, so labels and rows cannot disagree."""
    full = read_recording(path, ignore_columns=("changepoint",))
    if "anomaly" not in full.channels:
        return full, np.zeros(len(full), dtype=bool)
    i = full.channels.index("anomaly")
    channels = full.channels[:i] + full.channels[i + 1 :]
    labels = full.values[:, i] > 0
    return replace(full, channels=channels, values=np.delete(full.values, i, axis=1)), labels


def flag_rows(monitor: Monitor, recording: Recording, from_row: int = 0) -> np.ndarray:
    """(N,) bool: each row flagged by the window that ends at it (causal)."""
    end_rows, windows, _ = recording.windows(
        monitor.window, max_gap=monitor.max_gap, from_row=from_row
    )
    flagged = np.zeros(len(recording), dtype=bool)
    flagged[end_rows] = monitor.anomaly(windows)
    return flagged


# ------------------------------------------------------------------ SKAB


@dataclass
class SkabResult:
    counts: Counts
    files: list[tuple[str, Counts]]  # per file, for the spread
    fit_seconds: float  # all fits together
    monitors: list[Monitor]  # per file, fitted (episodes are judged from the same fits)
    first_windows: np.ndarray  # the first file's windows (for the scoring rate)

    @property
    def first(self) -> Monitor:
        return self.monitors[0]

    @property
    def parameters(self) -> int:
        return self.first.parameters

    def spread(self) -> tuple[float, float, float, float]:
        """Per-file F1 min, median and max, and the worst file's FAR."""
        f1 = [c.f1() for _, c in self.files]
        return min(f1), float(np.median(f1)), max(f1), max(c.far() for _, c in self.files)


def skab_files(paths: list[str] | None = None) -> list[Path]:
    """CSV files from folders (sorted numerically) and files; exits with a clear line if none."""
    targets = [Path(p) for p in paths or []] or [data_dir("FAULTWATCH_SKAB_DIR", "skab") / "valve1"]
    files: list[Path] = []
    for target in targets:
        if target.is_dir():
            files += sorted(target.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
        elif target.is_file():
            files.append(target)
        else:
            sys.exit(f"bench: {target} not found: {SKAB_WHERE}")
    if not files:
        sys.exit(f"bench: no CSV files in {', '.join(map(str, targets))}: {SKAB_WHERE}")
    return files


def run_skab(entry: Entry, files: list[Path], say=print) -> SkabResult:
    """SKAB's outlier protocol: per file, fit on rows [0, 400), label every later row."""
    total, per_file, seconds, monitors = Counts(), [], 0.0, []
    first_windows = None
    for path in files:
        recording, labels = read_labelled(path)
        started = time.monotonic()
        monitor = entry.fit([recording], SKAB_TRAIN_ROWS)
        seconds += time.monotonic() - started
        flagged = flag_rows(monitor, recording, from_row=SKAB_TRAIN_ROWS)
        counts = Counts.of(flagged[SKAB_TRAIN_ROWS:], labels[SKAB_TRAIN_ROWS:])
        total.add(counts)
        name = f"{path.parent.name}/{path.name}"
        per_file.append((name, counts))
        monitors.append(monitor)
        if first_windows is None:
            first_windows = recording.windows(monitor.window, max_gap=monitor.max_gap)[1]
        say(
            f"  {entry.name:<26} {name:<18} F1 {counts.f1():.3f}  FAR {100 * counts.far():5.1f} %"
            f"  MAR {100 * counts.mar():5.1f} %"
        )
    return SkabResult(total, per_file, seconds, monitors, first_windows)


# ------------------------------------------------------------------ TEP


@dataclass
class TepResult:
    detection: dict[int, float]  # fault -> share of its faulty rows flagged
    far_normal: float  # normal-test.csv
    far_early: float  # rows 0-159 of every fault file, pooled
    fit_seconds: float
    monitor: Monitor

    @property
    def parameters(self) -> int:
        return self.monitor.parameters

    def mean_detection(self) -> float:
        return float(np.mean(self.visible()))

    def visible(self) -> list[float]:
        return [r for f, r in self.detection.items() if f not in TEP_HIDDEN]


def tep_dir() -> Path:
    path = data_dir("FAULTWATCH_TEP_DIR", "tep")
    if not (path / "normal-train.csv").is_file():
        sys.exit(f"bench: TEP data not found at {path}: {TEP_WHERE}")
    return path


def run_tep(entry: Entry, folder: Path, say=print) -> TepResult:
    """Fit on normal-train.csv, flag every row of normal-test.csv and each fault file."""
    train_recording, _ = read_labelled(folder / "normal-train.csv")
    started = time.monotonic()
    monitor = entry.fit([train_recording], None)
    seconds = time.monotonic() - started
    normal, labels = read_labelled(folder / "normal-test.csv")
    far_normal = Counts.of(flag_rows(monitor, normal), labels).far()
    early, detection = Counts(), {}
    for path in sorted(folder.glob("fault-*.csv")):
        recording, labels = read_labelled(path)
        flagged = flag_rows(monitor, recording)
        early.add(Counts.of(flagged[~labels], labels[~labels]))
        detection[int(path.stem.split("-")[1])] = Counts.of(flagged, labels).detection_rate()
    result = TepResult(detection, far_normal, early.far(), seconds, monitor)
    say(
        f"  {entry.name:<26} TEP  mean detection {100 * result.mean_detection():5.1f} %  "
        f"FAR normal-test {100 * far_normal:4.1f} %  rows 0-159 {100 * early.far():4.1f} %  "
        f"fit {seconds:.0f} s"
    )
    return result


# ------------------------------------------------------------------ scoring speed


def scoring_rate(monitor: Monitor, windows: np.ndarray, rounds: int = 5) -> float:
    """Windows/s of monitor.anomaly on one thread in batches of 500 (the worker's hot path);
    the median of `rounds` timed rounds after one warm-up."""
    return scoring_rates([monitor], windows, rounds)[0]


def scoring_rates(monitors: list[Monitor], windows: np.ndarray, rounds: int = 5) -> list[float]:
    """scoring_rate of several monitors on the same windows, their rounds interleaved, so a
    busy machine slows them alike and the figures compare."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reps = -(-RATE_WINDOWS // len(windows))
        pool = np.concatenate([windows] * reps)[:RATE_WINDOWS]
        batches = [pool[i : i + RATE_BATCH] for i in range(0, len(pool), RATE_BATCH)]
        rates: list[list[float]] = [[] for _ in monitors]
        for round_ in range(rounds + 1):
            for monitor, measured in zip(monitors, rates, strict=True):
                started = time.perf_counter()
                for batch in batches:
                    monitor.anomaly(batch)
                if round_:  # the first round warms caches up
                    measured.append(len(pool) / (time.perf_counter() - started))
        return [float(np.median(r)) for r in rates]
    finally:
        torch.set_num_threads(threads)
