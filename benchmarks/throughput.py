"""Throughput and latency of the worker on the embedded broker, beside the limits it works under.

One run, on one broker, with one model and one set of records, measures:
  1. raw consume: kafka-python reading the input topic without decoding (the transport's limit),
     and reading it while decoding each poll (no scoring): what one process can reach at most
     with these two libraries, since both hold the interpreter lock;
  2. in-process: decoding, scoring and the whole batch logic on the same records (compute limit);
  3. the worker, end to end: windows/s from the input topic to committed offsets, between 10 %
     and 90 % of a backlog (offsets read from the group by an admin client, as a lag
     exporter would), publishing episodes (the default) and one event per anomalous window
     (FAULTWATCH_EVENTS=windows): the episode stage's cost;
  4. produce-to-score latency p50/p99 at a steady share of that rate (score records on), beside
     the broker alone (one hop) and a relay that polls, sends, flushes and commits like the
     worker but does no work (two hops): the floor of the worker's path on this broker;
  5. the worker's peak resident memory (VmHWM);
  6. two worker processes in one group against one;
  7. samples and tags (FAULTWATCH_INPUT_FORMAT): the raw consume rate of those records, the
     worker's committed records/s and CPU/record on them, the share of the batch logic's time
     spent on the assembly state records, and the memory of 100,000 machines' assembly state.
Records follow the message contract: 8 simulated pump channels, the model's default window,
values with 6 significant digits (as `faultwatch replay` sends a CSV's cells).
Numbers are noisy on a shared machine: compare only figures from the same run.

    .venv/bin/python benchmarks/throughput.py                  # about 1.5 minutes on 2 cores
    .venv/bin/python benchmarks/throughput.py --records 10000 --latency-seconds 5
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from cli.replay import encode_window, reading_records  # noqa: E402
from demo.broker import EmbeddedBroker, create_topics  # noqa: E402
from model import artifact as artifact_io  # noqa: E402
from model.scoring import Scorer  # noqa: E402
from model.simulator import CHANNELS, simulate  # noqa: E402
from model.training import TrainConfig, train  # noqa: E402
from worker.consumer import consumer_options, fetch_options  # noqa: E402
from worker.control import MuteTable  # noqa: E402
from worker.inputs.assembler import Grid, Machine, Rules  # noqa: E402
from worker.inputs.family import AssemblyFamily  # noqa: E402
from worker.inputs.stage import ReadingStage  # noqa: E402
from worker.pipeline import Episodes, Pipeline, Topics  # noqa: E402
from worker.publisher import producer_options  # noqa: E402
from worker.service import pipeline_for  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.state import EpisodeState  # noqa: E402

MACHINES = 8
# DESIGN.md, one run on this kind of machine with 125 x 8 windows (9.4 KB records).
REFERENCES = [("hand-written kafka-python loop", 1_000.0), ("idiomatic Quix Streams app", 2_000.0)]


@dataclass(frozen=True)
class Record:
    """A consumed record as the pipeline reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Run:
    """One measured run: its rate, and CPU time per record (steadier on a shared machine)."""

    rate: float  # records/s between 10 % and 90 % of the backlog
    cpu_us: float  # CPU microseconds per record, all threads of the process(es)
    peak_rss_mb: list[float] = field(default_factory=list)  # each worker process
    assignments: int = 0  # partition assignments the workers logged


# ---------------------------------------------------------------- the model and the records


def train_model(window: int, epochs: int, path: Path) -> Scorer:
    """The default architecture (hidden 512, bottleneck 32), trained briefly on a normal run."""
    run = simulate(3_000, seed=100)
    recording = run.recording(Path("simulated.csv"))
    config = TrainConfig(window=window, epochs=epochs, patience=epochs)
    artifact_io.save(train([recording], config).artifact, path)
    return Scorer.load(path)


