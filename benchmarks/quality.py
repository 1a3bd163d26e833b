"""`make bench`: detection quality of the defaults, the alternatives and two references on two
data sets, one table.

Each row is an entry (benchmarks/evaluation.py) run through the same protocols:
- SKAB valve1 (16 files): per file, fit on rows [0, 400), label every later row; pooled
  F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP);
- TEP: fit on normal-train.csv; detection rate (faulty rows flagged) per fault, averaged over
  the faults other than 3, 9 and 15; FAR on normal-test.csv and on rows 0-159 of the fault
  files (before the fault starts);
both causal (a row takes the label of the window ending at it); then the parameters of the
SKAB and TEP models, the fitting time (all 16 SKAB fits / the TEP fit) and the scoring rate
of the first SKAB file's model (Scorer.score, one thread, batches of 500).

    .venv/bin/python benchmarks/quality.py            # every entry, 5 minutes (10 when busy)
    .venv/bin/python benchmarks/quality.py --entries 1,12
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import episodes  # noqa: E402
import nab  # noqa: E402
import plant  # noqa: E402
from evaluation import (  # noqa: E402
    TEP_HIDDEN,
    Entry,
    ModelEntry,
    PcaEntry,
    SkabResult,
    TepResult,
    run_skab,
    run_tep,
    scoring_rate,
    scoring_rates,
    skab_files,
    tep_dir,
)

from model.detectors import DETECTORS  # noqa: E402
from model.episodes import EpisodeConfig  # noqa: E402
from model.networks import ARCHITECTURES  # noqa: E402
from model.training import TrainConfig  # noqa: E402

DEFAULT = TrainConfig()
OLD_DETECTORS = ("autoencoder", "level")  # the defaults before the fused detectors
# The chosen default first; then each architecture with the other defaults; detector sets
# and preprocessing that matter, on the default network; then the two reference rows the
# defaults must beat: the specified dense network on a 10-step window, and the classic
# PCA T2/Q monitor (as published, and with faultwatch's factor 2 on its limits, which puts its
# false alarms where faultwatch's are). Every faultwatch row uses the same honest calibration.
ENTRIES: list[Entry] = [
    ModelEntry("default: dense, 5 detectors", DEFAULT),
    *(
        ModelEntry(f"{name}, 5 detectors", replace(DEFAULT, architecture=name))
        for name in ARCHITECTURES
        if name != DEFAULT.architecture
    ),
    OLD := ModelEntry("dense, autoencoder+level (old)", replace(DEFAULT, detectors=OLD_DETECTORS)),
    ModelEntry("dense, network alone", replace(DEFAULT, detectors=("autoencoder",))),
    ModelEntry("dense, pca_t2+pca_q", replace(DEFAULT, detectors=("pca_t2", "pca_q"))),
    ModelEntry("dense, all 7 detectors", replace(DEFAULT, detectors=tuple(DETECTORS))),
    ModelEntry("dense, 5 detectors, window 10", replace(DEFAULT, window=10)),
    ModelEntry(
        "dense, 5 detectors, no slow channels",
        replace(DEFAULT, preprocess=replace(DEFAULT.preprocess, slow_share=0.0)),
    ),
    ModelEntry(
        "specified dense, window 10 (reference)",
        replace(
            DEFAULT,
            window=10,
            detectors=("autoencoder",),
            preprocess=replace(DEFAULT.preprocess, slow_share=0.0),
        ),
    ),
    PcaEntry(),
    PcaEntry("PCA T2/Q monitor, limits x2 (reference)", factor=2.0),
]


@dataclass
class Row:
    entry: Entry
    skab: SkabResult
    tep: TepResult
    rate: float


def table(rows: list[Row]) -> str:
    """The results as a markdown table (docs/quality.md carries it)."""
    lines = [
        "| entry | SKAB F1 | SKAB FAR | SKAB MAR | SKAB per-file F1 min / median / max "
        "| worst file's FAR | TEP detection | TEP per-fault min / median | TEP FAR normal-test "
        "| TEP FAR rows 0-159 | parameters SKAB / TEP | fitting s SKAB (16) / TEP "
        "| scoring win/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, t = r.skab, r.tep
        low, median, high, worst = s.spread()
        visible = t.visible()
        lines.append(
            f"| {r.entry.name} | {s.counts.f1():.3f} | {100 * s.counts.far():.1f} % "
            f"| {100 * s.counts.mar():.1f} % | {low:.2f} / {median:.2f} / {high:.2f} "
            f"| {100 * worst:.0f} % | {100 * t.mean_detection():.1f} % "
            f"| {100 * min(visible):.0f} / {100 * float(np.median(visible)):.0f} % "
            f"| {100 * t.far_normal:.1f} % | {100 * t.far_early:.1f} % "
            f"| {s.parameters:,} / {t.parameters:,} | {s.fit_seconds:.0f} / {t.fit_seconds:.0f} "
            f"| {r.rate:,.0f} |"
        )
    return "\n".join(lines)


def targets(row: Row) -> str:
    """The issue's targets for the default, met or not, with the numbers."""
    s, t = row.skab.counts, row.tep
    checks = [
        ("SKAB F1 >= 0.85", s.f1() >= 0.85, f"{s.f1():.4f}"),
        ("SKAB FAR <= 8 %", s.far() <= 0.08, f"{100 * s.far():.1f} %"),
        ("TEP detection >= 80 %", t.mean_detection() >= 0.8, f"{100 * t.mean_detection():.1f} %"),
        ("TEP FAR normal-test <= 5 %", t.far_normal <= 0.05, f"{100 * t.far_normal:.1f} %"),
        ("TEP FAR rows 0-159 <= 5 %", t.far_early <= 0.05, f"{100 * t.far_early:.1f} %"),
    ]
    return "; ".join(f"{name}: {value} {'met' if ok else 'NOT met'}" for name, ok, value in checks)


