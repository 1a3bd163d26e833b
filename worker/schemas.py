"""The JSON Schema of every topic's message, generated from pydantic models, for the docs.

`message_schemas()` is what the docs generator (tools/gen_reference.py) imports, without a
Kafka client: one entry per message, naming the setting of its topic, its key, its value's
JSON Schema and its headers. The input window's model is the decoder's own reference
(worker/inputs/windows.py), samples and tags are the readings decoder's msgspec structs
(worker/inputs/readings.py); the output models below describe what worker/pipeline.py and
model/episodes.py write, and a test holds them to what the pipeline publishes. State records
and control commands have no pydantic model (worker/state/, worker/control/): absent here.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from worker.inputs.readings import Sample, Tag
from worker.inputs.windows import REASONS, WindowMessage


class _Output(BaseModel):
    # Consumers should ignore fields they do not know: later versions may add some.
    model_config = ConfigDict(extra="allow", frozen=True)


class Source(_Output):
    """The input record a result stands for."""

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class ChannelShare(_Output):
    channel: str
    share: float = Field(ge=0, le=1, description="share of the score this channel carried")


class WindowEvent(_Output):
    """FAULTWATCH_EVENTS=windows: one event per anomalous window."""

    event_id: str = Field(description="sha256 of topic:partition:offset, 32 hex digits")
    machine_id: str
    timestamp: str = Field(description="the window's time, RFC 3339 UTC")
    score: float = Field(ge=0)
    threshold: float
    model_version: str
    top_channels: list[ChannelShare]
    detector: str = Field(description="the detector that led this window's score")
    detectors: dict[str, float] = Field(description="each detector's ratio to its reference")
    source: Source


class EpisodeEvent(_Output):
    """FAULTWATCH_EVENTS=episodes (default): an episode opened, updated or closed."""

    kind: Literal["opened", "updated", "closed"]
    event_id: str = Field(description="deterministic: the same input gives the same id")
    episode_id: str = Field(description="the same for every event of one episode")
    machine_id: str
    model_version: str = Field(description="the version of the model serving the machine")
    model_versions: list[str] = Field(description="every model version that scored the episode")
    started_at: str = Field(description="time of the first anomalous window, RFC 3339")
    opened_at: str | None = None
    timestamp: str = Field(description="time of the window that caused this event")
    ended_at: str | None = Field(None, description="`closed` only: normal again from")
    duration_seconds: float = Field(ge=0)
    windows: int = Field(ge=0, description="anomalous windows so far")
    peak_score: float
    peak_at: str | None = None
    score: float
    threshold: float
    top_channels: list[ChannelShare]
    detector: str = Field(description="the detector that led at the peak")
    detectors: dict[str, float] = Field(default_factory=dict)
    close_reason: str | None = Field(None, description="`closed` only: cleared, silent, muted...")
    label: str | None = Field(None, description="the episode's last label, if any")
    source: Source


class ScoreRecord(_Output):
    """FAULTWATCH_SCORES_TOPIC and FAULTWATCH_SHADOW_TOPIC (with `live`): one per window."""

    machine_id: str
    timestamp: str
    score: float = Field(ge=0)
    threshold: float
    anomaly: bool
    model_version: str
    detector: str
    detectors: dict[str, float]
    source: Source


DEAD_LETTER_HEADERS: list[tuple[str, str]] = [
    ("faultwatch.error.reason", f"a stable code: {', '.join(REASONS)}"),
    ("faultwatch.error.message", "one line saying what is wrong, at most 300 characters"),
    ("faultwatch.source.topic", "the topic the record was read from"),
    ("faultwatch.source.partition", "its partition, decimal"),
    ("faultwatch.source.offset", "its offset, decimal"),
]


def message_schemas() -> dict[str, dict[str, Any]]:
    """Every message the worker reads or writes: its topic setting, key, value schema, headers."""
    key = "the machine id (UTF-8)"
    return {
        "window": _entry("FAULTWATCH_INPUT_TOPIC", key, WindowMessage.model_json_schema()),
        "sample": _entry("FAULTWATCH_INPUT_TOPIC", key, msgspec.json.schema(Sample)),
        "tag": _entry("FAULTWATCH_INPUT_TOPIC", key, msgspec.json.schema(Tag)),
        "episode-event": _entry("FAULTWATCH_EVENTS_TOPIC", key, EpisodeEvent.model_json_schema()),
        "window-event": _entry("FAULTWATCH_EVENTS_TOPIC", key, WindowEvent.model_json_schema()),
        "score-record": _entry("FAULTWATCH_SCORES_TOPIC", key, ScoreRecord.model_json_schema()),
        "dead-letter": {
            "topic": "FAULTWATCH_DLQ_TOPIC",
            "key": "the input record's key, unchanged",
            "schema": None,  # the input record's value, byte for byte
            "headers": [{"name": n, "description": d} for n, d in DEAD_LETTER_HEADERS],
        },
    }


def _entry(topic: str, key: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"topic": topic, "key": key, "schema": schema, "headers": []}
