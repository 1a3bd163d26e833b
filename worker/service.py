"""`faultwatch run`: settings, logging, the model, the broker, the loop, and the exit code."""

# Exit codes: 0 stopped cleanly (SIGTERM, SIGINT or --idle-exit); 1 the model, the broker or
# a batch failed for good (one line on stderr); 2 a setting is invalid (one line on stderr).

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from typing import Any

import torch
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from model.errors import FaultwatchError
from model.scoring import Scorer
from worker import settings as settings_io
from worker.clocks import WallClock
from worker.control import ControlReader, MuteTable
from worker.errors import BrokerError, SettingsError, WorkerError
from worker.health import Health, HealthServer
from worker.inputs.assembler import Rules
from worker.inputs.family import AssemblyFamily
from worker.inputs.stage import ReadingStage, interval_loader
from worker.kafka import client as kafka_client
from worker.kafka.client import COMMIT_TIMEOUT, POLL_TIMEOUT, Consumer, Producer
from worker.kafka.loop import Loop
from worker.kafka.publisher import CLOSE_TIMEOUT, FLUSH_TIMEOUT, Publisher
from worker.logs import configure_logging
from worker.metrics import Metrics
from worker.models import Lifecycle, ModelStore
from worker.pipeline import Episodes, Pipeline, Topics
from worker.retraining import RetrainCollector
from worker.routing import Routes
from worker.settings import ENV_PREFIX, FLAGS, Settings
from worker.shadow import Shadow
from worker.state import ChangelogReader, EpisodeState

log = logging.getLogger(__name__)

SEND_BLOCK = 30.0  # seconds a send may wait on a full buffer or missing metadata, at most
# The longest a SIGTERM can take, for the orchestrator's grace period (terminationGracePeriod-
# Seconds, stop_grace_period): the poll in hand, the batch in hand (sends blocked on a full
# buffer or missing metadata, the flush, the commit), then closing both clients. A clean stop
# takes about a second; a shorter grace is safe for the data (an unfinished batch is read
# again after the restart), it only repeats that batch.
SHUTDOWN_SECONDS = math.ceil(
    POLL_TIMEOUT
    + SEND_BLOCK
    + FLUSH_TIMEOUT
    + COMMIT_TIMEOUT
    + kafka_client.CLOSE_TIMEOUT
    + CLOSE_TIMEOUT
)


