"""The worker's one settings object: FAULTWATCH_* environment variables, `run` flags over them."""

# Only this module reads the environment. Secrets are `SecretStr`: they print as stars and
# reach the Kafka client alone, through `kafka_options()`.

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.episodes import EpisodeConfig
from worker.errors import SettingsError

ENV_PREFIX = "FAULTWATCH_"
# Variables of the test suite and tools, not of the worker: never reported as unknown.
OTHER_VARIABLES = {"FAULTWATCH_TEST_BOOTSTRAP", "FAULTWATCH_SKAB_DIR", "FAULTWATCH_TEP_DIR"}
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["text", "json"]
EventsMode = Literal["episodes", "windows"]
InputFormat = Literal["windows", "samples", "tags"]
KafkaClient = Literal["kafka-python", "confluent"]

# Settings that `faultwatch run` also takes as flags (flags win over the environment).
FLAGS = {
    "bootstrap_servers": "--bootstrap-servers",
    "input_topic": "--input-topic",
    "events_topic": "--events-topic",
    "scores_topic": "--scores-topic",
    "dlq_topic": "--dlq-topic",
    "group_id": "--group-id",
    "model_path": "--model",
    "metrics_port": "--metrics-port",
    "startup_timeout": "--startup-timeout",
    "idle_exit": "--idle-exit",
    "log_format": "--log-format",
    "log_level": "--log-level",
}


