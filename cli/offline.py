"""`faultwatch train`, `score`, `inspect` and `simulate`: model files and CSV, no Kafka."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from cli.progress import Progress
from model import artifact as artifact_io
from model import machines as machine_patterns
from model.errors import FaultwatchError
from model.preprocessing import PreprocessConfig
from model.recording import Recording, read_recording
from model.scoring import Scorer
from model.simulator import simulate, simulate_plant, write_csv
from model.training import TrainConfig, TrainResult, summary, train

DEFAULTS = TrainConfig()


def train_command(args: argparse.Namespace) -> int:
    try:
        machines = machine_patterns.parse(args.machines)
    except ValueError as exc:
        raise FaultwatchError(f"--machines: {exc}") from None
    network = {k: v for k, v in (("heads", args.heads), ("beta", args.beta)) if v is not None}
    recordings, window = training_data(args, machines)
    config = TrainConfig(
        window=window,
        train_rows=args.train_rows,
        epochs=args.epochs,
        seed=args.seed,
        l2_lambda=args.l2_lambda,
        architecture=args.architecture,
        hidden=args.hidden,
        bottleneck=args.bottleneck,
        network=network,
        detectors=tuple(args.detectors),
        anomaly_weight=args.anomaly_weight,
        machines=machines,
        preprocess=PreprocessConfig(
            denoise=args.denoise, kernel=args.kernel, max_gap=DEFAULTS.preprocess.max_gap
        ),
    )
    with Progress(args.epochs, "training", "epoch", enabled=not args.quiet) as bar:

        def progress(epoch: int, loss: float, holdout: float) -> None:
            bar.update(1, loss=f"{loss:.4f}", held_out=f"{holdout:.4f}")

        result = train(recordings, config, progress)
    artifact_io.save(result.artifact, args.out)
    print(f"model written to {args.out} ({_report(result, args.out.with_suffix('.png'))})")
    figures = summary(result)
    print(" ".join(f"{key}={value}" for key, value in figures.items()))
    return 0


TOPIC_ONLY = ("since", "until", "from_offset", "to_offset", "events_topic", "control_topic")


def training_data(args: argparse.Namespace, machines: tuple[str, ...]) -> tuple[list, int]:
    """The recordings to train on and the window: DATA files, or a topic's windows."""
    from_topic = getattr(args, "from_topic", None)
    if bool(args.data) == bool(from_topic):
        raise FaultwatchError("train needs either DATA.csv files or --from-topic, not both")
    if not from_topic:
        given = [f"--{n.replace('_', '-')}" for n in TOPIC_ONLY if getattr(args, n, None)]
        if given or getattr(args, "exclude_episodes", False):
            raise FaultwatchError(f"{(given or ['--exclude-episodes'])[0]} needs --from-topic")
        recordings = [
            read_recording(
                path,
                time_column=args.time_column,
                ignore_columns=args.ignore_columns,
                label_column=args.anomaly_column,
            )
            for path in args.data
        ]
        return recordings, args.window or DEFAULTS.window
    if args.anomaly_column:
        raise FaultwatchError(
            "--anomaly-column reads DATA files: a topic's windows carry no labels "
            "(--exclude-episodes leaves out the windows of known episodes)"
        )
    from cli.topic_windows import topic_recordings

    recordings, window, line = topic_recordings(args, machines)
    if args.window and args.window != window:
        raise FaultwatchError(
            f"--window {args.window}: the windows of {from_topic} have {window} rows, and the "
            "model must read the windows its machines send"
        )
    print(line)
    return recordings, window


def _report(result: TrainResult, path: Path) -> str:
    """The PNG report needs matplotlib, which the worker's image leaves out: say so, go on."""
    try:
        from model.report import write_report
    except ImportError:
        return "no PNG report: pip install 'faultwatch[train]' for it"
    return f"report: {write_report(result, path)}"