METAVARS = {
    "bootstrap_servers": "HOST:PORT,...",
    "model_path": "MODEL",
    "metrics_port": "PORT",
    "startup_timeout": "SECONDS",
    "idle_exit": "SECONDS",
    "log_format": "{text,json}",
    "log_level": "LEVEL",
    "group_id": "GROUP",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `run` flags; each one overrides its FAULTWATCH_* variable."""
    for field, flag in FLAGS.items():
        info = Settings.model_fields[field]
        default = "off" if info.default in (None, "") else info.default
        parser.add_argument(
            flag,
            dest=field,
            default=None,
            metavar=METAVARS.get(field, "TOPIC"),
            help=f"{info.description} (env {ENV_PREFIX}{field.upper()}, default {default})",
        )


def main(args: argparse.Namespace) -> int:
    """Run the worker until it is told to stop; returns the exit code."""
    try:
        settings = settings_io.load({field: getattr(args, field, None) for field in FLAGS})
    except SettingsError as exc:
        sys.stderr.write(f"faultwatch run: error: {exc}\n")
        return 2
    configure_logging(settings)
    try:
        reason = serve(settings)
    except (FaultwatchError, KafkaError) as exc:
        log.error("stopped: %s", exc)
        return 1
    log.info("stopped reason=%s", reason)
    return 0


def serve(
    settings: Settings,
    stop: threading.Event | None = None,
    registry: CollectorRegistry | None = None,
) -> str:
    """Load the models, serve the probes, consume until stopped; returns why it stopped."""
    stop = stop or threading.Event()
    torch.set_num_threads(settings.torch_threads)
    readings = settings.input_format != "windows"
    store = ModelStore(settings.model_path, interval_loader() if readings else Scorer.load)
    live = store.open()
    for name in settings_io.unknown_variables():
        log.warning("unknown variable ignored name=%s", name)
    log.info("starting models=%s %s", live.describe(), settings.summary())
    if live.every_machine and live.models[0].patterns != ("*",):
        log.info(
            "a model file serves every machine: its patterns %s route only in a directory",
            ",".join(live.models[0].patterns),
        )
    registry = registry or process_registry()
    # A loop blocked longer than a session (a frozen broker answers nothing) is not ready.
    health = Health(blocked_after=settings.session_timeout_ms / 1000)
    metrics = Metrics(registry)
    if store.directory:  # the retrain job's counts, written beside the models it promotes
        registry.register(RetrainCollector(settings.model_path))
    reload = threading.Event()  # SIGHUP: re-read the model paths between two batches
    shadow_store = (
        ModelStore(settings.shadow_model_path, may_empty=True)
        if settings.shadow_model_path
        else None
    )
    models = Lifecycle(
        store,
        shadow_store,
        settings.model_reload_seconds,
        apply=lambda live, shadow: None,  # the pipeline's, once it exists
        failed=metrics.model_reload_failures.inc,
        requested=reload,
    )
    shadow = models.open_shadow() if shadow_store is not None else None
    metrics.set_models(live, shadow)
    metrics.ready.set_function(lambda: float(health.ready))
    server = _start_server(settings, health, registry)
    _on_signals(stop, health, reload)
    try:
        return _consume(settings, live, shadow, models, metrics, health, stop)
    finally:
        if server:
            server.stop()


def _consume(
    settings: Settings,
    live: Routes,
    shadow: Routes | None,
    models: Lifecycle,
    metrics: Metrics,
    health: Health,
    stop: threading.Event,
) -> str:
    consumer, producer = connect(settings)
    publisher = Publisher(producer)
    readers: list[ChangelogReader | ControlReader] = []
    try:
        check_topics(consumer, settings)
        episodes = None
        if settings.events == "episodes":
            episodes, readers = episode_stage(settings, metrics.control_skipped)
            episodes.state.on_skip = lambda reason, n: metrics.state_records_skipped.labels(
                reason
            ).inc(n)
            metrics.muted_machines.set_function(episodes.mutes.muted_machines)
            metrics.mutes.set_function(lambda: len(episodes.mutes.active()))
            metrics.episodes_open.set_function(lambda: episodes.state.open_now)
            if episodes.assembly is not None:
                metrics.readings_open_buckets.set_function(episodes.assembly.open_buckets)
                metrics.readings_machines.set_function(episodes.assembly.machines)
        pipeline = pipeline_for(live, settings, episodes, shadow)

        def apply(live: Routes | None, shadow: Routes | None) -> None:
            if live is not None:
                pipeline.serve(live)
            if shadow is not None and pipeline.shadow is not None:
                pipeline.shadow = Shadow(shadow, pipeline.shadow.topic)
            metrics.set_models(live, shadow)

        models.apply = apply
        loop = Loop(
            consumer, publisher, pipeline, metrics, health, settings, stop=stop, models=models
        )
        reason = loop.run()
    finally:
        for reader in readers:
            reader.close()
        consumer.close()
        publisher.close()
    log.info("shutdown %s", loop.totals)
    return reason


def process_registry() -> CollectorRegistry:
    """A registry of its own (so `serve` can run twice in a process) with the process series."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def connect(settings: Settings) -> tuple[Consumer, Producer]:
    """Both clients of FAULTWATCH_KAFKA_CLIENT, or BrokerError naming the bootstrap address
    once the start-up timeout has passed."""
    deadline = time.monotonic() + settings.startup_timeout

    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    consumer = kafka_client.open_consumer(settings, left())
    try:
        producer = kafka_client.open_producer(settings, left())
    except BrokerError:
        consumer.close()
        raise
    return consumer, producer


def check_topics(consumer: Consumer, settings: Settings) -> None:
    """The worker creates no topic: a missing one is a deployment mistake, said at once."""
    needed = [settings.input_topic, settings.events_topic, settings.dlq_topic]
    needed += [settings.scores_topic] if settings.scores_topic else []
    needed += [settings.shadow_topic] if settings.shadow_topic else []
    if settings.events == "episodes":
        needed += [settings.state_topic, settings.control_topic]
    existing = consumer.topics()
    missing = [topic for topic in needed if topic not in existing]
    if missing:
        raise BrokerError(
            f"topic {', '.join(missing)} not found (or not authorized) at "
            f"{settings.bootstrap_servers}: create it before starting the worker"
        )
    if settings.events == "episodes":
        inputs, states = existing[settings.input_topic], existing[settings.state_topic]
        if inputs != states:
            raise BrokerError(
                f"state topic {settings.state_topic} has {states} partitions, input topic "
                f"{settings.input_topic} has {inputs}: they must be equal (each input "
                "partition's episode state lives in the state partition of the same number)"
            )


def pipeline_for(
    models: Routes | Scorer,
    settings: Settings,
    episodes: Episodes | None = None,
    shadow: Routes | None = None,
) -> Pipeline:
    """The batch logic for these models and topics (episodes: None in `windows` mode)."""
    topics = Topics(
        settings.events_topic,
        settings.dlq_topic,
        settings.scores_topic or None,
        settings.state_topic if episodes is not None else None,
    )
    readings = None
    if episodes is not None and episodes.assembly is not None:
        form = settings.input_format
        assert form != "windows"
        readings = ReadingStage(form, episodes.assembly, settings.max_record_bytes)
    return Pipeline(
        models,
        topics,
        settings.top_channels,
        episodes,
        max_record_bytes=settings.max_record_bytes,
        shadow=Shadow(shadow, settings.shadow_topic) if shadow is not None else None,
        clock=WallClock(settings.input_max_future_seconds),
        readings=readings,
    )


def episode_stage(
    settings: Settings, skipped: Counter | None = None
) -> tuple[Episodes, list[ChangelogReader | ControlReader]]:
    """The episode state (restored from the state topic) and the mutes (the control topic, read
    to its end before the first batch, then followed on a thread of its own)."""
    options = settings.kafka_options() | {
        "group_id": None,
        "enable_auto_commit": False,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,  # an empty partition answers sooner
    }
    try:
        changelog = ChangelogReader(
            KafkaConsumer(**options), settings.state_topic, settings.startup_timeout
        )
        counted = None if skipped is None else (lambda reason: skipped.labels(reason).inc())
        table = MuteTable(skipped=counted)
        control = ControlReader(KafkaConsumer(**options), settings.control_topic, table)
    except (KafkaError, OSError) as exc:
        raise BrokerError(
            f"cannot reach the Kafka broker at {settings.bootstrap_servers}: {exc}"
        ) from exc
    assembly = None
    if settings.input_format != "windows":
        rules = Rules.of(
            settings.input_grace_seconds,
            settings.input_fill_limit,
            settings.input_max_future_seconds,
            settings.episode_silent_seconds,
        )
        assembly = AssemblyFamily(rules)
    state = EpisodeState(
        settings.episode_config(),
        settings.input_topic,
        settings.group_id,
        changelog,
        settings.top_channels,
        clock=WallClock(settings.input_max_future_seconds),
        families=(assembly,) if assembly is not None else (),
    )
    try:
        changelog.consumer.partitions_for_topic(settings.state_topic)  # connected before a restore
        control.start(settings.startup_timeout)
    except BrokerError:
        changelog.close()
        control.stop()
        raise
    return Episodes(state, control.table, assembly), [changelog, control]


def _start_server(
    settings: Settings, health: Health, registry: CollectorRegistry
) -> HealthServer | None:
    if not settings.metrics_port:
        return None
    try:
        server = HealthServer(health, registry, settings.metrics_port, settings.metrics_host)
    except OSError as exc:
        raise WorkerError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
            f"({exc.strerror})"
        ) from exc
    log.info("serving /metrics /healthz /readyz port=%d", server.port)
    return server.start()


def _on_signals(stop: threading.Event, health: Health, reload: threading.Event) -> None:
    """SIGTERM or SIGINT: finish the batch in hand, commit, exit 0; a second one kills.
    SIGHUP: re-read the model paths between two batches."""

    def handle(signum: int, frame: Any) -> None:
        log.info("shutdown requested signal=%s", signal.Signals(signum).name)
        health.set_not_ready("shutting down")
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    def hang_up(signum: int, frame: Any) -> None:
        reload.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handle)
        signal.signal(signal.SIGHUP, hang_up)
