"""`faultwatch retrain` and `faultwatch promote --rollback`: the next model from labelled history,
put in service only when it is better, and the way back.

Per model file of the models directory: a candidate is trained as the live one was (its
architecture, detectors, window and machine patterns) on the windows of its machines since
`--since` (windows, or samples and tags assembled on the live model's grid as its workers
do), leaving out confirmed faults, open and unlabelled episodes and muted periods, and
keeping the episodes labelled `false-alarm` or `new-normal` as normal. Both models then
replay those machines' windows with the worker's episode rules (model/retraining.py). The
report goes to `.retrain/report.json` in the directory (names starting with `.` are not
served) with the candidates beside it, and the run's counts to `.retrain/metrics.prom`, which
every worker reading the directory serves on its /metrics (worker/retraining.py).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cli.episodes import check_topics, command_settings
from cli.labels import history
from cli.progress import Progress
from cli.replay import TopicRange, moment
from cli.topic_windows import (
    Collected,
    Window,
    assembly_rules,
    collect,
    exclude,
    mute_spans,
    read_topic,
    rebuild,
)
from model import artifact as artifact_io
from model import promotion
from model.artifact import Artifact
from model.episodes import EpisodeConfig
from model.errors import FaultwatchError
from model.recording import format_time
from model.retraining import HistoryEpisode, Replayed, replay_spans, verdict
from model.scoring import Scorer
from model.threshold import ThresholdRule
from model.training import TrainConfig, train
from worker.models import SUFFIX, ModelStore
from worker.routing import Served
from worker.settings import Settings

WORKDIR = ".retrain"  # in the models directory: hidden from the workers
REPORT = "report.json"
METRICS = "metrics.prom"
SHAPE_KEYS = ("input_dim", "window", "channels")  # a network config's fields set by the data
COUNTERS = ("runs", "promotions", "refusals", "rollbacks")


def retrain_command(args: argparse.Namespace) -> int:
    started = time.time()
    settings = command_settings(args)
    directory: Path = args.models
    if not directory.is_dir():
        raise FaultwatchError(f"--models {directory}: not a directory of model files")
    routes = ModelStore(directory).open()
    check_topics(settings, [args.from_topic, settings.events_topic, settings.control_topic])
    since = moment(args.since, "--since")
    with Progress(None, f"reading {args.from_topic}", "record", enabled=not args.quiet) as bar:
        span = TopicRange(since=since, until=datetime.now(UTC))
        records = read_topic(settings, args.from_topic, span, bar.update)
        # samples and tags: each machine's windows assembled on its live model's grid
        found = collect(records, ["*"], assembly_rules(settings), routes)
    control = list(read_topic(settings, settings.control_topic, TopicRange()))
    episodes = history(read_topic(settings, settings.events_topic, TopicRange()), control)
    mutes = mute_spans(iter(control))
    shadow = shadow_agreement(settings, since) if settings.shadow_topic else None

    by_model: dict[Served, dict[str, list[Window]]] = defaultdict(dict)
    for machine, windows in found.machines.items():
        served = routes.served(machine)
        if served is not None:
            by_model[served][machine] = windows
    work = directory / WORKDIR
    work.mkdir(exist_ok=True)
    config = settings.episode_config()
    entries = []
    for served in routes.models:
        entry = retrain_model(
            served, by_model.get(served, {}), episodes, mutes, config, args, work, shadow
        )
        entries.append(entry)
        _print_entry(entry)
    report = {
        "at": format_time(datetime.now(UTC).replace(microsecond=0)),
        "topic": args.from_topic,
        "since": format_time(since) if since else None,
        "models_dir": str(directory),
        "promote": args.promote,
        "records": found.records,
        "labels": dict(Counter(e.label for e in episodes if e.label)),
        "models": entries,
        "seconds": round(time.time() - started, 1),
    }
    path = args.report or work / REPORT
    _write_json(path, report)
    decisions = Counter(e["decision"] for e in entries)
    write_metrics(
        work / METRICS,
        {"runs": 1, "promotions": decisions["promoted"], "refusals": decisions["refused"]},
        last_run=time.time(),
        promoted=decisions["promoted"] > 0,
    )
    print(f"report written to {path}")
    return 0


def retrain_model(
    served: Served,
    machines: dict[str, list[Window]],
    episodes: list[HistoryEpisode],
    mutes: list,
    config: EpisodeConfig,
    args: argparse.Namespace,
    work: Path,
    shadow: dict[str, dict[str, Counter]] | None,
) -> dict[str, Any]:
    """One model's candidate: trained, replayed against the live model, promoted if better."""
    scorer = served.scorer
    shape = (scorer.window, len(scorer.channels))
    machines = {m: _usable(ws, shape) for m, ws in machines.items()}
    machines = {m: ws for m, ws in machines.items() if ws}
    entry: dict[str, Any] = {
        "model": served.name,
        "path": str(served.path),
        "live_version": served.version,
        "machines": sorted(machines),
        "windows": sum(len(ws) for ws in machines.values()),
        "shadow": _shadow_entry(shadow, served.version),
    }
    if not machines:
        return entry | _decision("skipped", [f"no windows of its machines in {args.from_topic}"])
    theirs = [e for e in episodes if e.machine_id in machines]
    left_out = {e.machine_id: [] for e in theirs}
    for e in theirs:
        if not e.normal:
            left_out[e.machine_id].append((e.start, e.end))
    training = Collected(machines={m: list(ws) for m, ws in machines.items()})
    dropped = exclude(training, {m: sorted(s) for m, s in left_out.items()}, mutes)
    recordings = []
    for machine, windows in sorted(training.machines.items()):
        recordings += rebuild(args.from_topic, machine, windows, list(scorer.channels))
    entry["training"] = {
        "windows": sum(len(ws) for ws in training.machines.values()),
        "left_out": dropped,
        "normal_episodes": sum(1 for e in theirs if e.normal),
    }
    if not recordings:
        return entry | _decision("skipped", ["no normal windows left to train on"])
    try:
        with Progress(
            args.epochs, f"training {served.name}", "epoch", enabled=not args.quiet
        ) as bar:
            result = train(
                recordings,
                candidate_config(scorer.artifact, args.epochs, args.seed),
                lambda epoch, loss, held: bar.update(1, loss=f"{loss:.4f}"),
            )
    except FaultwatchError as exc:
        return entry | _decision("skipped", [f"the candidate did not train: {exc}"])
    candidate_path = work / f"{served.name}{SUFFIX}"
    artifact_io.save(result.artifact, candidate_path)
    candidate = Scorer(result.artifact)
    entry["candidate_version"] = candidate.version
    entry["candidate_path"] = str(candidate_path)

    live, new = Replayed(), Replayed()
    confirmed: set[str] = set()
    with Progress(
        len(machines), f"replaying {served.name}", "machine", enabled=not args.quiet
    ) as bar:
        for machine, windows in sorted(machines.items()):
            times, values = _series(windows)
            mine = [e for e in theirs if e.machine_id == machine]
            seen = (float(times[0]), float(times[-1]))
            confirmed |= {e.episode_id for e in mine if e.label == "fault" and e.meets(seen)}
            live.add(replay_spans(scorer, machine, times, values, config), mine)
            new.add(replay_spans(candidate, machine, times, values, config), mine)
            bar.update(1)
    judged = verdict(live, new, len(confirmed))
    entry["evaluation"] = {
        "confirmed_faults": len(confirmed),
        "live": live.to_dict(),
        "candidate": new.to_dict(),
    }
    if not judged.better:
        return entry | _decision("refused" if args.promote else "not better", judged.reasons)
    if not args.promote:
        return entry | _decision("better", judged.reasons + ["not promoted: no --promote"])
    kept = promotion.promote(candidate_path, served.path)
    entry["candidate_path"], entry["previous_path"] = str(served.path), str(kept)
    return entry | _decision("promoted", judged.reasons)


