"""`faultwatch run` start-up failures: one clear line on stderr and the documented exit code."""

# Failures before the broker is tried run `main` in this process (torch is imported once);
# the others run the real command.

from __future__ import annotations

import json
import logging
import socket
from datetime import datetime

import pytest

from cli import main as cli
from demo.broker import free_port
from model.scoring import Scorer
from tests.helpers import (
    committed,
    http_get,
    produce,
    run_worker,
    start_worker,
    synthetic_values,
    unique,
    wait_for,
    worker_env,
)


@pytest.fixture
def run_in_process(monkeypatch, capsys):
    """`faultwatch run ARGS` in-process with a clean FAULTWATCH_* environment: (code, stderr)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def run(env: dict[str, str], *args: str) -> tuple[int, str]:
        for name in [n for n in __import__("os").environ if n.startswith("FAULTWATCH_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = cli.main(["run", *args])
        return code, capsys.readouterr().err

    yield run
    root.handlers[:], root.level = saved[0], saved[1]


def logged_at(line: str) -> float:
    """The time of a text log line ("2024-05-01 12:00:00,123 INFO ..."), in seconds."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def only_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"FAULTWATCH_METRICS_PORT": "http"}, (), "FAULTWATCH_METRICS_PORT"),
        ({"FAULTWATCH_SECURITY_PROTOCOL": "SASL_SSL"}, (), "FAULTWATCH_SASL_MECHANISM"),
        ({"FAULTWATCH_INPUT_TOPIC": "events"}, ("--events-topic", "events"), "output topic"),
        ({}, ("--idle-exit", "-1"), "--idle-exit"),
        ({"FAULTWATCH_IDLE_EXIT": "5"}, ("--idle-exit", "soon"), "--idle-exit"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(run_in_process, env, args, named):
    code, stderr = run_in_process(env, *args)
    assert code == 2
    assert named in only_line(stderr)


def test_the_command_exits_2_on_a_bad_variable(tiny_model_path, tmp_path):
    env = worker_env("127.0.0.1:9", tiny_model_path, max_poll_records="many")
    worker = run_worker(env, tmp_path / "worker.log", timeout=60)
    assert worker.process.returncode == 2
    assert "FAULTWATCH_MAX_POLL_RECORDS" in only_line(worker.stderr)


def test_a_missing_model_is_one_line_before_any_broker_is_tried(run_in_process, tmp_path):
    missing = tmp_path / "nope.fwm"
    with socket.socket() as broker:  # listens, never answers: a connection would queue here
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        broker.setblocking(False)
        code, stderr = run_in_process(
            {
                "FAULTWATCH_MODEL_PATH": str(missing),
                "FAULTWATCH_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker.getsockname()[1]}",
                "FAULTWATCH_STARTUP_TIMEOUT": "30",
            }
        )
        with pytest.raises(BlockingIOError):
            broker.accept()  # nobody tried the broker
    assert code == 1
    assert str(missing) in only_line(stderr) and "no such model file" in stderr


def test_a_damaged_model_is_one_line(run_in_process, tmp_path):
    damaged = tmp_path / "damaged.fwm"
    damaged.write_bytes(b"PK\x03\x04 not really a model")
    code, stderr = run_in_process({"FAULTWATCH_MODEL_PATH": str(damaged)})
    assert code == 1
    assert str(damaged) in only_line(stderr)


def test_a_taken_metrics_port_is_named(run_in_process, tiny_model_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = run_in_process(
            {"FAULTWATCH_MODEL_PATH": str(tiny_model_path), "FAULTWATCH_METRICS_HOST": "127.0.0.1"},
            "--metrics-port",
            str(port),
        )
    assert code == 1
    assert f"127.0.0.1:{port}" in stderr.strip().splitlines()[-1]


def test_an_unreachable_broker_is_named_after_the_startup_timeout(tiny_model_path, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    env = worker_env(
        address,
        tiny_model_path,
        startup_timeout=2,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="fw",
        sasl_plain_password="s3cr3t-pw",
    )
    worker = run_worker(env, tmp_path / "worker.log", timeout=120)
    assert worker.process.returncode == 1
    lines = worker.stderr.strip().splitlines()
    error = lines[-1]
    assert "ERROR" in error and address in error and "within 2 s" in error
    assert "Traceback" not in worker.stderr and "s3cr3t-pw" not in worker.stderr
    # From its own log: it gave up after its 2 s, not after a client default (30 s and more).
    starting = next(line for line in lines if " starting model_version=" in line)
    waited = logged_at(error) - logged_at(starting)
    assert 2 <= waited < 15, waited


def test_a_missing_topic_is_named_and_json_logs_are_json(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    missing = unique("missing")
    env = worker_env(
        bootstrap,
        tiny_model_path,
        input_topic=make_topic("windows"),
        events_topic=make_topic("events"),
        dlq_topic=missing,
        group_id=unique("g"),
    )
    env["FAULTWATCH_BOOTSTRAP_SERVER"] = "typo:9092"  # a misspelt variable is reported
    worker = run_worker(env, tmp_path / "worker.log", "--log-format", "json", timeout=60)
    assert worker.process.returncode == 1
    lines = [json.loads(line) for line in worker.stderr.strip().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert lines[-1]["level"] == "ERROR" and missing in lines[-1]["message"]
    assert any("FAULTWATCH_BOOTSTRAP_SERVER" in line["message"] for line in lines)


def test_a_first_join_slower_than_the_startup_timeout_is_waited_for(
    bootstrap, make_topic, tiny_model_path, tmp_path
):
    # The broker answers at once; the group takes longer than the timeout to assign (a join
    # takes session/2 on Tansu: 3 s here). Waiting, not ready, is right; exiting is not.
    scorer = Scorer.load(tiny_model_path)
    source, group, port = make_topic("windows", 2), unique("group"), free_port()
    produce(
        bootstrap,
        source,
        [(b"m", v, i % 2) for i, v in enumerate(synthetic_values(20, scorer.window))],
    )
    env = worker_env(
        bootstrap,
        tiny_model_path,
        events="windows",
        input_topic=source,
        events_topic=make_topic("events"),
        dlq_topic=make_topic("dlq"),
        group_id=group,
        metrics_port=port,
        startup_timeout=1,
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        seen: list[int] = []

        def done() -> bool:
            assert worker.process.poll() is None, worker.stderr  # it must not give up
            seen.append(http_get(port, "/readyz")[0])
            return committed(bootstrap, group, source, 2) == {0: 10, 1: 10}

        wait_for(done, 60, "every record committed", interval=0.25)
        assert 503 in seen and seen[-1] == 200, seen  # not ready while it waited
    finally:
        code = worker.terminate()
    assert code == 0, worker.stderr
    assert (
        "no partition assignment from group=" in worker.stderr and "still waiting" in worker.stderr
    )
