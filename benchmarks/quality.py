"""`make bench`: detection quality of every architecture on two data sets, one table.

Each row is an entry (benchmarks/evaluation.py) run through the same protocols:
- SKAB valve1 (16 files): per file, fit on rows [0, 400), label every later row; pooled
  F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP);
- TEP: fit on normal-train.csv; detection rate (faulty rows flagged) per fault, averaged over
  the faults other than 3, 9 and 15; FAR on normal-test.csv and on rows 0-159 of the fault
  files (before the fault starts);
both causal (a row takes the label of the window ending at it); then the parameters of the
SKAB and TEP models, the fitting time (all 16 SKAB fits / the TEP fit) and the scoring rate
of the first SKAB file's model (Scorer.score, one thread, batches of 500).

    .venv/bin/python benchmarks/quality.py                 # every entry, about 6 minutes
    .venv/bin/python benchmarks/quality.py --entries dense,conv
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from evaluation import (  # noqa: E402
    TEP_HIDDEN,
    Entry,
    ModelEntry,
    SkabResult,
    TepResult,
    run_skab,
    run_tep,
    scoring_rate,
    skab_files,
    tep_dir,
)

from model.networks import ARCHITECTURES  # noqa: E402
from model.training import TrainConfig  # noqa: E402

# One row per architecture with the product's other defaults, then each network alone (its
# reconstruction error, no level z-score): the fused rows show what a user gets, the others
# what the network itself adds. Reference monitors and other detector sets join as entries.
ENTRIES: list[Entry] = [
    ModelEntry(name, TrainConfig(architecture=name)) for name in ARCHITECTURES
] + [
    ModelEntry(
        f"{name} (network alone)", TrainConfig(architecture=name, detectors=("autoencoder",))
    )
    for name in ARCHITECTURES
]


@dataclass
class Row:
    entry: Entry
    skab: SkabResult
    tep: TepResult
    rate: float


def table(rows: list[Row]) -> str:
    """The results as a markdown table (the README carries it)."""
    lines = [
        "| model | SKAB F1 | SKAB FAR | SKAB MAR | TEP detection | TEP FAR normal-test "
        "| TEP FAR rows 0-159 | parameters SKAB / TEP | fitting s SKAB (16) / TEP "
        "| scoring win/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, t = r.skab, r.tep
        lines.append(
            f"| {r.entry.name} | {s.counts.f1():.3f} | {100 * s.counts.far():.2f} % "
            f"| {100 * s.counts.mar():.2f} % | {100 * t.mean_detection():.1f} % "
            f"| {100 * t.far_normal:.1f} % | {100 * t.far_early:.1f} % "
            f"| {s.parameters:,} / {t.parameters:,} | {s.fit_seconds:.0f} / {t.fit_seconds:.0f} "
            f"| {r.rate:,.0f} |"
        )
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    entries = ENTRIES
    if args.entries:
        wanted = [name.strip() for name in args.entries.split(",")]
        entries = [e for e in ENTRIES if e.name in wanted]
        if len(entries) != len(wanted):
            sys.exit(f"bench: unknown entry in {wanted}; known: {[e.name for e in ENTRIES]}")
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
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