def candidate_config(artifact: Artifact, epochs: int, seed: int | None) -> TrainConfig:
    """The live model's training settings, for a candidate of the same kind."""
    trained = artifact.training
    network = {k: v for k, v in artifact.config.to_dict().items() if k not in SHAPE_KEYS}
    sizes = {k: network.pop(k) for k in ("hidden", "bottleneck") if k in network}
    rule = trained.get("threshold_rule")
    return TrainConfig(
        window=artifact.window,
        epochs=epochs,
        seed=trained.get("seed", 0) if seed is None else seed,
        l2_lambda=trained.get("l2_lambda", TrainConfig.l2_lambda),
        architecture=artifact.architecture,
        network=network,
        **sizes,
        detectors=tuple(d.name for d in artifact.detectors),
        machines=artifact.machines,
        preprocess=artifact.preprocess,
        threshold=ThresholdRule(**rule) if isinstance(rule, dict) else ThresholdRule(),
    )


def shadow_agreement(settings: Settings, since: datetime | None) -> dict[str, dict[str, Counter]]:
    """live version -> candidate version -> counts of windows both scored, from the shadow
    topic (absent: no shadow run)."""
    found: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    try:
        records = list(read_topic(settings, settings.shadow_topic, TopicRange(since=since)))
    except FaultwatchError:
        return {}
    for record in records:
        try:
            document = json.loads(record.value or b"")
            live, flagged = document["live"], bool(document["anomaly"])
            counts = found[live["model_version"]][document["model_version"]]
        except (ValueError, KeyError, TypeError):
            continue
        counts["windows"] += 1
        counts["agree"] += flagged == bool(live["anomaly"])
        counts["candidate_only"] += flagged and not live["anomaly"]
        counts["live_only"] += bool(live["anomaly"]) and not flagged
    return found