def make_records(count: int, window: int) -> list[tuple[bytes, bytes]]:
    """(key, value) windows of MACHINES pumps, side by side in time; one pump develops a leak."""
    per_machine = -(-count // MACHINES)
    streams = []
    for m in range(MACHINES):
        fault = "leak" if m == MACHINES - 1 else None
        run = simulate(per_machine + window - 1, seed=m, fault=fault)
        values = np.array([[float(f"{v:.6g}") for v in row] for row in run.values])
        streams.append((f"pump-{m + 1}", run, values))
    records = []
    for k in range(per_machine):
        for machine, run, values in streams:
            end = k + window
            value = encode_window(machine, run.timestamps[end - 1], CHANNELS, values[k:end])
            records.append((machine.encode(), value))
    return records[:count]


def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], partitions: int
) -> float:
    """Send every record and wait for the acknowledgements; returns records/s.

    Each machine's windows go to partition (machine number mod partitions): with only
    MACHINES keys, hashing could leave one worker of two with most of the backlog.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=2**20)
    started = time.perf_counter()
    for i, (key, value) in enumerate(records):  # machines take turns: record i is machine i % M
        producer.send(topic, key=key, value=value, partition=i % MACHINES % partitions)
    producer.flush(timeout=120)
    rate = len(records) / (time.perf_counter() - started)
    producer.close()
    return rate


def make_readings(count: int, form: str) -> list[tuple[bytes, bytes]]:
    """(key, value) sample or tag records of MACHINES pumps, side by side in time."""
    per_record = 1 if form == "samples" else len(CHANNELS)
    rows = -(-count // (MACHINES * per_record))
    streams = []
    for m in range(MACHINES):
        run = simulate(rows, seed=m, fault="leak" if m == MACHINES - 1 else None)
        recording = run.recording(Path(f"pump-{m + 1}.csv"))
        recording.values[:] = [[float(f"{v:.6g}") for v in row] for row in recording.values]
        name = f"pump-{m + 1}"
        streams.append((name.encode(), reading_records(name, recording, form)))
    records = []
    for k in range(rows * per_record):
        for key, stream in streams:
            records.append((key, stream[k][1]))
    return records[:count]


# ---------------------------------------------------------------- 1. raw consume


def raw_consume(
    bootstrap: str,
    topic: str,
    count: int,
    settings: Settings,
    work: Callable[[list[bytes]], object] | None = None,
) -> Run:
    """Records/s between 10 % and 90 % of the topic, read without a group.

    Without `work` the values are not even looked at; with it, each poll's values go to it.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **fetch_options(settings)
    )
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    progress, cpu = Progress(count), Progress(count)
    seen = 0
    while seen < count:
        polled = consumer.poll(timeout_ms=1_000)
        if work is not None and polled:
            work([record.value for batch in polled.values() for record in batch])
        for batch in polled.values():
            seen += len(batch)
        progress.add(time.perf_counter(), seen)
        cpu.add(time.process_time(), seen)  # this process: the poll loop and kafka's IO thread
    consumer.close(autocommit=False)
    return Run(progress.rate(), 1e6 / cpu.rate())


# ---------------------------------------------------------------- 2. in-process limits


def in_process(
    scorer: Scorer, records: list[tuple[bytes, bytes]], settings: Settings, repeat: int = 3
) -> tuple[float, float, float, float, float]:
    """Windows/s of decoding, of scoring and of the whole batch logic, in poll-sized batches,
    with one event per anomalous window, with episodes (state records included) and with
    episodes whose baselines do not adapt (FAULTWATCH_ADAPT_SECONDS=0: the baselines' cost).

    Each is the best of `repeat` passes: on a shared machine, the least disturbed one.
    """
    torch.set_num_threads(settings.torch_threads)
    pipeline = pipeline_for(scorer, settings)
    state = EpisodeState(settings.episode_config(), "in", "bench", lambda partitions: {})
    episodes = pipeline_for(scorer, settings, Episodes(state, MuteTable()))
    fixed_config = replace(settings.episode_config(), adapt_seconds=0.0)
    fixed_state = EpisodeState(fixed_config, "in", "bench", lambda partitions: {})
    fixed = pipeline_for(scorer, settings, Episodes(fixed_state, MuteTable()))
    size = settings.max_poll_records
    batches = [
        [Record("in", 0, i + j, key, value) for j, (key, value) in enumerate(records[i : i + size])]
        for i in range(0, len(records), size)
    ]
    values = [[r.value for r in batch] for batch in batches]
    decoded = [pipeline.decoder.decode_batch(v) for v in values]
    pipeline.process(batches[0])  # warm-up

    def rate(work: Callable[[int], object]) -> float:
        best = math.inf
        for _ in range(repeat):
            started = time.perf_counter()
            for i in range(len(batches)):
                work(i)
            best = min(best, time.perf_counter() - started)
        return len(records) / best

    decode = rate(lambda i: pipeline.decoder.decode_batch(values[i]))
    score = rate(lambda i: scorer.score(decoded[i].windows))
    # The two batch logics in turns, batch by batch, so a busy neighbour slows both alike;
    # episodes start each pass from no state (each pass is a new run over the same offsets).
    spent = [0.0, 0.0, 0.0]
    for _ in range(repeat):
        state.forget([0])
        fixed_state.forget([0])
        for i in range(len(batches)):
            for k, logic in enumerate((pipeline, episodes, fixed)):
                started = time.perf_counter()
                logic.process(batches[i])
                spent[k] += time.perf_counter() - started
    process, with_episodes, without_baselines = (repeat * len(records) / t for t in spent)
    return decode, score, process, with_episodes, without_baselines


