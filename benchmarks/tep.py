"""Tennessee Eastman benchmark through the product's own code, one configuration.

Fit on normal-train.csv (500 rows, 52 channels); flag every row of normal-test.csv and of
each fault file by the window ending at it (causal); report each fault's detection rate,
their mean over the faults other than 3, 9 and 15, and the false alarm rate on
normal-test.csv and on rows 0-159 of the fault files (before each fault starts).

    .venv/bin/python benchmarks/tep.py
    .venv/bin/python benchmarks/tep.py --architecture attention --window 40
The TEP folder is $FAULTWATCH_TEP_DIR, else ../shared/data/tep beside the repository.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from evaluation import TEP_HIDDEN, ModelEntry, run_tep, tep_dir  # noqa: E402

from model.networks import ARCHITECTURES  # noqa: E402
from model.training import TrainConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--architecture", choices=list(ARCHITECTURES), default="dense")
    parser.add_argument("--window", type=int, default=TrainConfig().window)
    parser.add_argument("--detectors", default=None, help="comma-separated detector names")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = replace(
        TrainConfig(), architecture=args.architecture, window=args.window, seed=args.seed
    )
    if args.detectors:
        config = replace(config, detectors=tuple(args.detectors.split(",")))
    result = run_tep(ModelEntry(args.architecture, config), tep_dir())
    print(f"\n{'fault':>6} {'detection':>10}")
    for fault, rate in result.detection.items():
        print(f"{fault:>6} {100 * rate:>8.1f} %" + ("  (hidden)" if fault in TEP_HIDDEN else ""))
    print(
        f"\nmean over the visible faults {100 * result.mean_detection():.1f} %; FAR normal-test "
        f"{100 * result.far_normal:.1f} %, rows 0-159 {100 * result.far_early:.1f} %; "
        f"{result.parameters:,} parameters, fitted in {result.fit_seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
