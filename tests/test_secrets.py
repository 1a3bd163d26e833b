"""The SASL password never appears in a log line, a start-up error or `inspect`'s output."""

# It may show up quoted: as is, escaped by repr (a request object's bytes), or by JSON (a log
# shipper's line). Every test uses a password with a plain core, "s3cr3t", that none of those
# escape, and looks for that core.

from __future__ import annotations

import io
import json
import logging
import os

import pytest
from kafka.net.sasl.plain import SaslMechanismPlain
from kafka.protocol.sasl import SaslAuthenticateRequest

from cli import main as cli
from tests.helpers import run_worker, worker_env
from worker import logs
from worker import settings as settings_io

PASSWORD = 's3cr3t-Pä"ss\\wörd'  # quotes, a backslash and non-ASCII: every escape differs
CORE = "s3cr3t"
SASL = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "PLAIN",
    "sasl_plain_username": "faultwatch",
    "sasl_plain_password": PASSWORD,
}


@pytest.fixture
def clean_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("FAULTWATCH_")]:
        monkeypatch.delenv(name)
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("kafka").level
    yield monkeypatch
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("kafka").setLevel(saved[2])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_kafka_debug_lines_that_carry_the_password_are_redacted(clean_env, log_format):
    for name, value in SASL.items():
        clean_env.setenv(f"FAULTWATCH_{name.upper()}", value)
    clean_env.setenv("FAULTWATCH_KAFKA_LOG_LEVEL", "DEBUG")
    clean_env.setenv("FAULTWATCH_LOG_LEVEL", "DEBUG")
    clean_env.setenv("FAULTWATCH_LOG_FORMAT", log_format)
    settings = settings_io.load()
    stream = io.StringIO()
    clean_env.setattr("sys.stderr", stream)
    logs.configure_logging(settings)

    # What kafka-python 3 logs at DEBUG when it authenticates (net/connection.py), and what
    # its admin client logs at start (admin/client.py), built by kafka-python itself.
    mechanism = SaslMechanismPlain(**settings.kafka_options())
    request = SaslAuthenticateRequest(mechanism.auth_bytes())
    assert CORE in repr(request)  # the line below would carry it
    logging.getLogger("kafka.net.connection").debug("%s Request %d: %s", "<conn>", 2, request)
    config = settings.kafka_options()
    logging.getLogger("kafka.admin.client").debug("Starting with configuration: %s", config)
    try:
        raise ValueError(f"refused {config['sasl_plain_password']}")
    except ValueError:
        logging.getLogger("worker.kafka.loop").exception("a failure quoting it")

    text = stream.getvalue()
    lines = text.strip().splitlines()
    assert CORE not in text, text
    assert text.count(logs.RedactSecrets.MASK) == 3, text
    if log_format == "json":  # kafka-python warns of PLAIN in the clear, then our three lines
        levels = [json.loads(line)["level"] for line in lines]
        assert levels == ["WARNING", "DEBUG", "DEBUG", "ERROR"]
        assert "ValueError: refused" in json.loads(lines[-1])["exception"]
    assert "SaslAuthenticateRequest" in text and "faultwatch" in text  # the rest of the line


def test_a_sasl_worker_logging_json_at_debug_never_logs_the_password(
    bootstrap, tiny_model_path, tmp_path
):
    env = worker_env(
        bootstrap,
        tiny_model_path,
        startup_timeout=2,
        log_level="DEBUG",
        kafka_log_level="DEBUG",
        **SASL,
    )
    worker = run_worker(env, tmp_path / "worker.log", "--log-format", "json", timeout=60)
    assert worker.process.returncode == 1  # the test broker speaks no SASL: not reachable
    lines = [json.loads(line) for line in worker.stderr.strip().splitlines()]
    assert len(lines) > 10 and {"DEBUG", "ERROR"} <= {line["level"] for line in lines}
    assert any("SaslHandshake" in line["message"] for line in lines)  # kafka-python talked
    assert any("security=SASL_PLAINTEXT" in line["message"] for line in lines)  # the summary
    assert CORE not in worker.stderr


def test_inspect_and_a_settings_error_never_show_the_password(clean_env, tiny_model_path, capsys):
    for name, value in SASL.items():
        clean_env.setenv(f"FAULTWATCH_{name.upper()}", value)
    for args in (["inspect", str(tiny_model_path)], ["inspect", str(tiny_model_path), "--json"]):
        assert cli.main(args) == 0
        out, err = capsys.readouterr()
        assert "input_dim" in out and CORE not in out + err

    # A setting error while the password is set names the variable, never the value.
    clean_env.setenv("FAULTWATCH_SECURITY_PROTOCOL", "PLAINTEXT")  # SASL settings now wrong
    assert cli.main(["run"]) == 2
    out, err = capsys.readouterr()
    assert "FAULTWATCH_SASL_MECHANISM" in err and CORE not in out + err