def in_process_readings(
    scorer: Scorer, records: list[tuple[bytes, bytes]], form: str, settings: Settings
) -> tuple[float, float]:
    """Records/s of the whole batch logic on samples or tags (assembly, scoring, episodes,
    state records), and the share of that time spent writing the state records (the
    families' save and the changelog's encoding, per partition and batch)."""
    torch.set_num_threads(settings.torch_threads)
    family = AssemblyFamily(Rules())
    state = EpisodeState(
        settings.episode_config(), "in", "bench", lambda partitions: {}, families=(family,)
    )
    stage = ReadingStage(form, family, settings.max_record_bytes)
    topics = Topics("events", "dlq", None, "state")
    pipeline = Pipeline(scorer, topics, 3, Episodes(state, MuteTable(), family), readings=stage)
    size = settings.max_poll_records
    batches = [
        [Record("in", 0, i + j, key, value) for j, (key, value) in enumerate(records[i : i + size])]
        for i in range(0, len(records), size)
    ]
    finish, spent = state.finish, [0.0]

    def timed(partition: int, through: int) -> list:
        started = time.perf_counter()
        try:
            return finish(partition, through)
        finally:
            spent[0] += time.perf_counter() - started

    state.finish = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    for batch in batches:
        pipeline.process(batch)
    total = time.perf_counter() - started
    return len(records) / total, spent[0] / total


def assembly_memory_mb(machines: int, window: int) -> float:
    """Resident memory of `machines` machines' assembly state (each: W-1 closed rows, the
    grace's open buckets, last values), as the worker holds it between batches."""
    channels = list(CHANNELS)
    step, grace = 1_000_000, 5
    template = Machine(
        Grid(tuple(channels), window, step),
        latest=1_700_000_000 * step,
        closed=1_699_999_994,
        open={
            1_699_999_995 + i: ([1.0 + i] * len(channels), [0] * len(channels))
            for i in range(grace + 1)
        },
        last_value=[1.0] * len(channels),
        last_bucket=[1_699_999_994] * len(channels),
        rows=np.arange((window - 1) * len(channels), dtype=np.float64).reshape(window - 1, -1),
        last_window=1_699_999_994,
    )
    doc = template.to_dict()
    gc.collect()
    before = _rss_mb()
    held = {f"machine-{i}": Machine.from_dict(doc) for i in range(machines)}
    gc.collect()
    after = _rss_mb()
    assert len(held) == machines
    return after - before


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------- 3, 5, 6. the worker


