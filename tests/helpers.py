"""Test helpers around the real broker and the `faultwatch run` process; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
# A group join takes about session_timeout / 2 on Tansu: keep it short in tests.
FAST_GROUP = {"FAULTWATCH_SESSION_TIMEOUT_MS": "6000", "FAULTWATCH_HEARTBEAT_INTERVAL_MS": "1000"}


@dataclass(frozen=True)
class Record:
    """A consumed record as the pipeline sees it."""

    offset: int
    value: bytes | None
    key: bytes | None = b"pump-1"
    topic: str = "windows"
    partition: int = 3  # not 0: a partition number dropped on the way shows


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def window_value(machine_id: str, timestamp: str | float, values: Any, **extra: Any) -> bytes:
    """An input record's value per the message contract."""
    values = values.tolist() if hasattr(values, "tolist") else values
    document = {"machine_id": machine_id, "timestamp": timestamp, "values": values, **extra}
    return json.dumps(document).encode()


def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes | None, int | None]]
) -> list[tuple[int, int]]:
    """Send (key, value, partition) records; returns each one's (partition, offset)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=2**20)
    try:
        futures = [producer.send(topic, key=k, value=v, partition=p) for k, v, p in records]
        producer.flush(timeout=60)
        return [(m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)]
    finally:
        producer.close(timeout=10)


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[Any]:
    """Every record of `topic`, read without a group, up to each partition's high watermark."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
            highs = [consumer.highwater(tp) for tp in partitions]
            if None not in highs and all(
                consumer.position(tp) >= h for tp, h in zip(partitions, highs, strict=True)
            ):
                return records
        raise AssertionError(f"{topic}: not read to its end within {timeout} s")
    finally:
        consumer.close(autocommit=False)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offset of each partition (None: nothing committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def headers(record: Any) -> dict[str, bytes]:
    return dict(record.headers or [])


def worker_env(bootstrap: str, model: Path, **settings: object) -> dict[str, str]:
    """The environment of a test worker: FAULTWATCH_<NAME> for each keyword, short sessions."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTWATCH_")}
    env |= FAST_GROUP | {
        "FAULTWATCH_BOOTSTRAP_SERVERS": bootstrap,
        "FAULTWATCH_MODEL_PATH": str(model),
        "FAULTWATCH_METRICS_PORT": "0",
        "FAULTWATCH_STARTUP_TIMEOUT": "30",
        "PYTHONPATH": str(ROOT),
    }
    env |= {f"FAULTWATCH_{k.upper()}": str(v) for k, v in settings.items()}
    return env


@dataclass
class Worker:
    """A `faultwatch run` subprocess whose stderr goes to a file (no pipe to fill)."""

    process: subprocess.Popen
    log: Path

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"worker still running after {timeout} s:\n{self.stderr}"
            ) from None

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_worker(env: dict[str, str], log: Path, *args: str) -> Worker:
    command = [sys.executable, "-m", "cli", "run", *args]
    with log.open("w") as err:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    return Worker(process, log)


def run_worker(env: dict[str, str], log: Path, *args: str, timeout: float = 60.0) -> Worker:
    """Run `faultwatch run` until it exits by itself; the Worker holds the exit code."""
    worker = start_worker(env, log, *args)
    worker.wait(timeout)
    return worker


def run_until(
    env: dict[str, str], log: Path, done: Callable[[], Any], what: str, timeout: float = 90.0
) -> Worker:
    """Run `faultwatch run` until `done()` holds (a count reached, offsets committed), then
    SIGTERM it; the Worker holds the exit code. Exiting before that fails the test."""
    worker = start_worker(env, log)
    try:
        wait_for(lambda: worker.process.poll() is not None or done(), timeout, what, 0.5)
        if worker.process.poll() is not None:
            code = worker.process.returncode
            raise AssertionError(f"worker exited {code} before {what}:\n{worker.stderr}")
        worker.terminate()
    finally:
        worker.kill()  # only if it is still running: a failed wait
    return worker


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on localhost; (0, error) when nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something true; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def synthetic_values(count: int, window: int, shift: float = 0.0, seed: int = 0) -> list[bytes]:
    """`count` contract values of generated pump windows (stride 1); `shift` makes anomalies."""
    from tests.synthetic import normal_values  # the lead's generator, shared with model tests

    rows = normal_values(count + window - 1, seed=seed) + shift
    return [window_value("pump-1", 1_700_000_000 + i, rows[i : i + window]) for i in range(count)]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric_total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    """The sum of a metric's samples over all its label values (e.g. every model's)."""
    return sum(value for (sample, _), value in samples.items() if sample == name)


def windows_scored(port: int) -> float:
    """faultwatch_windows_scored_total of a running worker; 0 while its metrics do not answer."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        return 0.0
    return metric_total(metric_samples(body), "faultwatch_windows_scored_total")


def partitions_held(port: int) -> int:
    """Input partitions a ready worker holds; -1 while it does not answer or is not ready."""
    status, body = http_get(port, "/metrics")
    if status != 200 or http_get(port, "/readyz")[0] != 200:
        return -1
    return int(metric_samples(body).get(("faultwatch_assigned_partitions", ()), 0))


def kill_mid_stream(
    env: dict[str, str],
    bootstrap: str,
    topic: str,
    partitions: int,
    total: int,
    logs: Path,
    rounds: int,
    scored: int = 300,
) -> list[str]:
    """SIGKILL a worker `rounds` times, each once it has scored `scored` windows, asserting each
    kill lands mid-stream (the group's commits moved on but short of `total`); the killed logs.

    `env` keeps the last round's metrics port, for a final run to carry on with."""
    from demo.broker import free_port

    group = env["FAULTWATCH_GROUP_ID"]
    progress, killed = 0, []
    for round_ in range(rounds):
        port = free_port()
        env["FAULTWATCH_METRICS_PORT"] = str(port)
        worker = start_worker(env, logs / f"killed-{round_}.log")
        try:
            wait_for(lambda p=port: windows_scored(p) >= scored, 60, f"worker {round_} to score")
        finally:
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(timeout=10)
        assert worker.process.returncode == -signal.SIGKILL
        now = sum(o or 0 for o in committed(bootstrap, group, topic, partitions).values())
        assert progress < now < total, f"kill {round_} was not mid-stream: {now}"
        progress = now
        killed.append(worker.stderr)
    return killed
