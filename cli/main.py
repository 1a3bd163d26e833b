"""The `faultwatch` command: offline model work (train, score, inspect) and the worker's jobs."""

# Every user mistake ends as one line on stderr and a non-zero exit, never a traceback.

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kafka.errors import KafkaError

from model.detectors import DETECTORS
from model.episodes import LABELS
from model.errors import FaultwatchError
from model.networks import ARCHITECTURES
from model.simulator import FAULTS, SCENARIOS
from model.training import TrainConfig

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

    p = commands.add_parser("train", help="train a model on normal recordings (or a topic)")
    p.add_argument("data", nargs="*", type=Path, metavar="DATA.csv")
    p.add_argument("--out", required=True, type=Path, metavar="MODEL")
    _add_data_options(p)
    _add_training_topic(p)
    p.add_argument(
        "--window",
        type=_positive,
        default=None,
        help=f"default {DEFAULTS.window}; from a topic, its windows' own length",
    )
    p.add_argument("--train-rows", type=_positive, default=None, metavar="N")
    p.add_argument("--epochs", type=_positive, default=DEFAULTS.epochs)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--l2-lambda", type=float, default=DEFAULTS.l2_lambda)
    p.add_argument(
        "--denoise", choices=["none", "mean", "median"], default=DEFAULTS.preprocess.denoise
    )
    p.add_argument("--kernel", type=_positive, default=DEFAULTS.preprocess.kernel)
    p.add_argument(
        "--architecture",
        choices=list(ARCHITECTURES),
        default=DEFAULTS.architecture,
        help=f"the network (default {DEFAULTS.architecture})",
    )
    p.add_argument(
        "--detectors",
        type=_names,
        default=list(DEFAULTS.detectors),
        metavar="NAME,...",
        help=f"fused detectors, in order (default {','.join(DEFAULTS.detectors)}; "
        f"known: {','.join(DETECTORS)})",
    )
    p.add_argument(
        "--machines",
        default=",".join(DEFAULTS.machines),
        metavar="GLOB,...",
        help="machine-id patterns the model serves (default *)",
    )
    p.add_argument(
        "--anomaly-column",
        default=None,
        metavar="NAME",
        help="a column of known anomalies (non-zero rows): their windows are kept out of the "
        "normal fit",
    )
    p.add_argument(
        "--anomaly-weight",
        type=float,
        default=DEFAULTS.anomaly_weight,
        metavar="W",
        help="with --anomaly-column: weight of a loss term that pushes the known anomalies' "
        "reconstruction error up (default 0: off; it did not help on SKAB)",
    )
    p.add_argument("--hidden", type=_positive, default=DEFAULTS.hidden, help="dense, vae")
    p.add_argument("--bottleneck", type=_positive, default=DEFAULTS.bottleneck)
    p.add_argument("--heads", type=_positive, default=None, help="attention (default 1)")
    p.add_argument("--beta", type=float, default=None, help="vae: weight of the KL term")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(handler=_offline("train_command"))

    p = commands.add_parser("score", help="score every window of a recording to CSV")
    p.add_argument("data", type=Path, metavar="DATA.csv")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, metavar="SCORES.csv")
    p.add_argument("--from-row", type=int, default=0, metavar="N")
    p.add_argument(
        "--episodes",
        type=Path,
        default=None,
        metavar="EPISODES.csv",
        help="also write the episodes the worker would publish (FAULTWATCH_EPISODE_* rules)",
    )
    p.add_argument("--machine-id", default=None, help="the episodes' machine (default: file name)")
    _add_data_options(p)
    p.set_defaults(handler=_offline("score_command"))

    p = commands.add_parser("inspect", help="describe a model file")
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=_offline("inspect_command"))

    p = commands.add_parser("simulate", help="write a simulated pump-line recording (CSV)")
    p.add_argument("--out", required=True, type=Path, metavar="DATA.csv")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--fault", choices=FAULTS, default=None, help="inject a fault half-way")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--plant",
        choices=SCENARIOS,
        default=None,
        help="weeks of a plant instead, a row a minute: every nuisance (drift, daily cycles, "
        "load changes, a restart, dropouts) and, but for `normal`, a labelled fault from day 9",
    )
    p.add_argument("--days", type=float, default=14.0, help="with --plant (default 14)")
    p.set_defaults(handler=_offline("simulate_command"))

    _add_kafka_commands(commands)
    return parser


