"""Episodes through `faultwatch run` on the real broker: crashes, rebalances, replays, mutes.

After SIGKILLs and a rebalance mid-episode, the events de-duplicated by `event_id` are exactly
those of one uninterrupted pass over each partition (same ids, one `opened` and one `closed`
per episode); replays at two speeds and `faultwatch score --episodes` give the same episodes.
Every wait is bounded.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from cli.main import main as cli_main
from demo.broker import free_port
from model.episodes import EpisodeConfig, Tracker, parse_seconds, shares_of
from model.scoring import Scorer
from tests.helpers import (
    committed,
    kill_mid_stream,
    partitions_held,
    produce,
    read_topic,
    run_worker,
    start_worker,
    unique,
    wait_for,
    window_value,
    worker_env,
)
from tests.synthetic import normal_values, write_csv

BATCH = 50
EPISODE_ENV = {  # FAULTWATCH_EPISODE_*: 1 window a second
    "episode_open_seconds": 0,
    "episode_clear_seconds": 5,
    "episode_clear_ratio": 1.0,
    "episode_update_seconds": 30,
    "episode_silent_seconds": 600,
    "episode_open_windows": 1,
    "episode_clear_windows": 1,
}
CONFIG = EpisodeConfig(0, 5, 1.0, 30, 600, open_windows=1, clear_windows=1)
T0 = 1_700_000_000


def episode_topics(make_topic, partitions: int) -> dict[str, str]:
    return {
        "input_topic": make_topic("windows", partitions),
        "state_topic": make_topic("state", partitions),
        "control_topic": make_topic("control"),
        "events_topic": make_topic("events", 2),
        "dlq_topic": make_topic("dlq"),
    }


def machine_windows(window: int, machine: int, steps: int) -> list[np.ndarray]:
    """One machine's windows, a second apart: two faults, at 5-45 % and 52-95 % of the run
    (so a kill almost surely lands mid-episode)."""
    rows = normal_values(steps + window - 1, seed=machine)
    faulty = np.zeros(len(rows), dtype=bool)
    faulty[int(0.05 * steps) + window : int(0.45 * steps) + window] = True
    faulty[int(0.52 * steps) + window : int(0.95 * steps) + window] = True
    rows[faulty] += 25.0
    return [rows[i : i + window] for i in range(steps)]


def fleet(window: int, machines: int, steps: int) -> list[tuple[bytes, bytes, None]]:
    """Every machine's k-th window, then every machine's k+1-th: keyed by machine id."""
    streams = [machine_windows(window, m, steps) for m in range(machines)]
    records = []
    for k in range(steps):
        for m, stream in enumerate(streams):
            name = f"pump-{m + 1}"
            records.append((name.encode(), window_value(name, T0 + k, stream[k]), None))
    return records


def reference_events(
    scorer: Scorer, topic: str, records: list, placed: list[tuple[int, int]]
) -> dict[str, dict]:
    """The events of one uninterrupted pass over each partition, by event id."""
    values = [json.loads(value) for _, value, _ in records]
    scores = scorer.score(np.array([v["values"] for v in values]))
    trackers: dict[int, Tracker] = defaultdict(lambda: Tracker(CONFIG))
    events = {}
    for j in sorted(range(len(records)), key=lambda j: placed[j]):
        partition, offset = placed[j]
        stamp = _rfc3339(values[j]["timestamp"])
        for event in trackers[partition].observe(
            values[j]["machine_id"],
            parse_seconds(stamp),
            stamp,
            float(scores.score[j]),
            scorer.threshold,
            shares_of(scorer.channels, scores.channel_share[j]),
            scores.detector(j),
            {"topic": topic, "partition": partition, "offset": offset},
            version=scorer.version,
            ratios=lambda j=j: scores.detector_ratios(j),
        ):
            events[event["event_id"]] = event
    return events


def _rfc3339(timestamp) -> str:
    from model.recording import to_rfc3339

    return to_rfc3339(timestamp if isinstance(timestamp, str) else repr(timestamp))


def check_events(published: list[dict], expected: dict[str, dict]) -> None:
    """De-duplicated by event id: the uninterrupted pass's events, one opened and one closed
    per episode, under the same episode id whoever published them."""
    unique_events: dict[str, dict] = {}
    for event in published:
        first = unique_events.setdefault(event["event_id"], event)
        assert _stable(first) == _stable(event), "two different events under one id"
    assert set(unique_events) == set(expected), (
        f"missing {len(set(expected) - set(unique_events))}, "
        f"unexpected {len(set(unique_events) - set(expected))}"
    )
    for event_id, event in unique_events.items():
        assert _stable(event) == _stable(expected[event_id])
        assert event["peak_score"] == pytest.approx(expected[event_id]["peak_score"], rel=1e-5)
        assert event["detectors"] == pytest.approx(expected[event_id]["detectors"], rel=1e-5)
    kinds = Counter((e["episode_id"], e["kind"]) for e in unique_events.values())
    episodes = {episode for episode, _ in kinds}
    assert all(kinds[(e, "opened")] == 1 and kinds[(e, "closed")] == 1 for e in episodes)
    print(f"events={len(published)} unique={len(unique_events)} episodes={len(episodes)}")


def _stable(event: dict) -> dict:
    """An event without its scores (a re-scored window may differ in the last digit)."""
    unstable = ("peak_score", "score", "model_version", "detectors")
    return {k: v for k, v in event.items() if k not in unstable}


def test_sigkill_mid_episode_repeatedly_loses_no_episode_and_opens_none_twice(
    bootstrap, make_topic, tiny_model_path, tmp_path, kafka_client_name
):
    # With each Kafka client: the state's restore rides on the client's positions. librdkafka
    # reads ahead and scores faster: a longer stream keeps each kill mid-stream.
    scorer = Scorer.load(tiny_model_path)
    topics = episode_topics(make_topic, 2)
    steps = 1500 if kafka_client_name == "kafka-python" else 3000
    records = fleet(scorer.window, machines=4, steps=steps)
    placed = produce(bootstrap, topics["input_topic"], records)
    expected = reference_events(scorer, topics["input_topic"], records, placed)
    assert len(expected) >= 4 * 2 * 2  # two episodes per machine, opened and closed each
    group = unique("group")
    env = worker_env(
        bootstrap,
        tiny_model_path,
        group_id=group,
        max_poll_records=BATCH,
        kafka_client=kafka_client_name,
        **topics,
        **EPISODE_ENV,
    )
    logs = kill_mid_stream(env, bootstrap, topics["input_topic"], 2, len(records), tmp_path, 3)
    final = run_worker(env, tmp_path / "final.log", "--idle-exit", "3", timeout=120)
    assert final.process.returncode == 0, final.stderr
    restored = re.findall(r"state restored .*episodes=(\d+)", "".join(logs[1:]) + final.stderr)
    assert sum(map(int, restored)) > 0  # killed mid-episode: the next one carried them on
    assert sum(committed(bootstrap, group, topics["input_topic"], 2).values()) == len(records)
    published = [json.loads(r.value) for r in read_topic(bootstrap, topics["events_topic"])]
    check_events(published, expected)


def test_a_rebalance_mid_episode_hands_the_episodes_over(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    scorer = Scorer.load(tiny_model_path)
    partitions = 4
    topics = episode_topics(make_topic, partitions)
    records = fleet(scorer.window, machines=6, steps=600)
    half = len(records) // 4  # every machine is inside its first fault here
    group = unique("group")
    env = worker_env(
        bootstrap, tiny_model_path, group_id=group, max_poll_records=BATCH, **topics, **EPISODE_ENV
    )
    ports = {"a": free_port(), "b": free_port()}

    def start(name: str):
        return start_worker(
            env | {"FAULTWATCH_METRICS_PORT": str(ports[name])}, tmp_path / f"{name}.log"
        )

    def held(name: str) -> int:
        return partitions_held(ports[name])

    def all_committed(count: int) -> bool:
        done = committed(bootstrap, group, topics["input_topic"], partitions)
        return sum(o or 0 for o in done.values()) == count

    placed = produce(bootstrap, topics["input_topic"], records[:half])
    workers = {"a": start("a")}
    try:
        wait_for(lambda: all_committed(half), 90, "a to finish the first part", interval=0.5)
        workers["b"] = start("b")  # a rebalance, every machine mid-episode
        wait_for(lambda: held("a") >= 1 and held("b") >= 1, 90, "a and b sharing partitions")
        placed += produce(bootstrap, topics["input_topic"], records[half:])
        wait_for(lambda: all_committed(len(records)), 90, "everything", interval=0.5)
    finally:
        codes = {name: worker.terminate() for name, worker in workers.items()}
    assert codes == {"a": 0, "b": 0}, {name: w.stderr for name, w in workers.items()}
    restored = [int(n) for n in re.findall(r"state restored .*episodes=(\d+)", workers["b"].stderr)]
    assert restored and sum(restored) > 0, workers["b"].stderr  # b carried a's episodes on
    expected = reference_events(scorer, topics["input_topic"], records, placed)
    published = [json.loads(r.value) for r in read_topic(bootstrap, topics["events_topic"])]
    check_events(published, expected)
    owners = {e["episode_id"]: set() for e in published}
    for e in published:
        owners[e["episode_id"]].add(e["source"]["partition"])
    assert all(len(p) == 1 for p in owners.values())  # an episode keeps its partition


def recordings(folder: Path) -> list[Path]:
    """Three machines, 300 s each: one fault, two faults, none."""
    paths = []
    for m, faults in enumerate([[(80, 140)], [(60, 90), (200, 260)], []]):
        values = normal_values(300, seed=20 + m)
        for start, end in faults:
            values[start:end] += 25.0
        paths.append(write_csv(folder / f"press-{m + 1}.csv", values))
    return paths


def worker_episodes(bootstrap, topics: dict[str, str], tiny_model_path, log: Path) -> list[dict]:
    env = worker_env(bootstrap, tiny_model_path, group_id=unique("group"), **topics, **EPISODE_ENV)
    worker = run_worker(env, log, "--idle-exit", "3", timeout=90)
    assert worker.process.returncode == 0, worker.stderr
    events = [json.loads(r.value) for r in read_topic(bootstrap, topics["events_topic"])]
    closed = {e["episode_id"]: e for e in events if e["kind"] == "closed"}
    opened = {e["episode_id"]: e for e in events if e["kind"] == "opened"}
    assert set(closed) == set(opened)
    return sorted(
        (
            {
                "episode_id": e["episode_id"],
                "machine_id": e["machine_id"],
                "started_at": e["started_at"],
                "opened_at": e["opened_at"],
                "ended_at": e["ended_at"],
                "windows": e["windows"],
                "close_reason": e["close_reason"],
                "peak_score": round(e["peak_score"], 3),
            }
            for e in closed.values()
        ),
        key=lambda e: (e["machine_id"], e["started_at"]),
    )


def test_replays_at_two_speeds_and_score_give_the_same_episodes(
    bootstrap, make_topic, tiny_model_path, tmp_path, monkeypatch, capsys
):
    paths = recordings(tmp_path)
    found = []
    for speed in (["--speed", "100"], []):  # 3 s paced by the data's clock, and unpaced
        topics = episode_topics(make_topic, 2)
        args = ["replay", *map(str, paths), "--topic", topics["input_topic"], *speed]
        args += ["--model", str(tiny_model_path), "--bootstrap-servers", bootstrap]
        assert cli_main(args) == 0
        found.append(worker_episodes(bootstrap, topics, tiny_model_path, tmp_path / "w.log"))
    assert found[0] == found[1]
    assert len(found[0]) == 3  # one fault, two faults, none
    # `faultwatch score --episodes`, per recording, with the same FAULTWATCH_EPISODE_* rules
    for name, value in EPISODE_ENV.items():
        monkeypatch.setenv(f"FAULTWATCH_{name.upper()}", str(value))
    offline = []
    for path in paths:
        out = tmp_path / f"{path.stem}-episodes.csv"
        args = ["score", str(path), "--model", str(tiny_model_path)]
        assert cli_main([*args, "--out", str(tmp_path / "s.csv"), "--episodes", str(out)]) == 0
        with out.open() as f:
            for row in csv.DictReader(f):
                assert row["closed_row"] and row["close_reason"] == "cleared"
                offline.append(
                    {
                        "episode_id": row["episode_id"],
                        "machine_id": row["machine_id"],
                        "started_at": row["started_at"],
                        "opened_at": row["opened_at"],
                        "ended_at": row["ended_at"],
                        "windows": int(row["windows"]),
                        "close_reason": row["close_reason"],
                        "peak_score": round(float(row["peak_score"]), 3),
                    }
                )
    capsys.readouterr()
    assert offline == found[0]


def test_mutes_from_the_cli_reach_every_worker(bootstrap, make_topic, tiny_model_path, tmp_path):
    scorer = Scorer.load(tiny_model_path)
    topics = episode_topics(make_topic, 2)
    group = unique("group")
    env = worker_env(bootstrap, tiny_model_path, group_id=group, **topics, **EPISODE_ENV)

    def faultwatch(*args: str) -> tuple[int, str, str]:
        """The CLI as an operator runs it, with the worker's FAULTWATCH_* variables."""
        result = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode, result.stdout, result.stderr

    code, out, err = faultwatch("mute", "press-*", "--for", "2h", "--reason", "maintenance")
    assert code == 0 and "press-*" in out, err
    label = {"kind": "label", "episode_id": "e0", "machine_id": "pump-1", "label": "fault"}
    produce(
        bootstrap,
        topics["control_topic"],
        [  # keyed by the machine (DESIGN.md): it mutes nothing, and unknown records are skipped
            (
                b"pump-1",
                json.dumps(label | {"note": "", "by": "ana", "at": "2027-01-15Z"}).encode(),
                None,
            ),
            (b"pump-1", json.dumps({"kind": "alarm"}).encode(), None),
        ],
    )
    code, _, err = faultwatch("episodes")  # nothing committed yet: no state, not an all-clear
    error = err.splitlines()[-1]  # after the skipped record's warning
    assert code == 1 and error.startswith(f"faultwatch: error: no state for group '{group}'"), err
    assert faultwatch("unmute", "press-3")[0] == 1  # muted by a pattern, not by name
    # press-1 (muted) and pump-1 (not): both run anomalous from their 20th window on
    records = []
    for name, seed in (("press-1", 1), ("pump-1", 2)):
        rows = normal_values(60 + scorer.window, seed=seed)
        rows[20 + scorer.window :] += 25.0
        records += [
            (name.encode(), window_value(name, T0 + k, rows[k : k + scorer.window]), None)
            for k in range(60)
        ]
    produce(bootstrap, topics["input_topic"], records)
    port = free_port()
    worker = run_worker(
        env | {"FAULTWATCH_METRICS_PORT": str(port)},
        tmp_path / "w.log",
        "--idle-exit",
        "3",
        timeout=90,
    )
    assert worker.process.returncode == 0, worker.stderr
    events = [json.loads(r.value) for r in read_topic(bootstrap, topics["events_topic"])]
    assert {e["machine_id"] for e in events} == {"pump-1"}
    code, out, err = faultwatch("episodes", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [e["machine_id"] for e in listed["open_episodes"]] == ["pump-1"]
    assert listed["open_episodes"][0]["windows"] == 39  # windows 21-59 hold shifted rows
    assert [m["machine"] for m in listed["muted"]] == ["press-*"]
    code, out, _ = faultwatch("episodes")
    assert code == 0 and "pump-1" in out and "maintenance" in out
    assert faultwatch("unmute", "press-*")[0] == 0
    assert json.loads(faultwatch("episodes", "--json")[1])["muted"] == []


def test_a_state_topic_of_another_partition_count_is_refused(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    topics = episode_topics(make_topic, 2)
    topics["state_topic"] = make_topic("state", 3)
    env = worker_env(bootstrap, tiny_model_path, group_id=unique("group"), **topics)
    worker = run_worker(env, tmp_path / "w.log", timeout=60)
    assert worker.process.returncode == 1
    error = worker.stderr.strip().splitlines()[-1]
    assert "3 partitions" in error and "has 2" in error and "Traceback" not in worker.stderr
