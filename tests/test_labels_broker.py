"""Labels through `faultwatch run` on the real broker: two workers, then a restart."""

from __future__ import annotations

import json
import re

from cli.main import main
from demo.broker import free_port
from model.scoring import Scorer
from tests.helpers import (
    committed,
    http_get,
    metric_samples,
    produce,
    read_topic,
    start_worker,
    unique,
    wait_for,
    window_value,
    worker_env,
)
from tests.synthetic import normal_values

T0 = 1_700_000_000
EPISODE_ENV = {
    "episode_open_seconds": 0,
    "episode_clear_seconds": 5,
    "episode_clear_ratio": 1.0,
    "episode_update_seconds": 600,
    "episode_silent_seconds": 0,
}
MACHINES = {"pump-1": 0, "pump-2": 1}  # machine -> its input partition


def windows(scorer: Scorer, first: int, last: int, anomalous: dict[str, range]) -> list:
    """Both pumps' windows first..last-1 (one a second); shifted where `anomalous` says."""
    records = []
    for machine, partition in MACHINES.items():
        rows = normal_values(last + scorer.window, seed=partition)
        for k in range(first, last):
            values = rows[k : k + scorer.window] + (25.0 if k in anomalous[machine] else 0.0)
            records.append((machine.encode(), window_value(machine, T0 + k, values), partition))
    return records


def test_labels_act_in_the_worker_that_holds_the_episode_and_survive_a_restart(
    bootstrap, make_topic, tiny_model_path, tmp_path, monkeypatch
):
    scorer = Scorer.load(tiny_model_path)
    topics = {
        "input_topic": make_topic("windows", 2),
        "state_topic": make_topic("state", 2),
        "control_topic": make_topic("control"),
        "events_topic": make_topic("events", 2),
        "dlq_topic": make_topic("dlq"),
    }
    group = unique("group")
    env = worker_env(bootstrap, tiny_model_path, group_id=group, **topics, **EPISODE_ENV)
    for name, value in env.items():
        if name.startswith("FAULTWATCH_"):
            monkeypatch.setenv(name, value)  # the CLI, as an operator beside the workers
    always = {"pump-1": range(10, 10_000), "pump-2": range(10, 150)}  # pump-2 clears at 150
    sent = 0

    def send(first: int, last: int) -> None:
        nonlocal sent
        sent += len(produce(bootstrap, topics["input_topic"], windows(scorer, first, last, always)))

    def done() -> bool:
        offsets = committed(bootstrap, group, topics["input_topic"], 2)
        return sum(o or 0 for o in offsets.values()) == sent

    def events() -> list[dict]:
        return [json.loads(r.value) for r in read_topic(bootstrap, topics["events_topic"])]

    def start(name: str, port: int):
        return start_worker(env | {"FAULTWATCH_METRICS_PORT": str(port)}, tmp_path / f"{name}.log")

    def labels(port: int) -> dict[str, float]:
        status, body = http_get(port, "/metrics")
        if status != 200:
            return {}  # not serving yet, or stopping
        samples = metric_samples(body)
        name = "faultwatch_labels_total"
        return {dict(k)["label"]: v for (n, k), v in samples.items() if n == name}

    def held(port: int) -> float:
        status, body = http_get(port, "/metrics")
        if status != 200 or http_get(port, "/readyz")[0] != 200:
            return -1
        return metric_samples(body).get(("faultwatch_assigned_partitions", ()), 0)

    ports = {"a": free_port(), "b": free_port()}
    send(0, 30)
    workers = {name: start(name, port) for name, port in ports.items()}
    try:
        wait_for(done, 90, "the two workers to score the first part", interval=0.5)
        opened = {e["machine_id"]: e["episode_id"] for e in events() if e["kind"] == "opened"}
        assert set(opened) == set(MACHINES)
        assert main(["label", opened["pump-1"], "--as", "false-alarm", "--by", "ana"]) == 0
        assert main(["label", opened["pump-2"], "--as", "fault", "--code", "B-7"]) == 0

        def counted() -> dict[str, float]:  # metrics follow the commit
            found = [labels(port) for port in ports.values()]
            return {k: sum(c.get(k, 0) for c in found) for k in ("false-alarm", "fault")}

        def acted() -> bool:
            """A label acts at the next batch after its worker read it: keep the data coming,
            one second of both pumps (still anomalous) at a time, until both labels acted."""
            if done() and counted() == {"false-alarm": 1, "fault": 1}:
                return True
            if done():
                send(now[0], now[0] + 1)
                now[0] += 1
            return False

        now = [30]
        wait_for(acted, 60, "both labels to act", interval=0.5)
        assert any(e["close_reason"] == "dismissed" for e in events())
        codes = {"a": workers["a"].terminate()}
        # b takes a's partition over before it stops too: a group left mid-rebalance can keep
        # the next member waiting on this broker.
        wait_for(lambda: held(ports["b"]) == 2, 60, "b to hold both partitions", interval=0.5)
        codes["b"] = workers["b"].terminate()
    finally:
        for worker in workers.values():
            worker.kill()
    assert codes == {"a": 0, "b": 0}, {n: w.stderr for n, w in workers.items()}
    owners = [
        w for w in workers.values() if re.search(r"partitions assigned partitions=\S+-\d", w.stderr)
    ]
    assert len(owners) == 2  # each held a partition: the labels reached both
    (closed,) = [e for e in events() if e["kind"] == "closed"]
    assert (closed["machine_id"], closed["label"]) == ("pump-1", "false-alarm")
    assert closed["episode_id"] == opened["pump-1"]

    # A restart: pump-1 is still anomalous but dismissed (no new episode); pump-2 clears at
    # 150 and its episode closes `cleared`, still confirmed by its label.
    send(now[0], 170)
    worker = start("c", free_port())
    try:
        wait_for(lambda: done() or worker.process.poll() is not None, 90, "c", interval=0.5)
    finally:
        assert worker.terminate() == 0, worker.stderr
    assert done(), worker.stderr
    found = events()
    assert sorted(e["machine_id"] for e in found if e["kind"] == "opened") == ["pump-1", "pump-2"]
    last = [e for e in found if e["kind"] == "closed" and e["machine_id"] == "pump-2"]
    assert [(e["close_reason"], e["label"]) for e in last] == [("cleared", "fault")]