def _add_kafka_commands(commands: argparse._SubParsersAction) -> None:
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
    p.add_argument("--limit", type=_positive, default=None, help="stop after N records")
    p.add_argument(
        "--as",
        dest="form",
        choices=["windows", "samples", "tags"],
        default="windows",
        help="what each record holds: a window, one time of a machine, or one channel's value",
    )
    disorder = p.add_argument_group("disorder of samples and tags (as gateways send them)")
    disorder.add_argument(
        "--jitter", type=_seconds, default=0.0, metavar="SECONDS",
        help="send each record up to this much data time after its time",
    )  # fmt: skip
    disorder.add_argument(
        "--shuffle-within", type=_seconds, default=0.0, metavar="SECONDS",
        help="shuffle the records within blocks of this much data time",
    )  # fmt: skip
    disorder.add_argument(
        "--late-share", type=_share, default=0.0, metavar="F",
        help="hold this share of records back past FAULTWATCH_INPUT_GRACE_SECONDS: late",
    )  # fmt: skip
    disorder.add_argument("--seed", type=int, default=0, help="of the disorder")
    p.add_argument("--from-topic", default=None, help="copy a range of this topic instead")
    p.add_argument("--from-offset", type=_offset, default=None, help="first offset, each partition")
    p.add_argument("--to-offset", type=_offset, default=None, help="end offset (exclusive)")
    p.add_argument("--since", default=None, help="e.g. 2h, 30m or an RFC 3339 time")
    p.add_argument("--until", default=None, help="e.g. 1h or an RFC 3339 time")
    _add_data_options(p)
    p.set_defaults(handler=_replay)

    _add_episode_commands(commands)

    from worker import service

    p = commands.add_parser("run", help="run the Kafka worker (settings from FAULTWATCH_*)")
    service.add_arguments(p)
    p.set_defaults(handler=service.main)

    p = commands.add_parser("demo", help="everything on an embedded broker, then a summary")
    p.add_argument("--keep-running", action="store_true", help="stay up for exploring")
    p.set_defaults(handler=_demo)