class Progress:
    """(time, records done) samples; the rate between 10 % and 90 % of `total`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.samples: list[tuple[float, int]] = []

    def add(self, when: float, done: int) -> None:
        self.samples.append((when, done))

    def at(self, share: float) -> float:
        """Time the count crossed share x total, interpolated between two samples."""
        goal = share * self.total
        previous = self.samples[0]
        for sample in self.samples:
            if sample[1] >= goal:
                (t0, n0), (t1, n1) = previous, sample
                return t1 if n1 == n0 else t0 + (t1 - t0) * (goal - n0) / (n1 - n0)
            previous = sample
        raise ValueError(f"never reached {share:.0%} of {self.total}")

    def rate(self) -> float:
        return 0.8 * self.total / (self.at(0.9) - self.at(0.1))


class Workers:
    """`faultwatch run` subprocesses of one group, logging to files."""

    def __init__(self, env: dict[str, str], count: int, logs: Path, name: str) -> None:
        self.logs = [logs / f"{name}-{i}.log" for i in range(count)]
        self.processes = []
        for log in self.logs:
            with log.open("w") as err:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "cli", "run"],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise SystemExit(f"worker exited {process.returncode}:\n{log.read_text()[-3000:]}")

    def peak_rss_mb(self) -> list[float]:
        """VmHWM of each live worker (psutil-free: /proc)."""
        peaks = []
        for process in self.processes:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        return peaks

    def cpu_seconds(self) -> float:
        """User and system time of the workers so far, all their threads."""
        total = 0
        for process in self.processes:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def assignments(self) -> int:
        """How many partition assignments the workers logged (one each: no rebalance mid-run)."""
        return sum(log.read_text().count("partitions assigned") for log in self.logs)

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_env(bootstrap: str, model: Path, group: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTWATCH_")}
    env |= {
        "FAULTWATCH_BOOTSTRAP_SERVERS": bootstrap,
        "FAULTWATCH_MODEL_PATH": str(model),
        "FAULTWATCH_GROUP_ID": group,
        "FAULTWATCH_METRICS_PORT": "0",
        "FAULTWATCH_SESSION_TIMEOUT_MS": "6000",
        "FAULTWATCH_HEARTBEAT_INTERVAL_MS": "1000",
        "PYTHONPATH": str(ROOT),
    }
    return env | {f"FAULTWATCH_{k.upper()}": v for k, v in settings.items()}


def end_to_end(
    bootstrap: str,
    env: dict[str, str],
    partitions: list[TopicPartition],
    count: int,
    processes: int,
    logs: Path,
) -> Run:
    """Windows/s committed between 10 % and 90 % of the backlog, by the group's offsets."""
    group = env["FAULTWATCH_GROUP_ID"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    workers = Workers(env, processes, logs, group)
    progress, cpu = Progress(count), Progress(count)
    deadline = time.monotonic() + 60 + count / 500
    try:
        while True:
            offsets = admin.list_group_offsets({group: partitions})[group]
            done = sum(max(0, o.offset) for o in offsets.values())  # -1: none committed yet
            progress.add(time.perf_counter(), done)
            cpu.add(workers.cpu_seconds(), done)
            if done >= count:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{group}: {done} of {count} committed before the deadline")
            workers.check_alive()
            time.sleep(0.02)
        peaks = workers.peak_rss_mb()
    finally:
        workers.stop()
        admin.close()
    return Run(progress.rate(), 1e6 / cpu.rate(), peaks, workers.assignments())


# ---------------------------------------------------------------- 4. latency

Key = tuple[int, int]  # (partition, offset) of an input record


@dataclass
class Latency:
    """Send-to-arrival delays at a steady rate, and the cores spent meanwhile."""

    delays: np.ndarray  # seconds, one per input record
    load_cpu: float  # cores of this process: the paced producer and the reader
    worker_cpu: float = 0.0  # cores of the worker, when there is one

    def percentiles_ms(self) -> tuple[float, float, float]:
        if not len(self.delays):
            return math.nan, math.nan, math.nan
        p50, p99, top = np.percentile(self.delays * 1000, [50, 99, 100])
        return float(p50), float(p99), float(top)


def latency(
    bootstrap: str,
    send_to: str,
    read_from: str,
    key_of: Callable[[object], Key],
    records: list[tuple[bytes, bytes]],
    rate: float,
    seconds: float,
    workers: Workers | None = None,
) -> Latency:
    """Send to `send_to` at `rate` records/s; time each one's arrival in `read_from`.

    `key_of` names the input record a record read back stands for: itself on the same topic,
    the source of a score record. A few hundred records first warm the path up, unmeasured.
    """
    sent: dict[Key, float] = {}
    arrived: dict[Key, float] = {}
    stop = threading.Event()
    reader = threading.Thread(target=_read, args=(bootstrap, read_from, key_of, arrived, stop))
    reader.start()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    try:
        warm = 200  # the group join and first batches
        _send(producer, send_to, records[:warm], {})
        _wait(lambda: len(arrived) >= warm, 60, "the warm-up records", workers)
        arrived.clear()
        total = int(rate * seconds)
        started = time.perf_counter()
        load_cpu = time.process_time()
        worker_cpu = workers.cpu_seconds() if workers else 0.0
        done = 0
        while done < total:
            due = min(total, int((time.perf_counter() - started) * rate)) - done
            batch = [records[(warm + done + i) % len(records)] for i in range(due)]
            _send(producer, send_to, batch, sent)
            done += due
            time.sleep(0.002)
        producer.flush(timeout=30)
        _wait(lambda: len(arrived) >= total, 30, "every record back", workers)
        elapsed = time.perf_counter() - started
        load_cpu = (time.process_time() - load_cpu) / elapsed
        worker_cpu = (workers.cpu_seconds() - worker_cpu) / elapsed if workers else 0.0
    finally:
        stop.set()
        reader.join()
        producer.close()
    delays = np.array([arrived[k] - sent[k] for k in sent if k in arrived])
    return Latency(delays, load_cpu, worker_cpu)


def run_relay(bootstrap: str, source: str, target: str) -> None:
    """The worker's Kafka path with no decoding or scoring: its latency floor on this broker.

    Polls with the worker's consumer settings, sends one small record per input naming its
    source (as a score record does), flushes with the worker's producer settings, commits.
    Runs in its own process until terminated.
    """
    settings = Settings()
    options = consumer_options(settings) | {
        "group_id": "bench-relay",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
    }
    consumer = KafkaConsumer(source, bootstrap_servers=bootstrap, **options)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, **producer_options(settings.max_request_bytes)
    )
    while True:
        polled = consumer.poll(timeout_ms=500)
        for batch in polled.values():
            for record in batch:
                origin = {"partition": record.partition, "offset": record.offset}
                producer.send(target, key=record.key, value=json.dumps({"source": origin}).encode())
        if polled:
            producer.flush()
            consumer.commit()


