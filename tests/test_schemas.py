"""The published message schemas: generated without Kafka, and true to what the worker writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from model.episodes import EpisodeConfig
from tests.helpers import Record, synthetic_values
from worker.control import MuteTable
from worker.inputs.windows import REASONS
from worker.pipeline import Episodes, Pipeline, Topics
from worker.schemas import EpisodeEvent, ScoreRecord, WindowEvent, message_schemas
from worker.state import EpisodeState

ROOT = Path(__file__).resolve().parents[1]
CONFIG = EpisodeConfig(
    open_seconds=0, clear_seconds=5, clear_ratio=1.0, update_seconds=3, silent_seconds=60
)


def stream(window: int) -> list[Record]:
    """Normal, anomalous, normal again: an episode opened and closed; one broken record."""
    normal = synthetic_values(30, window)
    shifted = synthetic_values(30, window, shift=25.0, seed=1)
    values = normal[:5] + shifted[5:11] + normal[11:23] + [b"{"]
    return [Record(offset, value) for offset, value in enumerate(values)]


def published(pipeline: Pipeline, records: list[Record], topic: str) -> list[dict]:
    outputs = pipeline.process(records).outputs
    return [json.loads(o.value) for o in outputs if o.topic == topic]


def test_every_topic_has_a_schema_a_key_and_its_setting():
    schemas = message_schemas()
    assert set(schemas) >= {"window", "sample", "tag", "episode-event", "window-event"}
    for name, entry in schemas.items():
        assert entry["topic"].startswith("FAULTWATCH_") and entry["key"], name
        schema = entry["schema"]
        assert schema is None or schema.get("type") == "object" or "$ref" in schema, name
    window = schemas["window"]["schema"]
    assert set(window["required"]) == {"machine_id", "timestamp", "values"}
    headers = [h["name"] for h in schemas["dead-letter"]["headers"]]
    assert headers[0] == "faultwatch.error.reason" and len(headers) == 5
    assert all(reason in schemas["dead-letter"]["headers"][0]["description"] for reason in REASONS)
    json.dumps(schemas)  # plain JSON, for the docs generator


def test_the_schemas_load_without_a_kafka_client():
    code = (
        "import sys, worker.schemas; sys.exit(len({'kafka', 'confluent_kafka'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_window_events_and_score_records_match_their_models(tiny_scorer):
    pipeline = Pipeline(tiny_scorer, Topics("events", "dlq", "scores"), max_record_bytes=100_000)
    records = stream(tiny_scorer.window)
    events = published(pipeline, records, "events")
    scores = published(pipeline, records, "scores")
    assert events and len(scores) == len(records) - 1
    for event in events:
        assert set(event) <= set(WindowEvent.model_fields)  # every field documented
        WindowEvent.model_validate(event, strict=True)
    for score in scores:
        assert set(score) <= set(ScoreRecord.model_fields)
        ScoreRecord.model_validate(score, strict=True)


def test_episode_events_match_their_model(tiny_scorer):
    state = EpisodeState(CONFIG, "windows", "group", lambda partitions: {})
    episodes = Episodes(state, MuteTable())
    pipeline = Pipeline(tiny_scorer, Topics("events", "dlq", None, "state"), 2, episodes)
    events = published(pipeline, stream(tiny_scorer.window), "events")
    assert {e["kind"] for e in events} >= {"opened", "closed"}
    for event in events:
        assert set(event) <= set(EpisodeEvent.model_fields)
        EpisodeEvent.model_validate(event, strict=True)