def _add_episode_commands(commands: argparse._SubParsersAction) -> None:
    from cli import episodes

    server = {"default": None, "help": "default: FAULTWATCH_BOOTSTRAP_SERVERS"}
    p = commands.add_parser("mute", help="mute a machine (or 'press-*'): scored, no episodes")
    p.add_argument("machine", metavar="MACHINE|PATTERN")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--for", dest="duration", type=episodes.duration, help="e.g. 2h, 30m, 1d")
    span.add_argument("--until", type=episodes.moment, help="an RFC 3339 time")
    p.add_argument("--reason", required=True, help="why, for the operators who see it")
    p.add_argument("--bootstrap-servers", **server)
    p.set_defaults(handler=episodes.mute_command)

    p = commands.add_parser("unmute", help="lift a mute written for this machine or pattern")
    p.add_argument("machine", metavar="MACHINE|PATTERN")
    p.add_argument("--bootstrap-servers", **server)
    p.set_defaults(handler=episodes.unmute_command)

    p = commands.add_parser("episodes", help="the open episodes and the muted machines")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--bootstrap-servers", **server)
    p.set_defaults(handler=episodes.episodes_command)

    p = commands.add_parser("label", help="an operator's word on an episode (control topic)")
    p.add_argument("episode_id", metavar="EPISODE_ID")
    p.add_argument("--as", dest="label", required=True, choices=list(LABELS))
    p.add_argument("--code", default=None, help="with --as fault: the fault's code")
    p.add_argument("--note", default=None, help="free text for whoever reads it next")
    p.add_argument("--by", default=None, help="who labels (default: the user name)")
    p.add_argument("--bootstrap-servers", **server)
    p.set_defaults(handler=_retraining("cli.labels", "label_command"))

    p = commands.add_parser(
        "retrain", help="candidates from labelled history; --promote only the better ones"
    )
    p.add_argument(
        "--from-topic",
        required=True,
        metavar="TOPIC",
        help="the input topic: windows, samples or tags",
    )
    p.add_argument("--models", required=True, type=Path, metavar="DIR", help="model directory")
    p.add_argument("--since", default="14d", help="history to learn from (default 14d)")
    p.add_argument(
        "--promote", action="store_true", help="put a candidate in service if it is better"
    )
    p.add_argument("--report", type=Path, default=None, help="default: DIR/.retrain/report.json")
    p.add_argument("--epochs", type=_positive, default=DEFAULTS.epochs)
    p.add_argument("--seed", type=int, default=None, help="default: the live model's")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.add_argument("--bootstrap-servers", **server)
    p.set_defaults(handler=_retraining("cli.retrain", "retrain_command"))

    p = commands.add_parser("promote", help="put the model a promotion replaced back")
    p.add_argument(
        "--rollback", required=True, metavar="MODEL", help="DIR/NAME.fwm, or NAME with --models"
    )
    p.add_argument("--models", type=Path, default=None, metavar="DIR")
    p.set_defaults(handler=_retraining("cli.retrain", "promote_command"))


def _add_training_topic(p: argparse.ArgumentParser) -> None:
    """`train --from-topic`: contract windows read back from Kafka instead of DATA files."""
    topic = p.add_argument_group("training from a topic (instead of DATA.csv)")
    topic.add_argument("--from-topic", default=None, metavar="TOPIC", help="its windows")
    topic.add_argument("--since", default=None, help="e.g. 24h, 30m or an RFC 3339 time")
    topic.add_argument("--until", default=None, help="e.g. 1h or a time (default: now)")
    topic.add_argument(
        "--from-offset", type=_offset, default=None, help="first offset, each partition"
    )
    topic.add_argument("--to-offset", type=_offset, default=None, help="end offset (exclusive)")
    topic.add_argument(
        "--exclude-episodes",
        action="store_true",
        help="leave out windows inside an episode (events topic) or a mute (control topic)",
    )
    topic.add_argument("--events-topic", default=None, help="default: FAULTWATCH_EVENTS_TOPIC")
    topic.add_argument("--control-topic", default=None, help="default: FAULTWATCH_CONTROL_TOPIC")
    topic.add_argument(
        "--bootstrap-servers", default=None, help="default: FAULTWATCH_BOOTSTRAP_SERVERS"
    )


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-column", default=None, help="default: the first column")
    p.add_argument(
        "--ignore-columns",
        default="anomaly,changepoint",
        type=_names,
        help="label columns to drop (comma separated)",
    )


def _offline(name: str):
    """A handler of cli.offline, imported when its command runs."""

    def handler(args: argparse.Namespace) -> int:
        from cli import offline

        return getattr(offline, name)(args)

    return handler


def _retraining(module: str, name: str):
    """A handler of cli.labels or cli.retrain, imported when its command runs."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return handler


def _replay(args: argparse.Namespace) -> int:
    from cli import replay

    return replay.command(args)


def _demo(args: argparse.Namespace) -> int:
    try:
        from demo import run
    except ImportError as exc:
        raise FaultwatchError(
            f"faultwatch demo needs the demo extras ({exc.name} is missing): "
            "pip install 'faultwatch[demo]', or run `make demo` in a checkout"
        ) from None
    return run.main(keep_running=args.keep_running)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _offset(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an offset, 0 or more, got {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seconds, got {text}") from None
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