def _send(producer: KafkaProducer, topic: str, records: list, sent: dict[Key, float]) -> None:
    for key, value in records:
        at = time.time()
        producer.send(topic, key=key, value=value).add_callback(
            lambda meta, at=at: sent.__setitem__((meta.partition, meta.offset), at)
        )


def _read(
    bootstrap: str,
    topic: str,
    key_of: Callable[[object], Key],
    arrived: dict[Key, float],
    stop: threading.Event,
) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    while not stop.is_set():
        for batch in consumer.poll(timeout_ms=50).values():
            now = time.time()
            for record in batch:
                arrived[key_of(record)] = now
    consumer.close(autocommit=False)


def itself(record) -> Key:
    return record.partition, record.offset


def source_of(record) -> Key:
    source = json.loads(record.value)["source"]
    return source["partition"], source["offset"]


def _wait(
    condition: Callable[[], bool], timeout: float, what: str, workers: Workers | None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if workers:
            workers.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- the run and the table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30_000, help="backlog size")
    parser.add_argument("--window", type=int, default=TrainConfig().window)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the model")
    parser.add_argument("--load", type=float, default=0.3, help="latency load, share of e2e rate")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--skip-two", action="store_true", help="no two-process run")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this folder")
    parser.add_argument(
        "--readings", type=int, default=40_000, help="sample and tag records (0: skip 7)"
    )
    parser.add_argument("--state-machines", type=int, default=100_000, help="7. memory of")
    parser.add_argument("--readings-only", action="store_true", help="7. alone")
    args = parser.parse_args()
    settings = Settings()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="faultwatch-bench-"))
    logs.mkdir(parents=True, exist_ok=True)

    say(f"training the model (window {args.window}, {args.epochs} epochs)")
    model = logs / "model.fwm"
    scorer = train_model(args.window, args.epochs, model)
    say(f"making {args.records} records")
    records = make_records(args.records, args.window)
    r = Results(record_bytes=float(np.mean([len(v) for _, v in records[:1000]])))
    # As the worker after its start-up: the collector no longer walks the records and torch's
    # objects on each full pass, which would bill this process's decoding for them.
    gc.freeze()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        topics = {
            "input": "bench.windows",
            "latency": "bench.latency",
            "plain": "bench.plain",
            "events": "bench.events",
            "scores": "bench.scores",
            "dlq": "bench.dead-letters",
            "relay-in": "bench.relay-in",
            "relay-out": "bench.relay-out",
            "state": "bench.state",
            "state-0": "bench.state-0",
            "state-1": "bench.state-1",
            "latency-state": "bench.latency-state",
            "control": "bench.control",
        }
        partitions = {t: 1 for t in topics.values()}
        read_by_groups = ("input", "latency", "plain", "relay-in", "latency-state")
        read_by_groups += ("state", "state-0", "state-1")
        partitions |= {topics[name]: args.partitions for name in read_by_groups}
        create_topics(bootstrap, partitions)
        inputs = [TopicPartition(topics["input"], p) for p in range(args.partitions)]
        out = {
            "events_topic": topics["events"],
            "dlq_topic": topics["dlq"],
            "control_topic": topics["control"],
        }
        if args.readings_only:
            readings_section(r, bootstrap, scorer, model, args, settings, out, logs)
            print_rows(readings_rows(r, args), args, settings)
            return 0
        say("producing the backlog")
        r.produce = produce(bootstrap, topics["input"], records, args.partitions)
        say("1. raw consume")
        r.raw = raw_consume(bootstrap, topics["input"], len(records), settings)
        say("1. consume and decode, no scoring")
        decoder = pipeline_for(scorer, settings).decoder
        r.consume_decode = raw_consume(
            bootstrap, topics["input"], len(records), settings, decoder.decode_batch
        )
        say("2. in-process decode and score")
        r.decode, r.score, r.compute, r.compute_episodes, r.compute_fixed = in_process(
            scorer, records[:10_000], settings
        )
        state = {"state_topic": topics["state"]}
        # Each mode twice, in turns, keeping each one's least disturbed run: on a shared
        # machine one run of each can differ by more than the episode stage costs.
        windows_runs, episodes_runs = [], []
        for attempt in range(2):
            say(f"3. one worker, end to end, events=windows ({attempt + 1} of 2)")
            env = worker_env(
                bootstrap,
                model,
                f"bench-windows-{attempt}",
                input_topic=topics["input"],
                events="windows",
                **out,
            )
            windows_runs.append(end_to_end(bootstrap, env, inputs, len(records), 1, logs))
            say(f"3. one worker, end to end, episodes ({attempt + 1} of 2)")
            env = worker_env(
                bootstrap,
                model,
                f"bench-one-{attempt}",
                input_topic=topics["input"],
                state_topic=f"{topics['state']}-{attempt}",
                **out,
            )
            episodes_runs.append(end_to_end(bootstrap, env, inputs, len(records), 1, logs))
        r.one_windows = max(windows_runs, key=lambda run: run.rate)
        r.one = max(episodes_runs, key=lambda run: run.rate)
        if not args.skip_two:
            say("6. two workers in one group")
            env = worker_env(
                bootstrap, model, "bench-two", input_topic=topics["input"], **out, **state
            )
            r.two = end_to_end(bootstrap, env, inputs, len(records), 2, logs)
        r.latency_rate = rate = args.load * r.one.rate
        seconds = args.latency_seconds
        say(f"4. the broker's own latency at {rate:.0f} records/s for {seconds:g} s")
        r.broker_latency = latency(
            bootstrap, topics["plain"], topics["plain"], itself, records, rate, seconds
        )
        say(f"4. a relay's latency (the worker's Kafka path, no work) at {rate:.0f} records/s")
        relay = multiprocessing.get_context("spawn").Process(
            target=run_relay, args=(bootstrap, topics["relay-in"], topics["relay-out"])
        )
        relay.start()
        try:
            r.relay_latency = latency(
                bootstrap,
                topics["relay-in"],
                topics["relay-out"],
                source_of,
                records,
                rate,
                seconds,
            )
        finally:
            relay.terminate()
            relay.join()
        say(f"4. the worker's latency at {rate:.0f} windows/s for {seconds:g} s")
        env = worker_env(
            bootstrap,
            model,
            "bench-latency",
            input_topic=topics["latency"],
            scores_topic=topics["scores"],
            state_topic=topics["latency-state"],
            **out,
        )
        workers = Workers(env, 1, logs, "bench-latency")
        try:
            r.latency = latency(
                bootstrap,
                topics["latency"],
                topics["scores"],
                source_of,
                records,
                rate,
                seconds,
                workers,
            )
        finally:
            workers.stop()
        if args.readings:
            readings_section(r, bootstrap, scorer, model, args, settings, out, logs)
    print_table(r, args, settings)
    say(f"worker logs in {logs}")
    return 0


