"""`faultwatch demo`: the whole product on one machine, from a broker to a summary."""


# It starts an embedded broker, trains a model on simulated normal operation, starts a worker
# process, replays five pumps (one healthy, four developing faults) as samples (one record per
# pump and second: the worker builds the windows) faster than real time,
# prints anomaly episodes as they open and close, and ends with a summary by episode: per
# pump, when its episode opened, how long after the fault began, how long it lasted, its peak
# and the channels that carried it, and what was missed or falsely raised.

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from kafka import KafkaConsumer

from cli import replay
from demo.broker import EmbeddedBroker, create_topics, free_port
from model import artifact as artifact_io
from model.recording import parse_time
from model.simulator import Fault, simulate
from model.training import TrainConfig, train
from worker import settings as settings_io

TOPICS = {
    "input": "faultwatch.samples",
    "events": "faultwatch.events",
    "scores": "faultwatch.scores",
    "dlq": "faultwatch.dead-letters",
    "state": "faultwatch.state",
    "control": "faultwatch.control",
}
INPUT_PARTITIONS = 4
MACHINES: list[tuple[str, Fault | None]] = [
    ("pump-1", None),
    ("pump-2", "valve_closing"),
    ("pump-3", "rotor_imbalance"),
    ("pump-4", "leak"),
    ("pump-5", "dead_sensor"),
]
FAULT_OF = dict(MACHINES)
DEADLINE = 120.0  # seconds the demo waits for the worker after the replay


@dataclass(frozen=True)
class Plan:
    """The demo's sizes; tests run a shorter one."""

    train_rows: int = 1800  # 30 minutes of normal operation
    run_rows: int = 900  # 15 minutes per machine ...
    fault_start: int = 600  # ... with the fault from minute 10
    speed: float = 30.0  # replay at 30x real time: 15 minutes in 30 seconds
    epochs: int = 60


@dataclass
class Tally:
    """What the demo saw on the output topics: scores counted, episodes by machine."""

    fault_at: datetime  # every simulated run starts at the same time
    scored: Counter[str]
    anomalous: Counter[str]
    episodes: dict[str, dict[str, dict]]  # machine -> episode id -> its latest event


def main(keep_running: bool = False, out: TextIO = sys.stdout, plan: Plan = Plan()) -> int:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    with tempfile.TemporaryDirectory(prefix="faultwatch-demo-") as tmp, EmbeddedBroker() as broker:
        say(f"broker      embedded Kafka-compatible broker at {broker.bootstrap}")
        partitions = {topic: 1 for topic in TOPICS.values()}
        partitions[TOPICS["input"]] = partitions[TOPICS["state"]] = INPUT_PARTITIONS
        create_topics(broker.bootstrap, partitions)
        model_path, window = _train_model(Path(tmp), plan, say)
        port = free_port()
        worker = _start_worker(broker.bootstrap, model_path, port, Path(tmp) / "worker.log")
        say(f"worker      pid {worker.pid}, metrics at http://127.0.0.1:{port}/metrics")
        try:
            sent, tally = _replay_and_watch(broker.bootstrap, plan, window, keep_running, say)
            _summary(sent, tally, port, say)
            if sum(tally.scored.values()) < sent:
                say(
                    f"error       the worker did not score every window; its log:\n"
                    f"{_tail(Path(tmp) / 'worker.log')}"
                )
                return 1
            if keep_running:
                say(
                    "running     until Ctrl-C (the replay loops; broker "
                    f"{broker.bootstrap}, topics {', '.join(TOPICS.values())})"
                )
                _wait_forever()
        finally:
            _stop(worker)
    return 0


def _train_model(folder: Path, plan: Plan, say) -> tuple[Path, int]:
    """The model file and its window, which the replay cuts."""
    normal = simulate(plan.train_rows, seed=100)
    recording = normal.recording(folder / "normal.csv")
    say(f"training    autoencoder on {plan.train_rows // 60} minutes of simulated normal operation")
    result = train([recording], TrainConfig(epochs=plan.epochs, seed=0))
    path = folder / "demo.fwm"
    artifact_io.save(result.artifact, path)
    say(
        f"model       {result.artifact.version}: window {result.artifact.window}, "
        f"{result.windows_train} windows, {len(result.train_loss)} epochs, "
        f"threshold {result.artifact.threshold:.4g}, {result.seconds:.0f} s"
    )
    return path, result.artifact.window


def _start_worker(bootstrap: str, model: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "FAULTWATCH_BOOTSTRAP_SERVERS": bootstrap,
        "FAULTWATCH_INPUT_TOPIC": TOPICS["input"],
        "FAULTWATCH_EVENTS_TOPIC": TOPICS["events"],
        "FAULTWATCH_SCORES_TOPIC": TOPICS["scores"],
        "FAULTWATCH_DLQ_TOPIC": TOPICS["dlq"],
        "FAULTWATCH_STATE_TOPIC": TOPICS["state"],
        "FAULTWATCH_CONTROL_TOPIC": TOPICS["control"],
        "FAULTWATCH_EVENTS": "episodes",
        "FAULTWATCH_INPUT_FORMAT": "samples",  # one record per pump and second, as plants send
        "FAULTWATCH_GROUP_ID": "faultwatch-demo",
        "FAULTWATCH_MODEL_PATH": str(model),
        "FAULTWATCH_METRICS_PORT": str(port),
        "FAULTWATCH_SESSION_TIMEOUT_MS": "6000",  # a quick group join on the embedded broker
        "FAULTWATCH_HEARTBEAT_INTERVAL_MS": "1000",
    }
    command = [sys.executable, "-m", "cli", "run"]
    with log.open("wb") as sink:
        return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)


