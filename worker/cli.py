"""The `faultwatch` command: offline model work (train, score, inspect) and the worker's jobs.

Every user mistake ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka.errors import KafkaError

from model import artifact as artifact_io
from model.errors import FaultwatchError
from model.preprocessing import PreprocessConfig
from model.recording import parse_time, read_recording
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
    except KafkaError as exc:  # replay's sends: the broker went away mid-run
        print(f"faultwatch: error: Kafka: {exc}", file=sys.stderr)
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
    p = commands.add_parser("replay", help="produce recordings (or a topic range) to a topic")
    p.add_argument(
        "data", nargs="*", type=Path, metavar="DATA.csv", help="recordings, one machine each"
    )
    p.add_argument("--topic", required=True)
    p.add_argument(
        "--bootstrap-servers", default=None, help="default: FAULTWATCH_BOOTSTRAP_SERVERS"
    )
    p.add_argument("--machine-id", default=None, help="default: each file's name")
    p.add_argument("--model", type=Path, default=None, help="take window and channels from it")
    p.add_argument("--window", type=_positive, default=None, help=f"default {DEFAULTS.window}")
    p.add_argument("--stride", type=_positive, default=1)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, help="windows per second (all machines)")
    pace.add_argument(
        "--speed", type=float, default=None, help="pace by the data's timestamps; 1 = real time"
    )
    p.add_argument("--loop", action="store_true", help="start over at the end, until stopped")
    p.add_argument("--limit", type=_positive, default=None, help="stop after N windows")
    p.add_argument("--from-topic", default=None, help="copy a range of this topic instead")
    p.add_argument("--from-offset", type=int, default=None, help="first offset, each partition")
    p.add_argument("--to-offset", type=int, default=None, help="end offset (exclusive)")
    p.add_argument("--since", type=_moment, default=None, help="e.g. 2h, 30m or an RFC 3339 time")
    p.add_argument("--until", type=_moment, default=None, help="e.g. 1h or an RFC 3339 time")
    _add_data_options(p)
    p.set_defaults(handler=_replay)

    from worker import service

    p = commands.add_parser("run", help="run the Kafka worker (settings from FAULTWATCH_*)")
    service.add_arguments(p)
    p.set_defaults(handler=service.main)

    p = commands.add_parser("demo", help="everything on an embedded broker, then a summary")
    p.add_argument("--keep-running", action="store_true", help="stay up for exploring")
    p.set_defaults(handler=_demo)


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


def _replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker import replay, settings

    if bool(args.data) == bool(args.from_topic):
        raise FaultwatchError("replay needs either DATA.csv files or --from-topic, not both")
    config = settings.load({"bootstrap_servers": args.bootstrap_servers})
    streams = [] if args.from_topic else _streams(args)
    total = None if args.loop or args.from_topic else sum(len(s.end_rows) for s in streams)
    if args.limit:
        total = min(total or args.limit, args.limit)
    producer = replay.make_producer(config)
    with tqdm(total=total, desc=f"replay to {args.topic}", unit="window") as bar:
        try:
            if args.from_topic:
                span = replay.TopicRange(args.from_offset, args.to_offset, args.since, args.until)
                sent = replay.copy_topic(
                    config, args.from_topic, args.topic, span, producer, progress=bar.update
                )
            else:
                sent = replay.replay_recordings(
                    streams,
                    args.topic,
                    producer,
                    rate=args.rate,
                    speed=args.speed,
                    loops=None if args.loop else 1,
                    limit=args.limit,
                    progress=bar.update,
                )
        finally:
            producer.close(timeout=10)
    print(f"{sent} records replayed to {args.topic}")
    return 0


def _streams(args: argparse.Namespace) -> list:
    from worker.replay import Stream

    window, channels, max_gap = args.window or DEFAULTS.window, None, DEFAULTS.preprocess.max_gap
    if args.model:
        scorer = Scorer.load(args.model)
        window, channels = args.window or scorer.window, scorer.channels
        max_gap = scorer.artifact.preprocess.max_gap
    streams = []
    for i, path in enumerate(args.data):
        recording = _read(path, args)
        if channels is not None:
            scorer.check_channels(recording.channels, str(path))
        machine = args.machine_id or path.stem
        if args.machine_id and len(args.data) > 1:
            machine = f"{args.machine_id}-{i + 1}"
        streams.append(Stream.cut(machine, recording, window, max_gap=max_gap, stride=args.stride))
    return streams


def _moment(text: str) -> datetime:
    """'2h', '30m', '45s', '1d' ago, or an RFC 3339 time."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        return parse_time(text)
    except FaultwatchError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 2h, 30m or a time") from exc


def _demo(args: argparse.Namespace) -> int:
    from worker import demo

    return demo.main(keep_running=args.keep_running)


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
        text = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key:<{width}}  {_printable(text)}")
    print("training:")
    for key, value in training.items():
        print(f"  {_printable(key)}: {_printable(value)}")
    return 0


def _printable(value: object) -> str:
    """No terminal escape codes from a model file's metadata on an operator's screen."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def _read(path: Path, args: argparse.Namespace):
    return read_recording(path, time_column=args.time_column, ignore_columns=args.ignore_columns)


def _open_out(path: Path):
    try:
        return path.open("w", newline="")
    except OSError as exc:
        raise FaultwatchError(f"{path}: cannot write ({exc.strerror})") from exc


if __name__ == "__main__":
    sys.exit(main())
