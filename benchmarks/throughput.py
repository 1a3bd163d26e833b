"""Throughput and latency of the worker on the embedded broker, beside the limits it works under.

One run, on one broker, with one model and one set of records, measures for each Kafka client
(FAULTWATCH_KAFKA_CLIENT: kafka-python, confluent), runs of the two taking turns:
  1. raw consume: the client reading the input topic without decoding (the transport's limit),
     and reading it while decoding each poll (no scoring): what one process can reach at most
     with that client, since the decoder holds the interpreter lock;
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

    .venv/bin/python benchmarks/throughput.py                  # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/throughput.py --records 10000 --latency-seconds 5 --skip-two
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
from worker.control import MuteTable  # noqa: E402
from worker.inputs.assembler import Grid, Machine, Rules  # noqa: E402
from worker.inputs.family import AssemblyFamily  # noqa: E402
from worker.inputs.stage import ReadingStage  # noqa: E402
from worker.kafka import confluent  # noqa: E402
from worker.kafka.kafka_python import (  # noqa: E402
    consumer_options,
    fetch_options,
    producer_options,
)
from worker.pipeline import Episodes, Pipeline, Topics  # noqa: E402
from worker.service import pipeline_for  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.state import EpisodeState  # noqa: E402

MACHINES = 8
CLIENTS = ("kafka-python", "confluent")  # FAULTWATCH_KAFKA_CLIENT


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


def raw_consume_confluent(
    bootstrap: str,
    topic: str,
    count: int,
    settings: Settings,
    work: Callable[[list[bytes]], object] | None = None,
) -> Run:
    """The same with confluent-kafka: librdkafka fetches on its own threads, counted too."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as Assigned

    options = {"bootstrap.servers": bootstrap, "group.id": "bench-raw"}
    consumer = Consumer(options | {"enable.auto.commit": False} | confluent.fetch_options(settings))
    found = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([Assigned(topic, p, OFFSET_BEGINNING) for p in sorted(found)])
    progress, cpu = Progress(count), Progress(count)
    seen = 0
    while seen < count:
        messages = consumer.consume(settings.max_poll_records, 1.0)
        if work is not None and messages:
            work([m.value() for m in messages if m.error() is None])
        seen += sum(1 for m in messages if m.error() is None)
        progress.add(time.perf_counter(), seen)
        cpu.add(time.process_time(), seen)
    consumer.close()
    return Run(progress.rate(), 1e6 / cpu.rate())


RAW_CONSUME = {"kafka-python": raw_consume, "confluent": raw_consume_confluent}


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
        """Windows per CPU second (torch runs on this thread): what neighbours take is not ours."""
        best = math.inf
        for _ in range(repeat):
            started = time.process_time()
            for i in range(len(batches)):
                work(i)
            best = min(best, time.process_time() - started)
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
                started = time.process_time()
                logic.process(batches[i])
                spent[k] += time.process_time() - started
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
    key_of: Callable[[int, int, bytes], Key],
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
    # The load generator runs on librdkafka: at the rates a faster worker gets, kafka-python's
    # producer and reader in one process would queue the records themselves on 2 cores.
    producer = _LoadProducer(bootstrap)
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


