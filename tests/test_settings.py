"""Settings: FAULTWATCH_* variables, flags over them, one-line errors, secrets kept secret."""

from __future__ import annotations

import os
import sys

import pytest

from worker import settings as settings_io
from worker.errors import SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("FAULTWATCH_")]:
        monkeypatch.delenv(name)


def test_defaults_follow_the_design(monkeypatch):
    s = settings_io.load()
    assert s.scores_topic == "" and s.auto_offset_reset == "earliest"
    assert s.torch_threads == 1 and s.security_protocol == "PLAINTEXT"
    assert s.idle_exit is None
    assert s.input_format == "windows" and s.input_grace_seconds == 5.0
    assert s.input_fill_limit == 5 and s.input_max_future_seconds == 120.0


def test_variables_are_read_and_flags_win(monkeypatch):
    monkeypatch.setenv("FAULTWATCH_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("FAULTWATCH_INPUT_TOPIC", "plant.windows")
    monkeypatch.setenv("FAULTWATCH_METRICS_PORT", "9000")
    s = settings_io.load({"metrics_port": "9100", "group_id": None})
    assert s.bootstrap_list == ["kafka-1:9092", "kafka-2:9092"]
    assert s.input_topic == "plant.windows"
    assert s.metrics_port == 9100  # the flag
    assert s.group_id == "faultwatch"  # a flag not given leaves the default


def test_settings_are_frozen():
    s = settings_io.load()
    with pytest.raises(ValueError):
        s.input_topic = "other"


@pytest.mark.parametrize(
    ("env", "overrides", "expected"),
    [
        (
            {"FAULTWATCH_METRICS_PORT": "nine"},
            {},
            "FAULTWATCH_METRICS_PORT: Input should be a valid integer",
        ),
        (
            {},
            {"metrics_port": "70000"},
            "--metrics-port: Input should be less than or equal to 65535",
        ),
        ({"FAULTWATCH_BOOTSTRAP_SERVERS": "kafka"}, {}, "'kafka' is not host:port"),
        (
            {"FAULTWATCH_DLQ_TOPIC": "dead letters"},
            {},
            "FAULTWATCH_DLQ_TOPIC: 'dead letters' is not",
        ),
        ({"FAULTWATCH_AUTO_OFFSET_RESET": "latest-ish"}, {}, "FAULTWATCH_AUTO_OFFSET_RESET"),
        ({"FAULTWATCH_SCORES_TOPIC": "faultwatch.windows"}, {}, "also an output topic"),
        (
            {"FAULTWATCH_HEARTBEAT_INTERVAL_MS": "9000", "FAULTWATCH_SESSION_TIMEOUT_MS": "6000"},
            {},
            "HEARTBEAT_INTERVAL_MS must be below",
        ),
        ({"FAULTWATCH_SECURITY_PROTOCOL": "SASL_SSL"}, {}, "needs FAULTWATCH_SASL_MECHANISM"),
        ({"FAULTWATCH_SASL_MECHANISM": "PLAIN"}, {}, "SASL_PLAINTEXT or SASL_SSL"),
        (
            {
                "FAULTWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "FAULTWATCH_SASL_MECHANISM": "PLAIN",
            },
            {},
            "needs FAULTWATCH_SASL_PLAIN_USERNAME and FAULTWATCH_SASL_PLAIN_PASSWORD",
        ),
        ({"FAULTWATCH_SSL_CAFILE": "/no/such/ca.pem"}, {}, "FAULTWATCH_SSL_CAFILE"),
        ({}, {"idle_exit": "0"}, "--idle-exit: Input should be greater than 0"),
        (
            {"FAULTWATCH_INPUT_FORMAT": "tags", "FAULTWATCH_EVENTS": "windows"},
            {},
            "FAULTWATCH_INPUT_FORMAT=tags needs FAULTWATCH_EVENTS=episodes",
        ),
        ({"FAULTWATCH_INPUT_FORMAT": "readings"}, {}, "FAULTWATCH_INPUT_FORMAT"),
        ({"FAULTWATCH_INPUT_FILL_LIMIT": "-1"}, {}, "FAULTWATCH_INPUT_FILL_LIMIT"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable_or_flag(monkeypatch, env, overrides, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        settings_io.load(overrides)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_security_passes_through_and_the_password_stays_secret(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("FAULTWATCH_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FAULTWATCH_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FAULTWATCH_SASL_PLAIN_USERNAME", "faultwatch")
    monkeypatch.setenv("FAULTWATCH_SASL_PLAIN_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("FAULTWATCH_SSL_CAFILE", str(ca))
    s = settings_io.load()
    options = s.kafka_options()
    assert options["sasl_plain_password"] == "hunter2-secret"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512" and options["ssl_cafile"] == str(ca)
    assert options["security_protocol"] == "SASL_SSL"
    for text in (repr(s), str(s), s.summary(), s.model_dump_json()):
        assert "hunter2-secret" not in text


def test_a_bad_password_value_is_never_echoed():
    with pytest.raises(SettingsError) as caught:
        settings_io.load({"sasl_plain_password": 987654321})  # not a string
    assert "FAULTWATCH_SASL_PLAIN_PASSWORD" in str(caught.value)
    assert "987654321" not in str(caught.value)


def test_plaintext_sends_no_security_options():
    options = settings_io.load().kafka_options()
    assert set(options) == {"bootstrap_servers", "client_id", "security_protocol"}


def test_misspelt_variables_are_found(monkeypatch):
    monkeypatch.setenv("FAULTWATCH_BOOTSTRAP_SERVER", "kafka:9092")
    monkeypatch.setenv("FAULTWATCH_TEST_BOOTSTRAP", "kafka:9092")  # the test suite's own
    monkeypatch.setenv("FAULTWATCH_GROUP_ID", "g")
    assert settings_io.unknown_variables() == ["FAULTWATCH_BOOTSTRAP_SERVER"]


def test_episode_settings_and_event_mode():
    s = settings_io.load()
    assert s.events == "episodes"
    assert (s.state_topic, s.control_topic) == ("faultwatch.state", "faultwatch.control")
    config = s.episode_config()
    assert (config.open_seconds, config.clear_seconds, config.clear_ratio) == (30, 600, 0.8)
    assert (config.update_seconds, config.silent_seconds) == (60, 600)


def test_the_deep_clear_time_reaches_the_episode_rules(monkeypatch):
    assert settings_io.load().episode_config().clear_deep_seconds == 150
    monkeypatch.setenv("FAULTWATCH_EPISODE_CLEAR_DEEP_SECONDS", "0")
    assert settings_io.load().episode_config().clear_deep_seconds == 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FAULTWATCH_EVENTS": "incidents"}, "FAULTWATCH_EVENTS: Input should be 'episodes'"),
        ({"FAULTWATCH_EPISODE_CLEAR_RATIO": "1.5"}, "FAULTWATCH_EPISODE_CLEAR_RATIO"),
        ({"FAULTWATCH_EPISODE_OPEN_SECONDS": "-1"}, "FAULTWATCH_EPISODE_OPEN_SECONDS"),
        ({"FAULTWATCH_STATE_TOPIC": "faultwatch.events"}, "topics of their own"),
        ({"FAULTWATCH_CONTROL_TOPIC": "faultwatch.state"}, "topics of their own"),
        ({"FAULTWATCH_STATE_TOPIC": "bad topic"}, "FAULTWATCH_STATE_TOPIC: 'bad topic' is not"),
    ],
)
def test_bad_episode_settings_are_one_line(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=expected.replace("(", r"\(")):
        settings_io.load()


def test_windows_mode_needs_no_state_or_control_topic_of_its_own(monkeypatch):
    monkeypatch.setenv("FAULTWATCH_EVENTS", "windows")
    monkeypatch.setenv("FAULTWATCH_STATE_TOPIC", "faultwatch.events")  # unused: no conflict
    assert settings_io.load().events == "windows"


def test_model_reload_and_shadow_settings(monkeypatch):
    s = settings_io.load()
    assert s.model_reload_seconds == 30 and s.shadow_model_path is None and s.shadow_topic == ""
    monkeypatch.setenv("FAULTWATCH_SHADOW_MODEL_PATH", "")  # empty: off, as in a ConfigMap
    monkeypatch.setenv("FAULTWATCH_MODEL_RELOAD_SECONDS", "0")
    assert settings_io.load().shadow_model_path is None
    monkeypatch.setenv("FAULTWATCH_SHADOW_MODEL_PATH", "/models/shadow")
    with pytest.raises(SettingsError, match="go together"):
        settings_io.load()
    monkeypatch.setenv("FAULTWATCH_SHADOW_TOPIC", "faultwatch.events")
    with pytest.raises(SettingsError, match="topic of its own"):
        settings_io.load()
    monkeypatch.setenv("FAULTWATCH_SHADOW_TOPIC", "faultwatch.shadow")
    s = settings_io.load()
    assert (str(s.shadow_model_path), s.shadow_topic) == ("/models/shadow", "faultwatch.shadow")
    assert "shadow_model=/models/shadow shadow=faultwatch.shadow" in s.summary()
    monkeypatch.setenv("FAULTWATCH_MODEL_RELOAD_SECONDS", "-1")
    with pytest.raises(SettingsError, match="FAULTWATCH_MODEL_RELOAD_SECONDS"):
        settings_io.load()


def test_librdkafka_gets_the_same_security_under_its_own_names(monkeypatch, tmp_path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert, key):
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("FAULTWATCH_BOOTSTRAP_SERVERS", "kafka-1:9093,kafka-2:9093")
    monkeypatch.setenv("FAULTWATCH_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FAULTWATCH_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("FAULTWATCH_SASL_PLAIN_USERNAME", "faultwatch")
    monkeypatch.setenv("FAULTWATCH_SASL_PLAIN_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("FAULTWATCH_SSL_CAFILE", str(ca))
    monkeypatch.setenv("FAULTWATCH_SSL_CERTFILE", str(cert))
    monkeypatch.setenv("FAULTWATCH_SSL_KEYFILE", str(key))
    monkeypatch.setenv("FAULTWATCH_SSL_CHECK_HOSTNAME", "false")
    assert settings_io.load().librdkafka_options() == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "client.id": "faultwatch",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "faultwatch",
        "sasl.password": "hunter2-secret",
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.endpoint.identification.algorithm": "none",
    }


def test_librdkafka_takes_the_sasl_options_it_is_given(monkeypatch):
    from confluent_kafka import Producer

    monkeypatch.setenv("FAULTWATCH_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("FAULTWATCH_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("FAULTWATCH_SASL_PLAIN_USERNAME", "faultwatch")
    monkeypatch.setenv("FAULTWATCH_SASL_PLAIN_PASSWORD", "hunter2-secret")
    Producer(settings_io.load().librdkafka_options()).flush(0)  # unknown names would raise


def test_the_client_is_kafka_python_unless_told(monkeypatch):
    assert settings_io.load().kafka_client == "kafka-python"
    monkeypatch.setenv("FAULTWATCH_KAFKA_CLIENT", "confluent")
    assert settings_io.load().kafka_client == "confluent"
    assert "client=confluent" in settings_io.load().summary()


def test_an_unknown_client_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("FAULTWATCH_KAFKA_CLIENT", "aiokafka")
    with pytest.raises(SettingsError) as caught:
        settings_io.load()
    assert str(caught.value).startswith("FAULTWATCH_KAFKA_CLIENT: ")
    assert "'kafka-python' or 'confluent'" in str(caught.value) and "\n" not in str(caught.value)


def test_confluent_without_its_library_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # as if not installed
    monkeypatch.setenv("FAULTWATCH_KAFKA_CLIENT", "confluent")
    with pytest.raises(SettingsError) as caught:
        settings_io.load()
    assert str(caught.value) == (
        "FAULTWATCH_KAFKA_CLIENT: confluent needs the confluent-kafka package: "
        "pip install 'faultwatch[rdkafka]'"
    )


def test_the_start_line_says_what_the_input_is(monkeypatch):
    assert "input_format=windows" in settings_io.load().summary()
    monkeypatch.setenv("FAULTWATCH_INPUT_FORMAT", "tags")
    line = settings_io.load().summary()
    assert "input_format=tags grace=5s fill_limit=5 max_future=120s" in line