class Settings(BaseSettings):
    """Everything `faultwatch run` can be told, read once at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # Kafka: where the windows come from and where results go
    bootstrap_servers: str = Field("localhost:9092", description="host:port[,host:port...]")
    input_topic: str = Field("faultwatch.windows", description="topic of sensor windows")
    events_topic: str = Field("faultwatch.events", description="topic of anomaly events")
    scores_topic: str = Field("", description="topic of every window's score (empty: off)")
    dlq_topic: str = Field("faultwatch.dead-letters", description="dead-letter topic")
    state_topic: str = Field("faultwatch.state", description="episode state (changelog) topic")
    control_topic: str = Field("faultwatch.control", description="mute commands topic")
    group_id: str = Field("faultwatch", min_length=1, description="consumer group")
    # Static membership: a member restarted under the same id (the pod name) takes its
    # partitions back without waiting for its old session; a clean stop does not leave.
    group_instance_id: str = Field(
        "", description="static group membership: a name that survives restarts (empty: off)"
    )
    client_id: str = Field(
        "faultwatch", description="Kafka client id, in the broker's logs and quotas"
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group with no committed offsets starts"
    )
    session_timeout_ms: int = Field(45_000, ge=1_000, description="group liveness: session")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="group liveness: heartbeat")
    max_poll_records: int = Field(
        500, ge=1, le=100_000, description="records per batch (one forward pass), at most"
    )
    # Fetched records wait in memory until polled: at most about two fetches of these sizes.
    fetch_max_bytes: int = Field(
        16 * 2**20, ge=1_024, description="bytes of fetched records held in memory, at most"
    )
    max_partition_fetch_bytes: int = Field(
        2**20, ge=1_024, description="bytes fetched from one partition at a time, at most"
    )
    # Longest a broker may hold a fetch while waiting for records: bounds the latency added
    # by brokers that answer a long poll late (Tansu), at 10 empty fetches/s when idle.
    fetch_max_wait_ms: int = Field(
        100, ge=0, description="longest a broker may hold an empty fetch (bounds added latency)"
    )
    max_record_bytes: int = Field(
        1_000_000, ge=64, description="larger input records are dead-lettered as too_large"
    )
    max_request_bytes: int = Field(
        16 * 2**20, ge=1_024, description="largest record the worker will send"
    )
    startup_timeout: float = Field(
        60.0,
        gt=0,
        description="seconds to reach the broker (exit 1 after that); joining the group then "
        "takes as long as the group needs, not ready meanwhile",
    )
    # The client library: kafka-python (default) or confluent (librdkafka; faultwatch[rdkafka])
    kafka_client: KafkaClient = Field(
        "kafka-python",
        description="the Kafka client library: kafka-python, or confluent (librdkafka; "
        "pip install 'faultwatch[rdkafka]')",
    )

    # Kafka security, passed through to the client
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Kafka security protocol")
    sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism")
    sasl_plain_username: str | None = Field(None, description="SASL user name")
    sasl_plain_password: SecretStr | None = Field(
        None, description="SASL password (from a secret; never logged)"
    )
    ssl_cafile: FilePath | None = Field(None, description="CA certificate file (PEM)")
    ssl_certfile: FilePath | None = Field(None, description="client certificate (mutual TLS)")
    ssl_keyfile: FilePath | None = Field(None, description="client key (mutual TLS)")
    ssl_check_hostname: bool = Field(True, description="check the broker's certificate names it")

    # The models: a file for every machine, or a directory of files routed by machine id
    model_path: Path = Field(
        Path("model.fwm"), description="model file, or directory of model files, to score with"
    )
    model_reload_seconds: float = Field(
        30.0,
        ge=0,
        description="re-read the model path and the shadow path this often, between batches "
        "(0: only on SIGHUP)",
    )
    shadow_model_path: Path | None = Field(
        None, description="candidate models (a file or a directory); set with SHADOW_TOPIC"
    )
    shadow_topic: str = Field("", description="topic of the candidates' score records (empty: off)")
    torch_threads: int = Field(
        1, ge=1, le=256, description="torch threads scoring; 1 is right for a 1-2 core container"
    )
    top_channels: int = Field(3, ge=1, description="channels named in an event's top_channels")

    # Input: windows, or samples and tags the worker assembles into windows
    input_format: InputFormat = Field(
        "windows",
        description="what an input record holds: a window (`windows`), one machine's channels "
        "at one time (`samples`) or one channel's value (`tags`); samples and tags are "
        "assembled into the model's windows on its sampling interval",
    )
    input_grace_seconds: float = Field(
        5.0,
        ge=0,
        description="samples, tags: data-time seconds a bucket stays open after the machine's "
        "latest reading passes it; a reading for a closed bucket is a dead letter (`late`)",
    )
    input_fill_limit: int = Field(
        5,
        ge=0,
        description="samples, tags: buckets a missing channel carries its last value into; "
        "windows over longer gaps are skipped and counted",
    )
    input_max_future_seconds: float = Field(
        120.0,
        gt=0,
        description="a window or reading stamped further ahead of the wall clock, or (samples, "
        "tags) a reading further ahead of its machine's latest reading (a jumping clock), is a "
        "dead letter (`future`)",
    )

    # Events: one per episode (default) or one per anomalous window; episode rules in data time
    events: EventsMode = Field(
        "episodes",
        description="episodes, or windows: one event per anomalous window (no state, no "
        "control topic)",
    )
    # Defaults chosen on SKAB valve1 and TEP with benchmarks/episodes.py (docs/quality.md).
    episode_open_seconds: float = Field(
        30.0, ge=0, description="an episode opens once anomalous this long (0: at once)"
    )
    episode_clear_seconds: float = Field(
        600.0, ge=0, description="it closes once below clear ratio x threshold this long"
    )
    episode_clear_ratio: float = Field(
        0.8, gt=0, le=1, description="hysteresis: the share of the threshold that clears"
    )
    episode_update_seconds: float = Field(
        60.0, ge=0, description="at most one updated event per this, when the peak rose"
    )
    episode_silent_seconds: float = Field(
        600.0, ge=0, description="a machine silent this long closes its episode (0: never)"
    )
    # Each rule in windows as well (one per sample): they decide on slowly sampled machines
    # (docs/concepts-drift-and-recovery.md).
    episode_open_windows: int = Field(
        EpisodeConfig.open_windows, ge=1, description="... and for at least this many windows"
    )
    episode_clear_windows: int = Field(
        EpisodeConfig.clear_windows,
        ge=1,
        description="... closes after at least this many windows below (and settles after them)",
    )
    episode_silent_windows: int = Field(
        EpisodeConfig.silent_windows,
        ge=1,
        description="... and silent at least this many of the model's sampling intervals",
    )
    episode_settle_seconds: float = Field(
        EpisodeConfig.settle_seconds,
        ge=0,
        description="an open episode steady (within x1.5) this long takes that level as the "
        "machine's normal, then clears: quick recovery (short) or no steady fault learned "
        "(long; 0: never); also the longest a machine is held after a label closes its episode "
        "(and EPISODE_CLEAR_WINDOWS windows; at least EPISODE_CLEAR_SECONDS)",
    )
    episode_clear_deep_seconds: float = Field(
        EpisodeConfig.clear_deep_seconds,
        ge=0,
        description="an open episode whose scores have stayed at or below the threshold this "
        "long (and clear windows), at a geometric mean under half the threshold, closes: "
        "quick recovery once well inside normal (0: only the clear rule)",
    )
    adapt_seconds: float = Field(
        EpisodeConfig.adapt_seconds,
        ge=0,
        description="time constant of each machine's baseline, its normal score level, "
        "learned outside episodes (0: no adaptation)",
    )
    adapt_max_factor: float = Field(
        EpisodeConfig.adapt_max,
        ge=1,
        description="the most a machine's baseline may divide its scores by",
    )

    # Operations
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="/metrics, /healthz, /readyz (0: off)"
    )
    metrics_host: str = Field(
        "0.0.0.0", description="address of the metrics and probe server (127.0.0.1: this host)"
    )
    lag_interval: float = Field(5.0, gt=0, description="seconds between consumer-lag refreshes")
    idle_exit: float | None = Field(None, gt=0, description="stop after S seconds without records")
    log_format: LogFormat = Field("text", description="text or json (one object per line)")
    log_level: LogLevel = Field("INFO", description="log level of faultwatch")
    # kafka-python logs every reconnect attempt
    kafka_log_level: LogLevel = Field("CRITICAL", description="log level of the Kafka client")

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server.strip()!r} is not host:port")
        return value

    @field_validator("input_topic", "events_topic", "dlq_topic", "state_topic", "control_topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if not TOPIC_NAME.match(value):
            raise ValueError(f"{value!r} is not a Kafka topic name ([A-Za-z0-9._-], 1-249)")
        return value

    @field_validator("kafka_client")
    @classmethod
    def _check_client_installed(cls, value: str) -> str:
        if value == "confluent":
            try:
                import confluent_kafka  # noqa: F401
            except ImportError:
                raise ValueError(
                    "confluent needs the confluent-kafka package: pip install 'faultwatch[rdkafka]'"
                ) from None
        return value

    @field_validator("shadow_model_path", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("group_instance_id")
    @classmethod
    def _check_instance_id(cls, value: str) -> str:
        if value and not TOPIC_NAME.match(value):
            raise ValueError(f"{value!r} is not a group instance id ([A-Za-z0-9._-], 1-249)")
        return value

    @field_validator("scores_topic", "shadow_topic")
    @classmethod
    def _check_optional_topic(cls, value: str) -> str:
        return cls._check_topic(value) if value else value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        outputs = {self.events_topic, self.dlq_topic, self.scores_topic, self.shadow_topic}
        outputs.discard("")
        if bool(self.shadow_model_path) != bool(self.shadow_topic):
            raise ValueError(
                "FAULTWATCH_SHADOW_MODEL_PATH and FAULTWATCH_SHADOW_TOPIC go together: the "
                "candidates' score records need a topic of their own"
            )
        if self.shadow_topic and self.shadow_topic in {
            self.events_topic,
            self.dlq_topic,
            self.scores_topic,
        }:
            raise ValueError(
                "FAULTWATCH_SHADOW_TOPIC must be a topic of its own, apart from the events, "
                "scores and dead-letter topics"
            )
        if self.events == "episodes":
            own = {self.state_topic, self.control_topic}
            if len(own) < 2 or own & (outputs | {self.input_topic}):
                raise ValueError(
                    "FAULTWATCH_STATE_TOPIC and FAULTWATCH_CONTROL_TOPIC must be topics of "
                    "their own, apart from each other and the input, events, scores and "
                    "dead-letter topics"
                )
        if self.input_format != "windows" and self.events != "episodes":
            raise ValueError(
                f"FAULTWATCH_INPUT_FORMAT={self.input_format} needs FAULTWATCH_EVENTS=episodes: "
                "the windows assembled from readings keep their state in the state topic, with "
                "the episodes'"
            )
        if self.input_topic in outputs:
            raise ValueError(
                f"FAULTWATCH_INPUT_TOPIC {self.input_topic!r} is also an output topic: "
                "the worker would read its own events"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                "FAULTWATCH_HEARTBEAT_INTERVAL_MS must be below FAULTWATCH_SESSION_TIMEOUT_MS"
            )
        self._check_security()
        return self

    def _check_security(self) -> None:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not self.sasl_mechanism:
            raise ValueError(f"{self.security_protocol} needs FAULTWATCH_SASL_MECHANISM")
        if self.sasl_mechanism and not sasl:
            raise ValueError(
                "FAULTWATCH_SASL_MECHANISM needs FAULTWATCH_SECURITY_PROTOCOL "
                "SASL_PLAINTEXT or SASL_SSL"
            )
        if sasl and (not self.sasl_plain_username or self.sasl_plain_password is None):
            raise ValueError(
                f"SASL {self.sasl_mechanism} needs FAULTWATCH_SASL_PLAIN_USERNAME "
                "and FAULTWATCH_SASL_PLAIN_PASSWORD"
            )
        ssl_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if any(ssl_files) and not self.security_protocol.endswith("SSL"):
            raise ValueError(
                "FAULTWATCH_SSL_* files need FAULTWATCH_SECURITY_PROTOCOL SSL or SASL_SSL"
            )

    @property
    def bootstrap_list(self) -> list[str]:
        return [server.strip() for server in self.bootstrap_servers.split(",")]

    def kafka_options(self) -> dict[str, Any]:
        """Connection options for every kafka-python client: bootstrap, identity, security."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_list,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_plain_username
            options["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        if self.security_protocol.endswith("SSL"):
            options["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if (path := getattr(self, name)) is not None:
                    options[name] = str(path)
        return options

    def librdkafka_options(self) -> dict[str, Any]:
        """The same connection for librdkafka (FAULTWATCH_KAFKA_CLIENT=confluent): its names."""
        options: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.bootstrap_list),
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["sasl.mechanism"] = self.sasl_mechanism
            options["sasl.username"] = self.sasl_plain_username
            options["sasl.password"] = self.sasl_plain_password.get_secret_value()
        if self.security_protocol.endswith("SSL"):
            check = self.ssl_check_hostname
            options["ssl.endpoint.identification.algorithm"] = "https" if check else "none"
            names = {
                "ssl_cafile": "ssl.ca.location",
                "ssl_certfile": "ssl.certificate.location",
                "ssl_keyfile": "ssl.key.location",
            }
            for name, option in names.items():
                if (path := getattr(self, name)) is not None:
                    options[option] = str(path)
        return options

    def episode_config(self) -> EpisodeConfig:
        """The episode rules, for the worker and `faultwatch score --episodes` alike."""
        return EpisodeConfig(
            open_seconds=self.episode_open_seconds,
            clear_seconds=self.episode_clear_seconds,
            clear_ratio=self.episode_clear_ratio,
            update_seconds=self.episode_update_seconds,
            silent_seconds=self.episode_silent_seconds,
            open_windows=self.episode_open_windows,
            clear_windows=self.episode_clear_windows,
            silent_windows=self.episode_silent_windows,
            settle_seconds=self.episode_settle_seconds,
            clear_deep_seconds=self.episode_clear_deep_seconds,
            adapt_seconds=self.adapt_seconds,
            adapt_max=self.adapt_max_factor,
        )

    def secret_values(self) -> list[str]:
        """The secrets themselves, for the log filter that keeps them out of every line."""
        password = self.sasl_plain_password
        return [password.get_secret_value()] if password is not None else []

    def summary(self) -> str:
        """The settings worth a start-up log line, as key=value; never a secret."""
        scores = self.scores_topic or "off"
        instance = f" instance={self.group_instance_id}" if self.group_instance_id else ""
        line = (
            f"bootstrap={self.bootstrap_servers} client={self.kafka_client} "
            f"security={self.security_protocol} "
            f"input={self.input_topic} events={self.events_topic} scores={scores} "
            f"dlq={self.dlq_topic} group={self.group_id}{instance} model={self.model_path} "
            f"event_mode={self.events} model_reload={self.model_reload_seconds:g}s "
            f"input_format={self.input_format}"
        )
        if self.input_format != "windows":
            line += (
                f" grace={self.input_grace_seconds:g}s fill_limit={self.input_fill_limit} "
                f"max_future={self.input_max_future_seconds:g}s"
            )
        if self.shadow_model_path:
            line += f" shadow_model={self.shadow_model_path} shadow={self.shadow_topic}"
        if self.events == "episodes":
            line += f" state={self.state_topic} control={self.control_topic}"
        return line


def load(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the environment, with `overrides` (the `run` flags) on top."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_first_problem(exc, overrides)) from None


def unknown_variables() -> list[str]:
    """FAULTWATCH_* variables that name no setting: most likely typos."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    return sorted(
        n for n in os.environ if n.upper().startswith(ENV_PREFIX) and n.upper() not in known
    )


def _first_problem(exc: ValidationError, overrides: dict[str, Any]) -> str:
    """One line naming the variable or flag at fault, never echoing a secret."""
    error = exc.errors(include_url=False)[0]
    field = str(error["loc"][0]) if error["loc"] else None
    message = error["msg"].removeprefix("Value error, ")
    if field is None:
        return message
    name = FLAGS[field] if field in overrides and field in FLAGS else ENV_PREFIX + field.upper()
    secret = "password" in field
    given = error.get("input")
    echo = isinstance(given, str | int | float) and len(str(given)) <= 80
    if secret or not echo or error["type"] == "value_error":  # value errors quote it already
        return f"{name}: {message}"
    return f"{name}: {message} (got {given!r})"
