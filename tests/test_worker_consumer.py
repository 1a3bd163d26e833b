"""The loop in-process on the real broker: a failed publish rewinds its batch and retries it."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from model.scoring import Scorer
from tests.helpers import committed, produce, read_topic, synthetic_values, unique
from worker import service
from worker import settings as settings_io
from worker.consumer import Loop
from worker.errors import PublishError
from worker.health import Health
from worker.metrics import Metrics
from worker.publisher import Publisher


class FailingPublisher(Publisher):
    """A real publisher whose first `failures` batches fail as a broker hiccup would."""

    def __init__(self, producer, failures: int, retriable: bool = True) -> None:
        super().__init__(producer)
        self.failures, self.retriable, self.calls = failures, retriable, 0

    def publish(self, outputs) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise PublishError("broker hiccup", retriable=self.retriable)
        super().publish(outputs)


@pytest.fixture
def setup(bootstrap, make_topic, tiny_model_path, monkeypatch):
    """Settings, a scorer and 40 records on a 2-partition input topic."""
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
            "idle_exit": 2,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "metrics_port": 0,
            "max_poll_records": 500,
        }
    )
    values = synthetic_values(40, scorer.window)
    produce(bootstrap, settings.input_topic, [(b"pump-1", v, i % 2) for i, v in enumerate(values)])
    return settings, scorer


def run_loop(settings, scorer, publisher_of) -> tuple[Loop, CollectorRegistry, object]:
    registry = CollectorRegistry()
    consumer, producer = service.connect(settings)
    publisher = publisher_of(producer)
    loop = Loop(
        consumer,
        publisher,
        service.pipeline_for(scorer, settings),
        Metrics(registry),
        Health(),
        settings,
    )
    try:
        loop.run()
    finally:
        consumer.close(autocommit=False)
        publisher.close()
    return loop, registry, publisher


def test_a_failed_publish_is_retried_and_each_window_counted_once(setup, bootstrap):
    settings, scorer = setup
    loop, registry, publisher = run_loop(settings, scorer, lambda p: FailingPublisher(p, 2))
    assert publisher.calls >= 3  # two failures, then the batch again
    sources = Counter(
        (json.loads(r.value)["source"]["partition"], json.loads(r.value)["source"]["offset"])
        for r in read_topic(bootstrap, settings.scores_topic)
    )
    assert set(sources) == {(p, o) for p in (0, 1) for o in range(20)}
    assert max(sources.values()) == 1  # the failed attempts published nothing
    assert committed(bootstrap, settings.group_id, settings.input_topic, 2) == {0: 20, 1: 20}
    assert registry.get_sample_value("faultwatch_batch_retries_total") == 2
    assert registry.get_sample_value("faultwatch_windows_scored_total") == 40
    assert loop.totals.windows == 40


def test_a_lasting_publish_failure_stops_the_loop_uncommitted(setup, bootstrap):
    settings, scorer = setup
    with pytest.raises(PublishError, match="broker hiccup"):
        run_loop(settings, scorer, lambda p: FailingPublisher(p, 1, retriable=False))
    assert committed(bootstrap, settings.group_id, settings.input_topic, 2) == {0: None, 1: None}