def run_relay_confluent(bootstrap: str, source: str, target: str) -> None:
    """The same relay with confluent-kafka and the worker's librdkafka options."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as Assigned

    settings = Settings(session_timeout_ms=6000, heartbeat_interval_ms=1000)
    options = {"bootstrap.servers": bootstrap}
    consumer = Consumer(
        options | confluent.consumer_options(settings) | {"group.id": "bench-relay-confluent"}
    )
    producer = Producer(options | confluent.producer_options(settings.max_request_bytes))
    consumer.subscribe([source])
    while True:
        messages = [m for m in consumer.consume(settings.max_poll_records, 0.5) if not m.error()]
        for m in messages:
            origin = {"partition": m.partition(), "offset": m.offset()}
            producer.produce(target, json.dumps({"source": origin}).encode(), m.key())
        if messages:
            producer.flush()
            ends = {(m.topic(), m.partition()): m.offset() + 1 for m in messages}
            offsets = [Assigned(topic, p, offset) for (topic, p), offset in ends.items()]
            consumer.commit(offsets=offsets, asynchronous=False)


RELAY = {"kafka-python": run_relay, "confluent": run_relay_confluent}


class _LoadProducer:
    """A librdkafka producer sending at once (linger 1 ms), each record's send time kept."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Producer

        self.client = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})

    def send(self, topic: str, key: bytes, value: bytes, sent: dict[Key, float]) -> None:
        at = time.time()

        def delivered(error: object, message: object, at: float = at) -> None:
            if error is None:
                sent[message.partition(), message.offset()] = at  # type: ignore[attr-defined]

        self.client.produce(topic, value, key, on_delivery=delivered)
        self.client.poll(0)

    def flush(self, timeout: float) -> None:
        self.client.flush(timeout)

    def close(self) -> None:
        self.client.flush(10)


def _send(producer: _LoadProducer, topic: str, records: list, sent: dict[Key, float]) -> None:
    for key, value in records:
        producer.send(topic, key, value, sent)


def _read(
    bootstrap: str,
    topic: str,
    key_of: Callable[[int, int, bytes], Key],
    arrived: dict[Key, float],
    stop: threading.Event,
) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as Assigned

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-reader", "fetch.wait.max.ms": 10}
    )
    found = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([Assigned(topic, p, OFFSET_BEGINNING) for p in sorted(found)])
    while not stop.is_set():
        messages = consumer.consume(1000, 0.05)
        now = time.time()
        for m in messages:
            if m.error() is None:
                arrived[key_of(m.partition(), m.offset(), m.value())] = now
    consumer.close()


def itself(partition: int, offset: int, value: bytes) -> Key:
    return partition, offset


