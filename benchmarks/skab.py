"""SKAB benchmark through the product's own code, with the product's default settings.

Protocol (SKAB's outlier-detection setting): for every file, fit the scaler and the model on
its first 400 rows only, then label every row >= 400; pool all files and count points:
F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP).

A row is labelled by the one window that ends at it (the last W rows up to and including it):
anomalous when that window's score exceeds the model's threshold. That is exactly what the
live worker can do, since it sees one window at a time, ending at the newest sample.

    .venv/bin/python benchmarks/skab.py                  # valve1 under the SKAB folder
    .venv/bin/python benchmarks/skab.py DIR_OR_FILE ...  # other folders or files
The SKAB folder is $FAULTWATCH_SKAB_DIR, else ../shared/data/skab beside the repository.
A file without an `anomaly` column counts as all normal (its rows add to FAR only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from model.errors import FaultwatchError  # noqa: E402
from model.recording import Recording, read_recording  # noqa: E402
from model.scoring import Scorer  # noqa: E402
from model.training import TrainConfig, train  # noqa: E402

TRAIN_ROWS = 400  # fixed by the protocol
WHERE = "get SKAB v0.9 (Kaggle, DOI 10.34740/KAGGLE/DSV/1693952) and set FAULTWATCH_SKAB_DIR"
# Published results on the whole benchmark (34 files), from the SKAB README.
PUBLISHED = [
    ("Conv-AE", "0.78", "13.55 %", "28.02 %"),
    ("MSET", "0.78", "", ""),
    ("PCA (T2 + Q)", "0.76", "", ""),
    ("LSTM-AE", "0.74", "", ""),
    ("vanilla AE", "0.39", "", ""),
    ("Isolation Forest", "0.29", "", ""),
]


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, other: Counts) -> None:
        self.tp, self.fp = self.tp + other.tp, self.fp + other.fp
        self.fn, self.tn = self.fn + other.fn, self.tn + other.tn

    def f1(self) -> float:
        return self.tp / (self.tp + (self.fp + self.fn) / 2) if self.tp else 0.0

    def far(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    def mar(self) -> float:
        return self.fn / (self.fn + self.tp) if self.fn + self.tp else 0.0


def skab_dir() -> Path:
    return Path(os.environ.get("FAULTWATCH_SKAB_DIR", ROOT.parent / "shared" / "data" / "skab"))


def find_files(paths: list[str]) -> list[Path]:
    """CSV files from folders (sorted numerically) and files; exits with a clear line if none."""
    targets = [Path(p) for p in paths] or [skab_dir() / "valve1"]
    files: list[Path] = []
    for target in targets:
        if target.is_dir():
            found = sorted(target.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
            files += found
        elif target.is_file():
            files.append(target)
        else:
            sys.exit(f"skab: {target} not found: {WHERE}")
    if not files:
        sys.exit(f"skab: no CSV files in {', '.join(map(str, targets))}: {WHERE}")
    return files


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


def run_file(path: Path, config: TrainConfig) -> tuple[Counts, str]:
    """Train on the first 400 rows, label every later row by the window ending at it."""
    started = time.monotonic()
    recording, labels = read_labelled(path)
    result = train([recording], config)
    scorer = Scorer(result.artifact)
    end_rows, windows, _ = recording.windows(
        scorer.window, max_gap=config.preprocess.max_gap, from_row=TRAIN_ROWS
    )
    predicted = np.zeros(len(recording), dtype=bool)  # rows without a full window: normal
    predicted[end_rows] = scorer.score(windows).anomaly
    y, p = labels[TRAIN_ROWS:], predicted[TRAIN_ROWS:]
    counts = Counts(
        int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum()), int((~p & ~y).sum())
    )
    line = (
        f"{path.parent.name + '/' + path.name:<28} rows {len(y):>5}  F1 {counts.f1():.3f}  "
        f"FAR {100 * counts.far():5.1f} %  MAR {100 * counts.mar():5.1f} %  "
        f"epochs {len(result.train_loss):>3}  {time.monotonic() - started:4.1f} s"
    )
    return counts, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="folders or CSV files (default: valve1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    experiment = parser.add_argument_group("experiments (the benchmark itself uses defaults)")
    experiment.add_argument("--window", type=int)
    experiment.add_argument("--seed", type=int)
    experiment.add_argument("--denoise", choices=["none", "mean", "median"])
    experiment.add_argument("--kernel", type=int)
    experiment.add_argument("--slow-share", type=float)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = TrainConfig(train_rows=TRAIN_ROWS)
    changes = {k: v for k, v in (("window", args.window), ("seed", args.seed)) if v is not None}
    prep = {
        k: v
        for k, v in (
            ("denoise", args.denoise),
            ("kernel", args.kernel),
            ("slow_share", args.slow_share),
        )
        if v is not None
    }
    config = replace(config, **changes, preprocess=replace(config.preprocess, **prep))
    files = find_files(args.paths)
    rule = config.threshold
    print(
        f"SKAB protocol on {len(files)} files: fit on rows [0, {TRAIN_ROWS}), label rows "
        f">= {TRAIN_ROWS}.\nA row is anomalous when the window of the {config.window} rows "
        f"ending at it scores above the threshold (what the live worker sees).\n"
        f"A window scores above the threshold when its autoencoder error or its level z-score "
        f"exceeds {rule.factor:g} x that detector's q{rule.quantile:g} on held-out normal "
        f"windows.\nSettings: window {config.window}, denoise {config.preprocess.denoise} "
        f"(kernel {config.preprocess.kernel}), slow_share {config.preprocess.slow_share}, "
        f"seed {config.seed}"
        + (" [not the defaults]" if changes or prep else " [product defaults]")
    )
    started = time.monotonic()
    total = Counts()
    try:
        for path in files:
            counts, line = run_file(path, config)
            total.add(counts)
            print(line, flush=True)
    except FaultwatchError as exc:
        sys.exit(f"skab: {exc}")
    seconds = time.monotonic() - started

    print(f"\n{'detector':<28}{'F1':>6}{'FAR':>10}{'MAR':>10}")
    print(
        f"{'faultwatch (this run)':<28}{total.f1():>6.3f}{100 * total.far():>8.2f} %"
        f"{100 * total.mar():>8.2f} %"
    )
    for name, f1, far, mar in PUBLISHED:
        print(f"{name + ' (published)':<28}{f1:>6}{far:>10}{mar:>10}")
    print(
        f"\npoints: TP {total.tp}  FP {total.fp}  FN {total.fn}  TN {total.tn}; "
        f"published figures cover all 34 SKAB files; {len(files)} files here, {seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
