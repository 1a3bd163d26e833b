"""The loop in-process on the real broker: failed publishes and refused commits re-read a batch."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry

from model.scoring import Scorer
from tests.helpers import committed, produce, read_topic, synthetic_values, unique, wait_for
from worker import service
from worker import settings as settings_io
from worker.errors import PublishError
from worker.health import Health
from worker.kafka import client as kafka_client
from worker.kafka.client import CommitRefused
from worker.kafka.kafka_python import consumer_options
from worker.kafka.loop import Loop
from worker.kafka.publisher import Publisher
from worker.metrics import Metrics
from worker.routing import Routes

DONE = {0: 20, 1: 20}  # the input's end offsets: 40 records over 2 partitions
MODEL = {"model": "model"}  # a model given as a Scorer: pipeline_for names it "model"


class FailingPublisher(Publisher):
    """A real publisher whose first `failures` batches fail as a broker hiccup would."""

    def __init__(self, producer, failures: int, retriable: bool = True) -> None:
        super().__init__(producer)
        self.failures, self.retriable, self.calls = failures, retriable, 0
        self.published: list[list] = []  # the outputs of each batch that went out

    def publish(self, outputs) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise PublishError("broker hiccup", retriable=self.retriable)
        self.published.append(list(outputs))
        return super().publish(outputs)


class SlowPublisher(Publisher):
    """A real publisher whose first batch outlasts the consumer's poll interval."""

    def __init__(self, producer, seconds: float) -> None:
        super().__init__(producer)
        self.seconds, self.calls = seconds, 0

    def publish(self, outputs) -> int:
        self.calls += 1
        lost = super().publish(outputs)
        if self.calls == 1:
            time.sleep(self.seconds)  # the group rebalances without this member meanwhile
        return lost


class RefusingConsumer:
    """A real consumer whose first commit is refused as the group refuses it mid-rebalance."""

    # kafka-python then keeps this member's positions when the group gives it the same
    # partitions back (what happens when the rebalance changed nothing for it); librdkafka
    # has fetched past the batch already.

    def __init__(self, consumer) -> None:
        self.consumer, self.refusals = consumer, 1

    def commit(self, offsets) -> None:
        if self.refusals:
            self.refusals -= 1
            raise CommitRefused("the group rebalanced")
        self.consumer.commit(offsets)

    def __getattr__(self, name: str):
        return getattr(self.consumer, name)


@pytest.fixture
def setup(bootstrap, make_topic, tiny_model_path, monkeypatch, kafka_client_name):
    """Settings (of either client), a scorer and 40 records on a 2-partition input topic."""
    for name in [n for n in os.environ if n.startswith("FAULTWATCH_")]:
        monkeypatch.delenv(name)  # only the settings below
    scorer = Scorer.load(tiny_model_path)
    settings = settings_io.load(
        {
            "bootstrap_servers": bootstrap,
            "input_topic": make_topic("windows", 2),
            "events_topic": make_topic("events"),
            "scores_topic": make_topic("scores", 2),
            "dlq_topic": make_topic("dlq"),
            "group_id": unique("group"),
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "metrics_port": 0,
            "max_poll_records": 500,
            "kafka_client": kafka_client_name,
        }
    )
    values = synthetic_values(40, scorer.window)
    produce(bootstrap, settings.input_topic, [(b"pump-1", v, i % 2) for i, v in enumerate(values)])
    return settings, scorer