def _readings(plan: Plan) -> replay.ReadingStreams:
    """The five pumps' runs as samples: one record per pump and second."""
    machines = []
    for i, (machine, fault) in enumerate(MACHINES):
        run = simulate(plan.run_rows, seed=i + 1, fault=fault, fault_start=plan.fault_start)
        machines.append((machine, run.recording(Path(f"{machine}.csv"))))
    count = sum(len(recording) for _, recording in machines)
    return replay.ReadingStreams(machines, "samples", replay.Disorder(), count)


def _replay_and_watch(
    bootstrap: str, plan: Plan, window: int, keep_running: bool, say
) -> tuple[int, Tally]:
    readings = _readings(plan)
    settings = settings_io.load({"bootstrap_servers": bootstrap})
    # The worker closes a bucket once a reading `grace` later has come: the last ones of a
    # single pass stay open, so their windows are not expected.
    still_open = int(settings.input_grace_seconds) + 1
    total = sum(len(r) - window + 1 - still_open for _, r in readings.machines)
    say(
        f"replay      {len(readings.machines)} pumps, {readings.count} samples (one a second "
        f"each) at {plan.speed:.0f}x real time, {total} windows built by the worker; faults "
        f"start at minute {plan.fault_start // 60}: "
        + ", ".join(f"{m} {f}" for m, f in MACHINES if f)
    )
    producer = replay.make_producer(settings)
    sender = threading.Thread(
        target=replay.replay_readings,
        args=(readings, TOPICS["input"], producer),
        kwargs={"speed": plan.speed, "loops": None if keep_running else 1},
        daemon=True,
    )
    sender.start()
    consumer = KafkaConsumer(
        TOPICS["events"],
        TOPICS["scores"],
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    fault_at = parse_time(readings.machines[0][1].timestamps[plan.fault_start])
    tally = Tally(fault_at, Counter(), Counter(), {})
    deadline = time.monotonic() + plan.run_rows / plan.speed + DEADLINE
    try:
        while sum(tally.scored.values()) < total and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    _watch(record, tally, say)
    finally:
        consumer.close()
        if not keep_running:
            sender.join(timeout=10)
            producer.close(timeout=5)
    return total, tally


def _watch(record, tally: Tally, say) -> None:
    doc = json.loads(record.value)
    machine = doc["machine_id"]
    if record.topic == TOPICS["scores"]:
        tally.scored[machine] += 1
        tally.anomalous[machine] += bool(doc["anomaly"])
        return
    episodes = tally.episodes.setdefault(machine, {})
    episodes[doc["episode_id"]] = doc
    top = ", ".join(f"{c['channel']} {c['share']:.0%}" for c in doc["top_channels"])
    if doc["kind"] == "opened":
        say(
            f"OPENED      {machine} at {doc['timestamp']}: score {doc['score']:.3g} "
            f"(threshold {doc['threshold']:.3g}); top channels {top}"
        )
    elif doc["kind"] == "closed":
        say(
            f"CLOSED      {machine} at {doc['ended_at']} ({doc['close_reason']}) after "
            f"{_duration(doc['duration_seconds'])}, peak {doc['peak_score']:.3g}"
        )


def _summary(sent: int, tally: Tally, port: int, say) -> None:
    scored = sum(tally.scored.values())
    count = sum(len(e) for e in tally.episodes.values())
    say(
        f"\nsummary     {scored} of {sent} windows scored, {sum(tally.anomalous.values())} "
        f"anomalous, {count} episodes"
    )
    for machine, fault in MACHINES:
        episodes = sorted(tally.episodes.get(machine, {}).values(), key=lambda e: e["started_at"])
        before = [fault is None or parse_time(e["started_at"]) < tally.fault_at for e in episodes]
        false = [e for e, early in zip(episodes, before, strict=True) if early]
        true = [e for e in episodes if e not in false]
        if fault is None:
            verdict = "no fault injected" + (
                f", {len(false)} FALSE EPISODES" if false else ", quiet (no episode)"
            )
        elif true:
            first = true[0]
            opened = parse_time(first["opened_at"])
            delay = (opened - tally.fault_at).total_seconds()
            lasted = _duration(first["duration_seconds"])
            if first["kind"] == "closed":
                lasted += f" (closed: {first['close_reason']})"
            else:
                lasted = f"at least {lasted} (still open at the end)"
            top = ", ".join(f"{c['channel']} {c['share']:.0%}" for c in first["top_channels"])
            verdict = (
                f"{fault} detected {delay:.0f} s after it began: episode opened at "
                f"{first['opened_at'][11:19]}, lasted {lasted}, peak "
                f"{first['peak_score']:.3g}, {first['windows']} anomalous windows; {top}"
            )
            if len(true) > 1:
                verdict += f" (+{len(true) - 1} more episodes)"
            if false:
                verdict += f"; {len(false)} false episodes before it began"
        elif false:
            verdict = f"{fault}: {len(false)} false episodes before it began, then MISSED"
        else:
            verdict = f"{fault} MISSED"
        say(f"  {machine:<8} {verdict}")
    say(f"metrics     http://127.0.0.1:{port}/metrics")


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest} s"


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
