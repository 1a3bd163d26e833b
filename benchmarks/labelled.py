"""The labelled-anomaly loss (`train --anomaly-column`), measured against training without it
on the same files and rows.

SKAB valve1: per file, train on rows [0, 800) (the anomaly starts near row 570, so about 230
of them are labelled), score rows >= 800, causal as in `make bench`. Three ways to train on
the same rows:
- labels, hinge: labelled windows out of the normal fit, their error pushed above the margin
  (`--anomaly-column anomaly --anomaly-weight 1`);
- labels, no hinge: labelled windows only left out (`--anomaly-column anomaly`);
- no labels: every row taken as normal (what a user without labels gets).

    .venv/bin/python benchmarks/labelled.py
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from evaluation import Counts, flag_rows, read_labelled, skab_files  # noqa: E402

from model.scoring import Scorer  # noqa: E402
from model.training import TrainConfig, train  # noqa: E402

TRAIN_ROWS = 800
WAYS = {
    "labels, hinge": TrainConfig(anomaly_weight=1.0),
    "labels, no hinge": TrainConfig(),
    "no labels": None,
}


def main() -> int:
    torch.set_num_threads(1)
    files = skab_files()
    print(
        f"SKAB {files[0].parent.name}: {len(files)} files, train rows [0, {TRAIN_ROWS}), "
        f"score rows >= {TRAIN_ROWS}",
        flush=True,
    )
    for way, config in WAYS.items():
        total, f1s, started = Counts(), [], time.monotonic()
        for path in files:
            recording, labels = read_labelled(path)
            known = replace(recording, labels=labels) if config is not None else recording
            result = train([known], replace(config or TrainConfig(), train_rows=TRAIN_ROWS))
            flagged = flag_rows(_Monitor(Scorer(result.artifact)), recording, TRAIN_ROWS)
            counts = Counts.of(flagged[TRAIN_ROWS:], labels[TRAIN_ROWS:])
            total.add(counts)
            f1s.append(counts.f1())
        print(
            f"{way:<18} F1 {total.f1():.3f}  FAR {100 * total.far():5.1f} %  MAR "
            f"{100 * total.mar():5.1f} %  per-file F1 min {min(f1s):.2f} median "
            f"{np.median(f1s):.2f} max {max(f1s):.2f}  ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    return 0


class _Monitor:
    def __init__(self, scorer: Scorer) -> None:
        self.scorer, self.window = scorer, scorer.window
        self.max_gap = scorer.artifact.preprocess.max_gap

    def anomaly(self, windows: np.ndarray) -> np.ndarray:
        return self.scorer.score(windows).anomaly


if __name__ == "__main__":
    sys.exit(main())