def score_command(args: argparse.Namespace) -> int:
    scorer = Scorer.load(args.model)
    recording = read(args.data, args)
    scorer.check_channels(recording.channels, str(args.data))
    end_rows, windows, gaps = recording.windows(
        scorer.window, max_gap=scorer.artifact.preprocess.max_gap, from_row=args.from_row
    )
    scores = scorer.score(windows)
    # A window whose score is not a number is one the worker dead-letters (non_finite): it is
    # not scored here either, never written as nan with anomaly 0.
    finite = np.isfinite(scores.score)
    with open_out(args.out) as out:
        writer = csv.writer(out)
        writer.writerow(["end_row", "timestamp", "score", "threshold", "anomaly"])
        for j in np.flatnonzero(finite):
            row = end_rows[j]
            writer.writerow(
                [
                    row,
                    recording.timestamps[row],
                    f"{scores.score[j]:.6g}",
                    f"{scorer.threshold:.6g}",
                    int(scores.anomaly[j]),
                ]
            )
    unscored = int((~finite).sum())
    print(
        f"{int(finite.sum())} windows scored, {int(scores.anomaly[finite].sum())} anomalous, "
        f"written to {args.out}"
        + (f"; {gaps} windows skipped over data gaps" if gaps else "")
        + (f"; {unscored} windows skipped, values beyond the model's range" if unscored else "")
    )
    if getattr(args, "episodes", None):
        from cli.episodes import score_episodes

        print(score_episodes(args, recording, end_rows, scores, scorer))
    return 0


def simulate_command(args: argparse.Namespace) -> int:
    if getattr(args, "plant", None):
        return _simulate_plant(args)
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


def _simulate_plant(args: argparse.Namespace) -> int:
    """`simulate --plant`: weeks of one machine with its nuisances and, maybe, a fault."""
    if args.fault:
        raise FaultwatchError("--fault is for the pump-line run; --plant names its own fault")
    if args.days * 1440 < 1:
        raise FaultwatchError("--days must give at least one row (1 a minute)")
    plant = simulate_plant(args.days, seed=args.seed, scenario=args.plant)
    write_csv(plant.run, args.out)
    what = ""
    if plant.fault is not None and plant.fault[0] < len(plant.run.labels):
        what = f" ({args.plant} labelled rows {plant.fault[0]}-{plant.fault[1] - 1})"
    print(
        f"{len(plant.run.labels)} rows of {len(plant.run.channels)} channels, a row every "
        f"{plant.interval:g} s, written to {args.out}{what}; train on the first two days"
    )
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    info = artifact_io.load(args.model).summary()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    training = info.pop("training")
    layers = info.pop("layers")
    quantiles = info.pop("score_quantiles")
    info["detectors"] = [f"{d['name']} (reference {d['reference']:.6g})" for d in info["detectors"]]
    info["network"] = [f"{k} {v}" for k, v in info["network"].items()]
    info["held-out scores"] = ", ".join(
        f"q{p} {quantiles[round(p * (len(quantiles) - 1) / 100)]:.4g}" for p in (50, 90, 99, 100)
    )
    width = max(len(k) for k in info)
    for key, value in info.items():
        text = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key:<{width}}  {printable(text)}")
    print("layers:")
    for layer in layers:
        print(f"  {printable(layer['name']):<40} {layer['parameters']:>12,}")
    print("training:")
    for key, value in training.items():
        print(f"  {printable(key)}: {printable(value)}")
    return 0


def printable(value: object) -> str:
    """No terminal escape codes from a model file's metadata on an operator's screen."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def read(path: Path, args: argparse.Namespace) -> Recording:
    """A DATA file with the command's DATA options (the same for train, score and replay)."""
    return read_recording(path, time_column=args.time_column, ignore_columns=args.ignore_columns)


def open_out(path: Path):
    try:
        return path.open("w", newline="")
    except OSError as exc:
        raise FaultwatchError(f"{path}: cannot write ({exc.strerror})") from exc