@dataclass
class ReadingsRun:
    records: int
    record_bytes: float
    raw: Run
    one: Run
    compute: float  # records/s of the batch logic, in process
    state_share: float  # of the batch logic's time: the state records


def readings_section(
    r: Results,
    bootstrap: str,
    scorer: Scorer,
    model: Path,
    args: argparse.Namespace,
    settings: Settings,
    out: dict[str, str],
    logs: Path,
) -> None:
    for form in ("samples", "tags"):
        r.readings[form] = readings_runs(bootstrap, scorer, model, form, args, settings, out, logs)
    say(f"7. memory of {args.state_machines:,} machines' assembly state")
    r.state_mb = assembly_memory_mb(args.state_machines, args.window)


def readings_runs(
    bootstrap: str,
    scorer: Scorer,
    model: Path,
    form: str,
    args: argparse.Namespace,
    settings: Settings,
    out: dict[str, str],
    logs: Path,
) -> ReadingsRun:
    """7. The same measures on sample or tag records: raw consume, in process, one worker."""
    say(f"7. {form}: making and producing {args.readings} records")
    records = make_readings(args.readings, form)
    size = float(np.mean([len(v) for _, v in records[:1000]]))
    topic, state = f"bench.{form}", f"bench.{form}-state"
    create_topics(bootstrap, {topic: args.partitions, state: args.partitions})
    produce(bootstrap, topic, records, args.partitions)
    say(f"7. {form}: raw consume")
    raw = raw_consume(bootstrap, topic, len(records), settings)
    say(f"7. {form}: in process")
    compute, share = in_process_readings(scorer, records[:20_000], form, settings)
    say(f"7. {form}: one worker, end to end")
    env = worker_env(
        bootstrap,
        model,
        f"bench-{form}",
        input_topic=topic,
        input_format=form,
        state_topic=state,
        **out,
    )
    inputs = [TopicPartition(topic, p) for p in range(args.partitions)]
    one = end_to_end(bootstrap, env, inputs, len(records), 1, logs)
    return ReadingsRun(len(records), size, raw, one, compute, share)