def source_of(partition: int, offset: int, value: bytes) -> Key:
    source = json.loads(value)["source"]
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
    r.clients = {client: ClientResults() for client in CLIENTS}
    # As the worker after its start-up: the collector no longer walks the records and torch's
    # objects on each full pass, which would bill this process's decoding for them.
    gc.freeze()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        topics = {
            "input": "bench.windows",
            "plain": "bench.plain",
            "events": "bench.events",
            "dlq": "bench.dead-letters",
            "control": "bench.control",
        }
        for client in CLIENTS:  # each client's latency runs on topics of its own
            topics |= {
                f"latency-{client}": f"bench.latency-{client}",
                f"latency-state-{client}": f"bench.latency-state-{client}",
                f"scores-{client}": f"bench.scores-{client}",
                f"relay-in-{client}": f"bench.relay-in-{client}",
                f"relay-out-{client}": f"bench.relay-out-{client}",
            }
        partitions = {t: 1 for t in topics.values()}
        read_by_groups = [n for n in topics if n.startswith(("input", "latency", "relay-in"))]
        partitions |= {topics[name]: args.partitions for name in read_by_groups}
        state_topics = [f"bench.state-{n}" for n in range(2 * len(CLIENTS) + 1)]
        partitions |= {t: args.partitions for t in state_topics}
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
        decoder = pipeline_for(scorer, settings).decoder
        for attempt in range(2):  # in turns, each client's least disturbed run kept
            for client in CLIENTS:
                say(f"1. raw consume, {client} ({attempt + 1} of 2)")
                c = r.clients[client]
                run = RAW_CONSUME[client](bootstrap, topics["input"], len(records), settings)
                c.raw = max(c.raw, run, key=lambda run: run.rate)
                say(f"1. consume and decode, no scoring, {client} ({attempt + 1} of 2)")
                run = RAW_CONSUME[client](
                    bootstrap, topics["input"], len(records), settings, decoder.decode_batch
                )
                c.consume_decode = max(c.consume_decode, run, key=lambda run: run.rate)
        say("2. in-process decode and score")
        r.decode, r.score, r.compute, r.compute_episodes, r.compute_fixed = in_process(
            scorer, records[:10_000], settings
        )
        states = iter(state_topics)
        # Each client and mode twice, in turns, keeping each one's least disturbed run: on a
        # shared machine one run of each can differ by more than the episode stage costs.
        for attempt in range(2):
            for client in CLIENTS:
                c = r.clients[client]
                if attempt == 0:
                    say(f"3. one worker, end to end, {client}, events=windows")
                    env = worker_env(
                        bootstrap,
                        model,
                        f"bench-windows-{client}",
                        input_topic=topics["input"],
                        events="windows",
                        kafka_client=client,
                        **out,
                    )
                    c.one_windows = end_to_end(bootstrap, env, inputs, len(records), 1, logs)
                say(f"3. one worker, end to end, {client}, episodes ({attempt + 1} of 2)")
                env = worker_env(
                    bootstrap,
                    model,
                    f"bench-one-{client}-{attempt}",
                    input_topic=topics["input"],
                    state_topic=next(states),
                    kafka_client=client,
                    **out,
                )
                run = end_to_end(bootstrap, env, inputs, len(records), 1, logs)
                c.one = max(c.one, run, key=lambda run: run.rate)
        if not args.skip_two:
            say("6. two workers in one group (kafka-python)")
            state = next(states)
            env = worker_env(
                bootstrap, model, "bench-two", input_topic=topics["input"], state_topic=state, **out
            )
            r.two = end_to_end(bootstrap, env, inputs, len(records), 2, logs)
        seconds = args.latency_seconds
        rate = args.load * r.clients["kafka-python"].one.rate
        say(f"4. the broker's own latency at {rate:.0f} records/s for {seconds:g} s")
        r.broker_latency = latency(
            bootstrap, topics["plain"], topics["plain"], itself, records, rate, seconds
        )
        for client in CLIENTS:
            c = r.clients[client]
            c.latency_rate = rate = args.load * c.one.rate
            say(f"4. a relay's latency, {client} (no work) at {rate:.0f} records/s")
            relay = multiprocessing.get_context("spawn").Process(
                target=RELAY[client],
                args=(bootstrap, topics[f"relay-in-{client}"], topics[f"relay-out-{client}"]),
            )
            relay.start()
            try:
                c.relay_latency = latency(
                    bootstrap,
                    topics[f"relay-in-{client}"],
                    topics[f"relay-out-{client}"],
                    source_of,
                    records,
                    rate,
                    seconds,
                )
            finally:
                relay.terminate()
                relay.join()
            say(f"4. the worker's latency, {client}, at {rate:.0f} windows/s for {seconds:g} s")
            env = worker_env(
                bootstrap,
                model,
                f"bench-latency-{client}",
                input_topic=topics[f"latency-{client}"],
                scores_topic=topics[f"scores-{client}"],
                state_topic=topics[f"latency-state-{client}"],
                kafka_client=client,
                **out,
            )
            workers = Workers(env, 1, logs, f"bench-latency-{client}")
            try:
                c.latency = latency(
                    bootstrap,
                    topics[f"latency-{client}"],
                    topics[f"scores-{client}"],
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


def _no_run() -> Run:
    return Run(0.0, 0.0)


@dataclass
class ClientResults:
    """What one Kafka client gave, for the windows input format."""

    raw: Run = field(default_factory=_no_run)
    consume_decode: Run = field(default_factory=_no_run)
    one: Run = field(default_factory=_no_run)  # episodes (the default)
    one_windows: Run = field(default_factory=_no_run)  # events=windows
    latency_rate: float = 0.0
    relay_latency: Latency | None = None  # records through a relay doing no work
    latency: Latency | None = None  # windows through the worker, score records back


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
    clients: dict[str, ClientResults] = field(default_factory=dict)
    decode: float = 0.0  # windows/s in process
    score: float = 0.0
    compute: float = 0.0
    compute_episodes: float = 0.0
    compute_fixed: float = 0.0  # episodes without baseline adaptation
    two: Run | None = None
    broker_latency: Latency | None = None  # records through the broker alone
    readings: dict[str, ReadingsRun] = field(default_factory=dict)  # 7. samples, tags
    state_mb: float = 0.0  # 7. RSS of --state-machines machines' assembly state


def client_rows(r: Results, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """The windows rows: one column pair per client (samples and tags rows follow the same)."""
    rows: list[tuple[str, ...]] = []
    cs = [r.clients[client] for client in CLIENTS]

    def row(label: str, cell: Callable[[ClientResults], tuple[str, str]]) -> None:
        rows.append((label, *(text for c in cs for text in cell(c))))

    row("1. raw consume (transport limit)", lambda c: (_rate(c.raw, "rec"), _cpu(c.raw)))
    row(
        "1. consume + decode, no scoring",
        lambda c: (_rate(c.consume_decode), f"{_cpu(c.consume_decode)}, "
                   f"{c.consume_decode.rate / c.raw.rate:.2f} x raw"),
    )  # fmt: skip
    row(
        "3. worker, 1 process, events=windows",
        lambda c: (_rate(c.one_windows), f"{_cpu(c.one_windows)}, "
                   f"{c.one_windows.rate / c.raw.rate:.2f} x raw"),
    )  # fmt: skip
    row(
        "3. worker, 1 process (episodes)",
        lambda c: (_rate(c.one), f"{_cpu(c.one)}, {c.one.rate / c.raw.rate:.2f} x raw"),
    )
    row(
        "4. produce-to-relayed, no work",
        lambda c: (_ms(c.relay_latency), f"at {c.latency_rate:,.0f}/s: the floor"),
    )
    row(
        f"4. produce-to-score, {args.load:.0%} load",
        lambda c: (
            _ms(c.latency),
            f"p99 {_p99(c.latency) / _p99(c.relay_latency):.2f} x the floor's",
        ),
    )
    row("5. peak RSS of the worker", lambda c: (f"{max(c.one.peak_rss_mb or [0]):.0f} MB", ""))
    return rows


def print_table(r: Results, args: argparse.Namespace, settings: Settings) -> None:
    kp, cf = r.clients["kafka-python"], r.clients["confluent"]
    kb = r.record_bytes / 1024
    print()
    print(
        f"faultwatch throughput: {os.cpu_count()} cores, torch threads {settings.torch_threads}, "
        f"max_poll_records {settings.max_poll_records}, {args.partitions} input partitions, "
        f"{args.records:,} records x {kb:.1f} KB (window {args.window} x 8 channels)"
    )
    head = ("windows (FAULTWATCH_INPUT_FORMAT=windows)", *(x for c in CLIENTS for x in (c, "")))
    _print([head, *client_rows(r, args)])
    # Samples and tags (FAULTWATCH_INPUT_FORMAT=samples|tags): with the default client for now;
    # client_rows on records of each format would give them both clients' columns.
    if r.readings:
        _print(
            [("samples and tags (kafka-python)", "rate", "CPU/record", ""), *readings_rows(r, args)]
        )
    shared = [
        ("in process, either client", "rate", "CPU/window", ""),
        ("producer (kafka-python, linger 20 ms)", f"{r.produce:,.0f} rec/s", "", ""),
        ("2. decode (Decoder.decode_batch)", _rate_of(r.decode), f"{1e6 / r.decode:.1f} us", ""),
        ("2. score (Scorer.score)", _rate_of(r.score), f"{1e6 / r.score:.1f} us", ""),
        (
            "2. decode + score + outputs",
            _rate_of(r.compute),
            f"{1e6 / r.compute:.1f} us",
            "compute limit (Pipeline.process), events=windows",
        ),
        (
            "2. decode + score + episodes + state",
            _rate_of(r.compute_episodes),
            f"{1e6 / r.compute_episodes:.1f} us",
            f"the episode stage: rate {r.compute_episodes / r.compute - 1:+.1%}",
        ),
        (
            "2. the same, baselines not adapting",
            _rate_of(r.compute_fixed),
            f"{1e6 / r.compute_fixed:.1f} us",
            f"FAULTWATCH_ADAPT_SECONDS=0: the baselines cost "
            f"{r.compute_fixed / r.compute_episodes - 1:+.1%} of the rate",
        ),
        ("4. produce-to-consume, broker alone", _ms(r.broker_latency), "", "one hop"),
    ]
    if r.two is not None:
        shared.append(
            (
                "6. worker, 2 processes, 1 group",
                _rate(r.two),
                _cpu(r.two),
                f"kafka-python, {r.two.rate / kp.one.rate:.2f} x one"
                + (f" ({r.two.assignments} assignments)" if r.two.assignments > 2 else ""),
            )
        )
    _print(shared)
    aims = [
        ("aims, from this run", "ratio", "aim", ""),
        (
            "worker (kafka-python) / raw kafka-python",
            f"{kp.one.rate / kp.raw.rate:.2f}",
            ">= 0.6",
            _met(kp.one.rate / kp.raw.rate >= 0.6),
        ),
        (
            "worker (confluent) / worker (kafka-python)",
            f"{cf.one.rate / kp.one.rate:.2f}",
            ">= 2",
            _met(cf.one.rate / kp.one.rate >= 2),
        ),
    ]
    for name, c in (("kafka-python", kp), ("confluent", cf)):
        ratio = _p99(c.latency) / _p99(c.relay_latency)
        aims.append((f"p99 produce-to-score / relay p99, {name}", f"{ratio:.2f}", "<= 1.5",
                     _met(ratio <= 1.5)))  # fmt: skip
    _print(aims)
    _print(breakdown(r))


def breakdown(r: Results) -> list[tuple[str, ...]]:
    """Where a window's CPU goes in each worker (episodes): the client's read, the decode,
    the model, the batch logic (outputs, episodes, state), and the rest (producing the
    outputs, committing, the loop), by difference with the worker's CPU per window."""
    rows = [("CPU per window, worker (episodes)", *CLIENTS)]
    parts = {
        "client: consume (raw consume's CPU)": lambda c: c.raw.cpu_us,
        "decode": lambda c: 1e6 / r.decode,
        "score": lambda c: 1e6 / r.score,
        "episodes, outputs, state": lambda c: (
            1e6 / r.compute_episodes
            - 1e6 / r.compute
            + 1e6 / r.compute
            - 1e6 / r.decode
            - 1e6 / r.score
        ),
    }
    known = {client: 0.0 for client in CLIENTS}
    for label, part in parts.items():
        cells = []
        for client in CLIENTS:
            us = part(r.clients[client])
            known[client] += us
            cells.append(f"{us:.1f} us")
        rows.append((label, *cells))
    rows.append(
        (
            "the rest: produce, flush, commit, loop",
            *(f"{r.clients[c].one.cpu_us - known[c]:.1f} us" for c in CLIENTS),
        )
    )
    rows.append(("worker, measured", *(f"{r.clients[c].one.cpu_us:.1f} us" for c in CLIENTS)))
    return rows


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
    _print([("samples and tags (kafka-python)", "rate", "CPU/record", ""), *rows])


def _print(rows: list[tuple[str, ...]]) -> None:
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)).rstrip())
    print()


def _rate(run: Run, unit: str = "win") -> str:
    return f"{run.rate:,.0f} {unit}/s"


def _rate_of(rate: float) -> str:
    return f"{rate:,.0f} win/s"


def _cpu(run: Run) -> str:
    return f"{run.cpu_us:.1f} us CPU"


def _ms(latency: Latency | None) -> str:
    if latency is None:
        return "-"
    return "p50 {:.0f} ms, p99 {:.0f} ms".format(*latency.percentiles_ms())


def _p99(latency: Latency | None) -> float:
    return latency.percentiles_ms()[1] if latency is not None else math.nan


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
