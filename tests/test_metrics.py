"""Metrics and probes in a fresh registry, served over real HTTP on a free port."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from model.scoring import Scorer
from tests.helpers import http_get, metric_samples
from worker.health import Health, HealthServer
from worker.inputs.windows import REASONS
from worker.metrics import Metrics
from worker.pipeline import ModelBatch
from worker.routing import Routes, Served


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="module")
def routes(tiny_model_path) -> Routes:
    return Routes.single(Scorer.load(tiny_model_path), name="pump")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def scored(served: Served, scores: list[float]) -> list[ModelBatch]:
    scores_ = np.array(scores)
    return [ModelBatch(served, scores_, scores_ > served.scorer.threshold)]


def test_a_committed_batch_counts_once(registry, routes):
    clock = Clock()
    metrics = Metrics(registry, clock)
    metrics.set_models(routes)
    clock.now += 42
    assert value(registry, "faultwatch_seconds_since_last_commit") == 42  # since start
    assert value(registry, "faultwatch_windows_scored_total", model="pump") == 0  # from start
    (served,) = routes.models
    batch = scored(served, [0.1, 0.2, 30.0])
    metrics.batch_committed(batch, Counter(schema=2, too_large=1), seconds=0.05)
    assert value(registry, "faultwatch_windows_scored_total", model="pump") == 3
    assert value(registry, "faultwatch_anomalies_total", model="pump") == 1
    assert value(registry, "faultwatch_dead_letters_total", reason="schema") == 2
    assert value(registry, "faultwatch_dead_letters_total", reason="too_large") == 1
    assert value(registry, "faultwatch_score_count", model="pump") == 3
    assert value(registry, "faultwatch_score_bucket", model="pump", le="0.2") == 2
    assert value(registry, "faultwatch_batch_duration_seconds_count") == 1
    assert value(registry, "faultwatch_seconds_since_last_commit") == 0
    clock.now += 7.5
    assert value(registry, "faultwatch_seconds_since_last_commit") == 7.5


def test_every_reason_is_a_series_from_the_start(registry):
    Metrics(registry)
    for reason in REASONS:
        assert value(registry, "faultwatch_dead_letters_total", reason=reason) == 0


def test_lag_series_follow_the_assignment(registry):
    metrics = Metrics(registry)
    metrics.set_lag({("in", 0): 5, ("in", 1): 0})
    assert value(registry, "faultwatch_consumer_lag", topic="in", partition="0") == 5
    metrics.forget_lag([("in", 0), ("in", 7)])
    assert value(registry, "faultwatch_consumer_lag", topic="in", partition="0") is None
    assert value(registry, "faultwatch_consumer_lag", topic="in", partition="1") == 0


def test_model_info_carries_the_version(registry, routes):
    metrics = Metrics(registry)
    metrics.set_models(routes)
    (served,) = routes.models
    labels = {"model": "pump", "version": served.version, "window": "10", "channels": "4"}
    assert value(registry, "faultwatch_model_info", role="live", **labels) == 1
    assert value(registry, "faultwatch_model_threshold", model="pump") == served.scorer.threshold
    candidate = Routes.single(served.scorer, name="candidate")
    metrics.set_models(None, candidate)  # live unchanged, a shadow model added
    assert value(registry, "faultwatch_model_info", role="live", **labels) == 1
    shadow = labels | {"model": "candidate"}
    assert value(registry, "faultwatch_model_info", role="shadow", **shadow) == 1
    says = {"live": "normal", "candidate": "anomaly"}
    assert value(registry, "faultwatch_shadow_windows_total", model="candidate", **says) == 0
    metrics.shadow_committed(Counter({("candidate", False, True): 3}))
    assert value(registry, "faultwatch_shadow_windows_total", model="candidate", **says) == 3
    metrics.set_models(Routes.single(served.scorer, name="press"))  # pump left service
    assert value(registry, "faultwatch_model_info", role="live", **labels) is None
    assert value(registry, "faultwatch_model_threshold", model="pump") is None


def test_drift_appears_once_enough_normal_windows_were_committed(registry, routes):
    metrics = Metrics(registry)
    (served,) = routes.models
    fresh = Routes.single(served.scorer, name="pump")  # a drift of its own
    metrics.set_models(fresh)
    normal = np.quantile(served.scorer.artifact.score_quantiles, np.linspace(0, 1, 499))
    metrics.batch_committed(scored(fresh.models[0], list(normal)), {}, seconds=0.01)
    assert value(registry, "faultwatch_score_drift", model="pump") is None  # 499: too few
    metrics.batch_committed(scored(fresh.models[0], [float(normal[0])] * 2), {}, seconds=0.01)
    assert 0 <= value(registry, "faultwatch_score_drift", model="pump") < 0.1
    retrained = Scorer(dataclasses.replace(served.scorer.artifact, training={"again": True}))
    metrics.set_models(Routes.single(retrained, name="pump"))  # a reload: drift starts afresh
    assert value(registry, "faultwatch_score_drift", model="pump") is None


def test_health_reports_readiness_and_a_stuck_loop():
    clock = Clock()
    health = Health(stall_after=60, clock=clock)
    assert health.readiness() == (False, "starting")
    health.set_ready()
    assert health.readiness() == (True, "ready")
    health.set_not_ready("retrying a failed batch")
    assert health.readiness() == (False, "retrying a failed batch")
    clock.now += 61
    assert health.liveness()[0] is False
    health.tick()
    assert health.liveness() == (True, "alive")


def test_one_server_answers_metrics_and_both_probes(registry, routes):
    metrics, health = Metrics(registry), Health()
    metrics.batch_committed(scored(routes.models[0], [0.5]), {}, seconds=0.01)
    server = HealthServer(health, registry, port=0, host="127.0.0.1").start()
    try:
        status, body = http_get(server.port, "/metrics")
        assert status == 200
        scored_total = ("faultwatch_windows_scored_total", (("model", "pump"),))
        assert metric_samples(body)[scored_total] == 1
        assert http_get(server.port, "/healthz") == (200, "alive\n")
        assert http_get(server.port, "/readyz") == (503, "starting\n")
        health.set_ready()
        assert http_get(server.port, "/readyz") == (200, "ready\n")
        assert http_get(server.port, "/other")[0] == 404
    finally:
        server.stop()
    assert http_get(server.port, "/healthz")[0] == 0  # stopped: nothing answers


def test_episodes_count_once_committed_by_reason(registry):
    from worker.pipeline import EpisodeCounts

    metrics = Metrics(registry)
    for reason in ("cleared", "silent", "muted"):  # every reason exists from the start
        assert value(registry, "faultwatch_episodes_closed_total", reason=reason) == 0
    metrics.episodes_committed(EpisodeCounts(2, Counter(cleared=1, muted=1), [30.0, 4000.0], 3))
    metrics.episodes_committed(None)  # windows mode: nothing
    assert value(registry, "faultwatch_episodes_opened_total") == 2
    assert value(registry, "faultwatch_episodes_closed_total", reason="muted") == 1
    assert value(registry, "faultwatch_episode_duration_seconds_count") == 2
    assert value(registry, "faultwatch_episode_duration_seconds_bucket", le="60.0") == 1
    assert value(registry, "faultwatch_late_windows_total") == 3