class RecordingHealth(Health):
    """Health that remembers every readiness it was given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.said: list[str] = []

    def set_ready(self) -> None:
        super().set_ready()
        self.said.append("ready")

    def set_not_ready(self, reason: str) -> None:
        super().set_not_ready(reason)
        self.said.append(reason)


def same(consumer):
    return consumer


class EagerReload:
    """A model reload at the first chance after the first publish (which fails)."""

    def __init__(self, pipeline, publisher, retrained: Scorer) -> None:
        self.pipeline, self.publisher, self.retrained = pipeline, publisher, retrained
        self.done = False

    def between_batches(self) -> None:
        if self.publisher.calls and not self.done:
            self.done = True
            self.pipeline.serve(Routes.single(self.retrained))


@contextmanager
def running_loop(
    settings,
    scorer,
    publisher_of=Publisher,
    consumer_of=same,
    models_of=None,
    **consumer_extra,
) -> Iterator[tuple[Loop, CollectorRegistry, Publisher, list[BaseException]]]:
    """The loop in a thread (with a RecordingHealth), stopped and closed on the way out."""
    registry = CollectorRegistry()
    consumer = consumer_of(kafka_client.open_consumer(settings, **consumer_extra))
    producer = kafka_client.open_producer(settings)
    publisher = publisher_of(producer)
    pipeline = service.pipeline_for(scorer, settings)
    models = models_of(pipeline, publisher) if models_of is not None else None
    loop = Loop(
        consumer, publisher, pipeline, Metrics(registry), RecordingHealth(), settings, models=models
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield loop, registry, publisher, failure
    finally:
        loop.request_stop("test over")
        thread.join(timeout=30)
        consumer.close()
        publisher.close()
    assert not thread.is_alive()


def run_loop(settings, scorer, publisher_of=Publisher, consumer_of=same, models_of=None, **extra):
    """Run the loop until the group has committed every record (60 s at most)."""
    with running_loop(settings, scorer, publisher_of, consumer_of, models_of, **extra) as running:
        loop, registry, publisher, failure = running

        def finished() -> bool:
            return (
                bool(failure)
                or committed(settings.bootstrap_servers, settings.group_id, settings.input_topic, 2)
                == DONE
            )

        wait_for(finished, 60, "every record committed", interval=0.5)
    if failure:
        raise failure[0]
    return loop, registry, publisher


def published(bootstrap: str, settings) -> Counter:
    """How many score records each input (partition, offset) has."""
    return Counter(
        (json.loads(r.value)["source"]["partition"], json.loads(r.value)["source"]["offset"])
        for r in read_topic(bootstrap, settings.scores_topic)
    )


def test_a_failed_publish_is_retried_and_each_window_counted_once(setup, bootstrap):
    settings, scorer = setup
    loop, registry, publisher = run_loop(settings, scorer, lambda p: FailingPublisher(p, 2))
    assert publisher.calls >= 3  # two failures, then the batch again
    sources = published(bootstrap, settings)
    assert set(sources) == {(p, o) for p in (0, 1) for o in range(20)}
    assert max(sources.values()) == 1  # the failed attempts published nothing
    assert committed(bootstrap, settings.group_id, settings.input_topic, 2) == DONE
    assert registry.get_sample_value("faultwatch_batch_retries_total") == 2
    assert registry.get_sample_value("faultwatch_windows_scored_total", MODEL) == 40
    assert loop.totals.windows == 40


def test_a_model_reload_never_lands_between_a_batch_and_its_retry(setup, bootstrap):
    settings, scorer = setup
    retrained = Scorer(dataclasses.replace(scorer.artifact, training={"retrained": True}))
    _, _, publisher = run_loop(
        settings,
        scorer,
        lambda p: FailingPublisher(p, 1),
        models_of=lambda pipeline, publisher: EagerReload(pipeline, publisher, retrained),
    )
    retried = [json.loads(o.value) for o in publisher.published[0] if o.topic.startswith("scores")]
    assert retried and {s["model_version"] for s in retried} == {scorer.version}
    later = [
        json.loads(r.value)["model_version"] for r in read_topic(bootstrap, settings.scores_topic)
    ]
    assert retrained.version in later or len(publisher.published) == 1  # it landed afterwards


def test_a_lasting_publish_failure_stops_the_loop_uncommitted(setup, bootstrap):
    settings, scorer = setup
    with pytest.raises(PublishError, match="broker hiccup"):
        run_loop(settings, scorer, lambda p: FailingPublisher(p, 1, retriable=False))
    assert committed(bootstrap, settings.group_id, settings.input_topic, 2) == {0: None, 1: None}


def test_a_refused_commit_re_reads_the_batch_and_counts_it_once(setup, bootstrap, caplog):
    settings, scorer = setup
    caplog.set_level(logging.WARNING, logger="worker.kafka.loop")
    loop, registry, _ = run_loop(settings, scorer, Publisher, consumer_of=RefusingConsumer)
    assert "commit refused" in caplog.text
    sources = published(bootstrap, settings)
    assert set(sources) == {(p, o) for p in (0, 1) for o in range(20)}
    assert max(sources.values()) == 2  # published, refused, read again: at least once
    assert registry.get_sample_value("faultwatch_windows_scored_total", MODEL) == 40
    assert loop.totals.windows == 40


def test_a_rebalance_during_a_batch_re_reads_it_and_counts_it_once(setup, bootstrap, caplog):
    # The first batch outlasts the poll interval: the client leaves the group, the group
    # rebalances without it, its commit is refused, and it joins again.
    settings, scorer = setup
    settings = settings.model_copy(update={"session_timeout_ms": 3000})  # librdkafka: <= poll's
    caplog.set_level(logging.INFO, logger="worker.kafka.loop")
    loop, registry, publisher = run_loop(
        settings, scorer, lambda p: SlowPublisher(p, seconds=6.0), max_poll_interval_ms=3000
    )
    assert "commit refused" in caplog.text and caplog.text.count("partitions assigned") >= 2
    sources = published(bootstrap, settings)
    assert set(sources) == {(p, o) for p in (0, 1) for o in range(20)}
    assert registry.get_sample_value("faultwatch_windows_scored_total", MODEL) == 40
    assert loop.totals.windows == 40
    assert publisher.calls >= 2


def test_not_ready_while_the_group_reassigns_partitions(setup, bootstrap):
    settings, scorer = setup
    settings = settings.model_copy(update={"lag_interval": 3600.0})  # no periodic refresh
    intruder = KafkaConsumer(
        bootstrap_servers=bootstrap, **consumer_options(settings), client_id="intruder"
    )
    try:
        with running_loop(settings, scorer) as (loop, _, _, failure):
            wait_for(lambda: loop.health.ready or failure, 60, "the loop to be ready")
            said = len(loop.health.said)
            intruder.subscribe([settings.input_topic])  # a second member: a rebalance
            wait_for(
                lambda: intruder.poll(timeout_ms=200) is not None and intruder.assignment(),
                60,
                "the second member's share",
            )
            wait_for(lambda: loop.health.ready or failure, 60, "the loop ready again")
            assert not failure
            assert loop.health.said[said:] == ["waiting for the consumer group", "ready"]
    finally:
        intruder.close(autocommit=False)