@dataclass
class Results:
    record_bytes: float
    produce: float = 0.0  # records/s
    raw: Run = field(default_factory=lambda: Run(0.0, 0.0))
    consume_decode: Run = field(default_factory=lambda: Run(0.0, 0.0))
    decode: float = 0.0  # windows/s in process
    score: float = 0.0
    compute: float = 0.0
    compute_episodes: float = 0.0
    compute_fixed: float = 0.0  # episodes without baseline adaptation
    one: Run = field(default_factory=lambda: Run(0.0, 0.0))
    one_windows: Run = field(default_factory=lambda: Run(0.0, 0.0))
    two: Run | None = None
    latency_rate: float = 0.0
    broker_latency: Latency | None = None  # records through the broker alone
    relay_latency: Latency | None = None  # records through a relay doing no work
    latency: Latency | None = None  # windows through the worker, score records back
    readings: dict[str, ReadingsRun] = field(default_factory=dict)  # 7. samples, tags
    state_mb: float = 0.0  # 7. RSS of --state-machines machines' assembly state


def print_table(r: Results, args: argparse.Namespace, settings: Settings) -> None:
    raw, one, compute = r.raw.rate, r.one.rate, r.compute
    kb = r.record_bytes / 1024
    rows = [
        ("", "rate", "CPU/record", ""),
        ("records", f"{args.records:,} x {kb:.1f} KB", "", f"window {args.window} x 8 channels"),
        ("producer (linger 20 ms, 1 MiB batches)", f"{r.produce:,.0f} rec/s", "", ""),
        (
            "1. raw consume, kafka-python",
            f"{raw:,.0f} rec/s",
            f"{r.raw.cpu_us:.0f} us",
            "transport limit",
        ),
        (
            "1. consume + decode, no scoring",
            f"{r.consume_decode.rate:,.0f} win/s",
            f"{r.consume_decode.cpu_us:.0f} us",
            f"{r.consume_decode.rate / raw:.2f} x raw consume: a ceiling for one process",
        ),
        (
            "2. decode (Decoder.decode_batch)",
            f"{r.decode:,.0f} win/s",
            f"{1e6 / r.decode:.0f} us",
            "",
        ),
        ("2. score (Scorer.score)", f"{r.score:,.0f} win/s", f"{1e6 / r.score:.0f} us", ""),
        (
            "2. decode + score + outputs",
            f"{compute:,.0f} win/s",
            f"{1e6 / compute:.0f} us",
            "compute limit (Pipeline.process), events=windows",
        ),
        (
            "2. decode + score + episodes + state",
            f"{r.compute_episodes:,.0f} win/s",
            f"{1e6 / r.compute_episodes:.0f} us",
            f"episodes (default): rate {r.compute_episodes / compute - 1:+.1%} "
            "(the episode stage's cost)",
        ),
        (
            "2. the same, baselines not adapting",
            f"{r.compute_fixed:,.0f} win/s",
            f"{1e6 / r.compute_fixed:.0f} us",
            f"FAULTWATCH_ADAPT_SECONDS=0: the baselines cost "
            f"{r.compute_fixed / r.compute_episodes - 1:+.1%} of the rate",
        ),
        (
            "3. worker, 1 process, events=windows",
            f"{r.one_windows.rate:,.0f} win/s",
            f"{r.one_windows.cpu_us:.0f} us",
            f"{r.one_windows.rate / raw:.2f} x raw consume",
        ),
        (
            "3. worker, 1 process (episodes)",
            f"{one:,.0f} win/s",
            f"{r.one.cpu_us:.0f} us",
            f"{one / raw:.2f} x raw consume, {one / r.compute_episodes:.2f} x compute limit; "
            f"vs events=windows: rate {one / r.one_windows.rate - 1:+.1%}, "
            f"CPU/record {r.one.cpu_us / r.one_windows.cpu_us - 1:+.1%}",
        ),
    ]
    if r.two is not None:
        note = f"{r.two.rate / one:.2f} x one"
        if r.two.assignments > 2:
            note += f" ({r.two.assignments} assignments: a rebalance ran mid-backlog)"
        rows.append(
            (
                "6. worker, 2 processes, 1 group",
                f"{r.two.rate:,.0f} win/s",
                f"{r.two.cpu_us:.0f} us",
                note,
            )
        )
    worker_ms, broker_ms = r.latency.percentiles_ms(), r.broker_latency.percentiles_ms()
    relay_ms = r.relay_latency.percentiles_ms()
    rows += [
        (
            "4. produce-to-consume, broker alone",
            "p50 {:.0f} ms, p99 {:.0f} ms".format(*broker_ms),
            "",
            f"same rate and length, one hop (the worker's path: two), max {broker_ms[2]:.0f} ms",
        ),
        (
            "4. produce-to-relayed, no work",
            "p50 {:.0f} ms, p99 {:.0f} ms".format(*relay_ms),
            "",
            f"poll, send, flush, commit: the worker's Kafka path, max {relay_ms[2]:.0f} ms",
        ),
        (
            f"4. produce-to-score latency, {args.load:.0%} load",
            "p50 {:.0f} ms, p99 {:.0f} ms".format(*worker_ms),
            "",
            f"{r.latency_rate:,.0f} win/s, scores on, max {worker_ms[2]:.0f} ms; worker "
            f"{r.latency.worker_cpu:.2f} cores, load generator {r.latency.load_cpu:.2f} cores",
        ),
        ("5. peak RSS of the worker", f"{max(r.one.peak_rss_mb):.0f} MB", "", "VmHWM, backlog run"),
    ]
    rows += [
        (
            f"reference: {name}",
            f"~{rate:,.0f} win/s",
            "",
            f"worker {one / rate:.1f} x (theirs: 125 x 8)",
        )
        for name, rate in REFERENCES
    ]
    rows += readings_rows(r, args)
    print_rows(rows, args, settings)