def fault_table(rows: list[Row]) -> str:
    """TEP detection rate per fault and entry: where each one is blind."""
    faults = sorted(rows[0].tep.detection)
    head = "| fault | " + " | ".join(r.entry.name for r in rows) + " |"
    lines = [head, "|---" * (len(rows) + 1) + "|"]
    for f in faults:
        mark = " (hidden)" if f in TEP_HIDDEN else ""
        cells = " | ".join(f"{100 * r.tep.detection[f]:.0f} %" for r in rows)
        lines.append(f"| {f}{mark} | {cells} |")
    return "\n".join(lines)


def episode_lines(row: Row, files: list[Path], tep: Path) -> str:
    """What an operator would see from the first row's models: episodes at the default
    settings (FAULTWATCH_EPISODE_*), judged from the same fits as the window figures."""
    config = EpisodeConfig()
    skab_runs = episodes.skab_runs(files, [m.scorer for m in row.skab.monitors])
    tep_runs = episodes.tep_runs(tep, row.tep.monitor.scorer)
    skab = [episodes.evaluate(run, config) for run in skab_runs]
    tep_all = [episodes.evaluate(run, config) for run in tep_runs]
    back = [r for run in skab_runs for r in episodes.recoveries(run, config)]
    closed = sorted(r for r, _ in back if r is not None)
    left = [x for _, x in back]
    recovery = (
        f"  SKAB valve1 recovery (labelled fault end to closed): {len(closed)} of {len(back)} "
        f"episodes open at a fault's end close before their file ends"
        + (f" (median {np.median(closed):.0f} s)" if closed else "")
        + (f"; the files end {min(left):.0f}-{max(left):.0f} s after the fault" if left else "")
    )
    return "\n".join(
        [
            f"episodes of {row.entry.name} at open {config.open_seconds:g} s and "
            f"{config.open_windows} windows, clear {config.clear_seconds:g} s and "
            f"{config.clear_windows} windows below {config.clear_ratio:g} x threshold (deep "
            f"clear {config.clear_deep_seconds:g} s under half of it), settle "
            f"{config.settle_seconds:g} s, baseline time constant {config.adapt_seconds:g} s:",
            f"  SKAB valve1   {episodes.describe(episodes.summarise(skab), 1.0)}",
            f"  TEP (18 faults, normal-test) "
            f"{episodes.describe(episodes.summarise(episodes.visible_faults(tep_all)), 180.0)}",
            recovery,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--entries",
        default=None,
        metavar="N,...",
        help="row numbers, from 1: "
        + "; ".join(f"{i} {e.name}" for i, e in enumerate(ENTRIES, start=1))
        + " (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--no-new-sets", action="store_true", help="without the NAB and simulated-plant tables"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    entries = ENTRIES
    if args.entries:
        try:
            entries = [ENTRIES[int(n) - 1] for n in args.entries.split(",")]
        except (ValueError, IndexError):
            sys.exit(f"bench: --entries takes row numbers 1 to {len(ENTRIES)}")
    files, tep = skab_files(), tep_dir()
    print(
        f"{len(entries)} entries x (SKAB {files[0].parent.name}: {len(files)} files, fit on "
        f"the first 400 rows each; TEP: fit on normal-train, 22 test files); "
        f"torch threads {args.threads}",
        flush=True,
    )
    started, rows = time.monotonic(), []
    for entry in entries:
        say = lambda line: print(line, flush=True)  # noqa: E731
        skab = run_skab(entry, files, say)
        tep_result = run_tep(entry, tep, say)
        rate = scoring_rate(skab.first, skab.first_windows)
        c = skab.counts
        say(
            f"  {entry.name:<26} SKAB F1 {c.f1():.3f}  FAR {100 * c.far():.2f} %  "
            f"scoring {rate:,.0f} win/s  ({time.monotonic() - started:.0f} s so far)"
        )
        rows.append(Row(entry, skab, tep_result, rate))
    print(f"\n{table(rows)}\n\nTEP detection per fault:\n\n{fault_table(rows)}")
    if rows[0].entry is ENTRIES[0]:
        print(f"\ntargets for the default: {targets(rows[0])}")
        print(f"\n{episode_lines(rows[0], files, tep)}")
        if not args.no_new_sets:
            started_sets = time.monotonic()
            folder = nab.data_dir("FAULTWATCH_NAB_DIR", "nab")
            if (folder / "windows.json").is_file():
                nab_table = nab.table(nab.run_nab(folder))
                print(f"\nNAB, the default with episodes as detections:\n\n{nab_table}")
            else:
                print(f"\nNAB skipped: no data at {folder} ({nab.NAB_WHERE})")
            print(f"\nthe simulated plant, the default:\n\n{plant.table(plant.run_plant())}")
            print(f"({time.monotonic() - started_sets:.0f} s for NAB and the plant)")
        old = next((r for r in rows if r.entry is OLD), None)
        if old is not None:
            new_rate, old_rate = scoring_rates(
                [rows[0].skab.first, old.skab.first], rows[0].skab.first_windows, rounds=9
            )
            print(
                f"scoring rate, rounds interleaved: the default {new_rate:,.0f} win/s, the "
                f"detectors before it (autoencoder,level) {old_rate:,.0f} win/s"
            )
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
