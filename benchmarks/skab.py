"""SKAB benchmark through the product's own code, one configuration, file by file.

Protocol (SKAB's outlier-detection setting): for every file, fit the scaler and the model on
its first 400 rows only, then label every row >= 400; pool all files and count points:
F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP).

A row is labelled by the one window that ends at it (the last W rows up to and including it):
anomalous when that window's score exceeds the model's threshold. That is exactly what the
live worker can do, since it sees one window at a time, ending at the newest sample.

    .venv/bin/python benchmarks/skab.py                  # valve1 under the SKAB folder
    .venv/bin/python benchmarks/skab.py DIR_OR_FILE ...  # other folders or files
    .venv/bin/python benchmarks/skab.py --architecture conv --window 40
The SKAB folder is $FAULTWATCH_SKAB_DIR, else ../shared/data/skab beside the repository.
A file without an `anomaly` column counts as all normal (its rows add to FAR only).
`make bench` (benchmarks/quality.py) runs this protocol and TEP's for every architecture.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from evaluation import SKAB_TRAIN_ROWS, ModelEntry, run_skab, skab_files  # noqa: E402

from model.errors import FaultwatchError  # noqa: E402
from model.networks import ARCHITECTURES  # noqa: E402
from model.training import TrainConfig  # noqa: E402

# Published results on the whole benchmark (34 files), from the SKAB README.
PUBLISHED = [
    ("Conv-AE", "0.78", "13.55 %", "28.02 %"),
    ("MSET", "0.78", "", ""),
    ("PCA (T2 + Q)", "0.76", "", ""),
    ("LSTM-AE", "0.74", "", ""),
    ("vanilla AE", "0.39", "", ""),
    ("Isolation Forest", "0.29", "", ""),
]


def config_from(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The defaults with the experiment flags applied; True when any was given."""
    config = TrainConfig()
    top = {
        "window": args.window,
        "seed": args.seed,
        "architecture": args.architecture,
        "detectors": tuple(args.detectors.split(",")) if args.detectors else None,
    }
    prep = {"denoise": args.denoise, "kernel": args.kernel, "slow_share": args.slow_share}
    top = {k: v for k, v in top.items() if v is not None}
    prep = {k: v for k, v in prep.items() if v is not None}
    config = replace(config, **top, preprocess=replace(config.preprocess, **prep))
    return config, bool(top or prep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="folders or CSV files (default: valve1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    experiment = parser.add_argument_group("experiments (the benchmark itself uses defaults)")
    experiment.add_argument("--architecture", choices=list(ARCHITECTURES))
    experiment.add_argument("--detectors", help="comma-separated detector names")
    experiment.add_argument("--window", type=int)
    experiment.add_argument("--seed", type=int)
    experiment.add_argument("--denoise", choices=["none", "mean", "median"])
    experiment.add_argument("--kernel", type=int)
    experiment.add_argument("--slow-share", type=float)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config, changed = config_from(args)
    files = skab_files(args.paths)
    rule = config.threshold
    print(
        f"SKAB protocol on {len(files)} files: fit on rows [0, {SKAB_TRAIN_ROWS}), label rows "
        f">= {SKAB_TRAIN_ROWS}.\nA row is anomalous when the window of the {config.window} rows "
        f"ending at it scores above the threshold (what the live worker sees).\n"
        f"A window scores above the threshold when one of its detectors "
        f"({', '.join(config.detectors)}) exceeds {rule.factor:g} x its q{rule.quantile:g} on "
        f"held-out normal windows.\nSettings: {config.architecture}, window {config.window}, "
        f"denoise {config.preprocess.denoise} (kernel {config.preprocess.kernel}), slow_share "
        f"{config.preprocess.slow_share}, seed {config.seed}"
        + (" [not the defaults]" if changed else " [product defaults]")
    )
    started = time.monotonic()
    try:
        result = run_skab(
            ModelEntry("faultwatch", config), files, lambda line: print(line, flush=True)
        )
    except FaultwatchError as exc:
        sys.exit(f"skab: {exc}")
    seconds = time.monotonic() - started

    total = result.counts
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