def readings_rows(r: Results, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """7. The rows of samples and tags."""
    rows: list[tuple[str, str, str, str]] = []
    for form, run in r.readings.items():
        unit = "8 channels each" if form == "samples" else "one channel each"
        rows += [
            (
                f"7. {form}: raw consume",
                f"{run.raw.rate:,.0f} rec/s",
                f"{run.raw.cpu_us:.0f} us",
                f"{run.records:,} x {run.record_bytes:.0f} B, {unit}",
            ),
            (
                f"7. {form}: batch logic in process",
                f"{run.compute:,.0f} rec/s",
                f"{1e6 / run.compute:.0f} us",
                f"state records: {run.state_share:.1%} of its time",
            ),
            (
                f"7. {form}: worker, 1 process",
                f"{run.one.rate:,.0f} rec/s",
                f"{run.one.cpu_us:.0f} us",
                f"{run.one.rate / run.raw.rate:.2f} x raw consume of the same records "
                f"(goal >= 0.5); peak RSS {max(run.one.peak_rss_mb):.0f} MB",
            ),
        ]
    if r.state_mb:
        rows.append(
            (
                "7. assembly state in memory",
                f"{r.state_mb:,.0f} MB",
                "",
                f"{args.state_machines:,} machines, window {args.window} x 8, 5 s grace",
            )
        )
    return rows


def print_rows(
    rows: list[tuple[str, str, str, str]], args: argparse.Namespace, settings: Settings
) -> None:
    print()
    print(
        f"faultwatch throughput: {os.cpu_count()} cores, torch threads {settings.torch_threads}, "
        f"max_poll_records {settings.max_poll_records}, {args.partitions} input partitions"
    )
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)).rstrip())
    print()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
