"""The embedded broker, and the worker across a broker outage (a private broker: it is stopped)."""

from __future__ import annotations

import socket

import pytest

from demo.broker import EmbeddedBroker, create_topics, free_port
from model.scoring import Scorer
from tests.helpers import (
    http_get,
    metric_samples,
    produce,
    read_topic,
    start_worker,
    synthetic_values,
    wait_for,
    worker_env,
)
from worker.errors import BrokerError


def test_the_embedded_broker_starts_serves_and_stops():
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, {"t": 2})
        create_topics(broker.bootstrap, {"t": 2})  # exists already: kept
        assert produce(broker.bootstrap, "t", [(b"k", b"v", 1)]) == [(1, 0)]
        assert [r.value for r in read_topic(broker.bootstrap, "t")] == [b"v"]
    assert not broker.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=1)


def test_a_taken_port_is_an_error_not_a_silent_exit():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port}.*(AddrInUse|taken)"):
            EmbeddedBroker(port).start()


def test_a_broker_outage_makes_the_worker_unready_then_it_carries_on(tiny_model_path, tmp_path):
    scorer = Scorer.load(tiny_model_path)
    topics = {"input_topic": "windows", "events_topic": "events", "dlq_topic": "dlq"}
    broker = EmbeddedBroker().start()
    create_topics(broker.bootstrap, {name: 1 for name in topics.values()})
    port = free_port()
    env = worker_env(
        broker.bootstrap,
        tiny_model_path,
        events="windows",
        metrics_port=port,
        lag_interval=0.5,
        **topics,
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:

        def scored(count: int):
            def check() -> bool:
                status, body = http_get(port, "/metrics")
                samples = metric_samples(body) if status == 200 else {}
                return samples.get(("faultwatch_windows_scored_total", ())) == count

            return check

        def readyz(status: int):
            return lambda: http_get(port, "/readyz")[0] == status

        wait_for(readyz(200), 30, "ready")
        produce(
            broker.bootstrap,
            "windows",
            [(b"pump-1", v, 0) for v in synthetic_values(10, scorer.window)],
        )
        wait_for(scored(10), 30, "10 windows scored")

        broker.stop()  # memory storage: topics and offsets are gone with it
        wait_for(readyz(503), 30, "not ready while the broker is down")
        assert "heartbeat" in http_get(port, "/readyz")[1]
        assert http_get(port, "/healthz")[0] == 200  # alive: no restart needed

        broker = EmbeddedBroker(port=broker.port).start()
        create_topics(broker.bootstrap, {name: 1 for name in topics.values()})
        produce(
            broker.bootstrap,
            "windows",
            [(b"pump-1", v, 0) for v in synthetic_values(5, scorer.window)],
        )
        wait_for(scored(15), 60, "the windows sent after the outage to be scored")
        wait_for(readyz(200), 30, "ready again")
    finally:
        code = worker.terminate()
        broker.stop()
    assert code == 0, worker.stderr
