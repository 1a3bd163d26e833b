"""The `faultwatch` command: offline model work (train, score, inspect) and the worker's jobs.

Every user mistake ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from model import artifact as artifact_io
from model.errors import FaultwatchError
from model.preprocessing import PreprocessConfig
from model.recording import read_recording
from model.scoring import Scorer
from model.simulator import FAULTS, simulate, write_csv
from model.training import TrainConfig, summary, train

DEFAULTS = TrainConfig()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except FaultwatchError as exc:
        print(f"faultwatch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("faultwatch: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faultwatch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model on normal recordings")
    p.add_argument("data", nargs="+", type=Path, metavar="DATA.csv")
    p.add_argument("--out", required=True, type=Path, metavar="MODEL")
    _add_data_options(p)
    p.add_argument("--window", type=_positive, default=DEFAULTS.window)
    p.add_argument("--train-rows", type=_positive, default=None, metavar="N")
    p.add_argument("--epochs", type=_positive, default=DEFAULTS.epochs)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--l2-lambda", type=float, default=DEFAULTS.l2_lambda)
    p.add_argument(
        "--denoise", choices=["none", "mean", "median"], default=DEFAULTS.preprocess.denoise
    )
    p.add_argument("--kernel", type=_positive, default=DEFAULTS.preprocess.kernel)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)

    p = commands.add_parser("score", help="score every window of a recording to CSV")
    p.add_argument("data", type=Path, metavar="DATA.csv")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, metavar="SCORES.csv")
    p.add_argument("--from-row", type=int, default=0, metavar="N")
    _add_data_options(p)
    p.set_defaults(handler=_score)

    p = commands.add_parser("inspect", help="describe a model file")
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=_inspect)

    p = commands.add_parser("simulate", help="write a simulated pump-line recording (CSV)")
    p.add_argument("--out", required=True, type=Path, metavar="DATA.csv")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--fault", choices=FAULTS, default=None, help="inject a fault half-way")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_simulate)

    _add_worker_commands(commands)
    return parser


def _add_worker_commands(commands: argparse._SubParsersAction) -> None:
    try:  # TEMP until worker.service lands
        from worker import service
    except ImportError:
        return

    p = commands.add_parser("run", help="run the Kafka worker (settings from FAULTWATCH_*)")
    service.add_arguments(p)
    p.set_defaults(handler=service.main)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-column", default=None, help="default: the first column")
    p.add_argument(
        "--ignore-columns",
        default="anomaly,changepoint",
        type=_names,
        help="label columns to drop (comma separated)",
    )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.report import write_report

    recordings = [_read(path, args) for path in args.data]
    config = TrainConfig(
        window=args.window,
        train_rows=args.train_rows,
        epochs=args.epochs,
        seed=args.seed,
        l2_lambda=args.l2_lambda,
        preprocess=PreprocessConfig(
            denoise=args.denoise, kernel=args.kernel, max_gap=DEFAULTS.preprocess.max_gap
        ),
    )
    with tqdm(total=args.epochs, desc="training", unit="epoch", disable=args.quiet) as bar:

        def progress(epoch: int, loss: float, holdout: float) -> None:
            bar.set_postfix(loss=f"{loss:.4f}", held_out=f"{holdout:.4f}")
            bar.update(1)

        result = train(recordings, config, progress)
    artifact_io.save(result.artifact, args.out)
    report = write_report(result, args.out.with_suffix(".png"))
    figures = summary(result)
    print(f"model written to {args.out} (report: {report})")
    print(" ".join(f"{key}={value}" for key, value in figures.items()))
    return 0


def _score(args: argparse.Namespace) -> int:
    scorer = Scorer.load(args.model)
    recording = _read(args.data, args)
    scorer.check_channels(recording.channels, str(args.data))
    end_rows, windows, gaps = recording.windows(
        scorer.window, max_gap=scorer.artifact.preprocess.max_gap, from_row=args.from_row
    )
    scores = scorer.score(windows)
    with _open_out(args.out) as out:
        writer = csv.writer(out)
        writer.writerow(["end_row", "timestamp", "score", "threshold", "anomaly"])
        for row, score, flag in zip(end_rows, scores.score, scores.anomaly, strict=True):
            writer.writerow(
                [
                    row,
                    recording.timestamps[row],
                    f"{score:.6g}",
                    f"{scorer.threshold:.6g}",
                    int(flag),
                ]
            )
    print(
        f"{len(scores.score)} windows scored, {int(scores.anomaly.sum())} anomalous, "
        f"written to {args.out}" + (f"; {gaps} windows skipped over data gaps" if gaps else "")
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    rows = int(args.minutes * 60)
    if rows < 1:
        raise FaultwatchError("--minutes must give at least one sample (1 per second)")
    run = simulate(rows, seed=args.seed, fault=args.fault)
    write_csv(run, args.out)
    print(
        f"{rows} rows of {len(run.channels)} channels written to {args.out}"
        + (f" ({args.fault} from row {rows // 2})" if args.fault else "")
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    info = artifact_io.load(args.model).summary()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    training = info.pop("training")
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {', '.join(value) if isinstance(value, list) else value}")
    print("training:")
    for key, value in training.items():
        print(f"  {key}: {value}")
    return 0


def _read(path: Path, args: argparse.Namespace):
    return read_recording(path, time_column=args.time_column, ignore_columns=args.ignore_columns)


def _open_out(path: Path):
    try:
        return path.open("w", newline="")
    except OSError as exc:
        raise FaultwatchError(f"{path}: cannot write ({exc.strerror})") from exc


if __name__ == "__main__":
    sys.exit(main())