def promote_command(args: argparse.Namespace) -> int:
    """`faultwatch promote --rollback MODEL`: the kept model back in service."""
    live = Path(args.rollback)
    if args.models is not None:
        name = args.rollback if args.rollback.endswith(SUFFIX) else args.rollback + SUFFIX
        live = args.models / name
    if live.suffix != SUFFIX:
        raise FaultwatchError(f"{live}: not a model file ({SUFFIX}) of a models directory")
    promotion.rollback(live)
    version = artifact_io.load(live).version
    write_metrics(live.parent / WORKDIR / METRICS, {"rollbacks": 1})
    print(f"rolled back {live}: version {version} in service again (workers re-read it)")
    return 0


def write_metrics(
    path: Path,
    counts: dict[str, int],
    last_run: float | None = None,
    promoted: bool = False,
) -> None:
    """The retrain job's Prometheus series (text format), counters carried over from the file."""
    values = read_metrics(path)
    for name in COUNTERS:
        key = f"faultwatch_retrain_{name}_total"
        values[key] = values.get(key, 0.0) + counts.get(name, 0)
    if last_run is not None:
        values["faultwatch_retrain_last_run_timestamp_seconds"] = last_run
        if promoted:
            values["faultwatch_retrain_last_promotion_timestamp_seconds"] = last_run
    lines = []
    for key, value in sorted(values.items()):
        kind = "counter" if key.endswith("_total") else "gauge"
        family = key.removesuffix("_total")
        lines += [
            f"# HELP {family} {HELP.get(family, 'faultwatch retrain')}",
            f"# TYPE {family} {kind}",
            f"{key} {value:.17g}",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


HELP = {
    "faultwatch_retrain_runs": "Retrain runs completed (faultwatch retrain).",
    "faultwatch_retrain_promotions": "Candidate models promoted into service by retrain.",
    "faultwatch_retrain_refusals": "Candidates refused by retrain --promote (not better).",
    "faultwatch_retrain_rollbacks": "Rollbacks by faultwatch promote --rollback.",
    "faultwatch_retrain_last_run_timestamp_seconds": "When the last retrain run completed.",
    "faultwatch_retrain_last_promotion_timestamp_seconds": "When retrain last promoted a model.",
}


def read_metrics(path: Path) -> dict[str, float]:
    """sample name -> value of a metrics file this module wrote ({} when there is none)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            try:
                values[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return values


def _usable(windows: list[Window], shape: tuple[int, int]) -> list[Window]:
    return [w for w in windows if w.values.shape == shape]


def _series(windows: list[Window]) -> tuple[np.ndarray, np.ndarray]:
    """A machine's windows in time order, each end time once: (B,) times, (B, W, C) values."""
    ordered: dict[float, Window] = {}
    for w in sorted(windows, key=lambda w: w.end):
        ordered.setdefault(w.end, w)
    times = np.array(list(ordered), dtype=np.float64)
    return times, np.stack([w.values for w in ordered.values()])


def _decision(decision: str, reasons: list[str]) -> dict[str, Any]:
    return {"decision": decision, "reasons": reasons}


def _shadow_entry(shadow: dict | None, version: str) -> dict[str, Any] | None:
    if not shadow or version not in shadow:
        return None
    runs = {}
    for candidate, counts in shadow[version].items():
        n = counts["windows"]
        runs[candidate] = dict(counts) | {"agreement": round(counts["agree"] / n, 4) if n else None}
    return runs


def _print_entry(entry: dict[str, Any]) -> None:
    head = f"{entry['model']} (live {entry['live_version']}"
    if "candidate_version" in entry:
        head += f", candidate {entry['candidate_version']}"
    print(f"{head}): {len(entry['machines'])} machines, {entry['windows']} windows")
    if "training" in entry:
        t = entry["training"]
        print(
            f"  trained on {t['windows']} windows ({t['left_out']} left out in faults, open or "
            f"unlabelled episodes and mutes; {t['normal_episodes']} dismissed or re-based "
            "episodes kept as normal)"
        )
    if "evaluation" in entry:
        e = entry["evaluation"]
        live, new = e["live"], e["candidate"]
        total = e["confirmed_faults"]
        print(
            f"  confirmed faults caught: live {live['confirmed_caught']}/{total}, candidate "
            f"{new['confirmed_caught']}/{total}"
        )
        print(f"  false episodes: live {_falses(live)}, candidate {_falses(new)}")
    for candidate, run in (entry.get("shadow") or {}).items():
        share = "n/a" if run["agreement"] is None else f"{run['agreement']:.1%}"
        print(f"  shadow {candidate}: agrees on {share} of {run['windows']} windows")
    print(f"  {entry['decision']}: {'; '.join(entry['reasons'])}")


def _falses(side: dict[str, Any]) -> str:
    parts = ", ".join(f"{n} {label}" for label, n in side["false_by_label"].items() if n)
    return f"{side['false_episodes']}" + (f" ({parts})" if parts else "")


def _write_json(path: Path, document: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(document, indent=2, default=_plain) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise FaultwatchError(f"{path}: cannot write the report ({exc.strerror})") from exc


def _plain(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return None
    return str(value)
