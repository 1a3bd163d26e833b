"""The batch logic without a broker: what each record of a batch turns into."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from model.scoring import Scorer
from tests.helpers import Record, synthetic_values, window_value
from tests.synthetic import normal_values, press_model, press_values, tiny_model
from worker.drift import ScoreDrift
from worker.pipeline import Pipeline, Topics, event_id
from worker.routing import Routes, Served


@pytest.fixture(scope="module")
def scorer(tiny_scorer: Scorer) -> Scorer:
    return tiny_scorer


def pipeline(scorer: Scorer, scores_topic: str | None = "scores") -> Pipeline:
    topics = Topics("events", "dlq", scores_topic)
    return Pipeline(scorer, topics, top_channels=2, max_record_bytes=10_000)


def batch(scorer: Scorer) -> list[Record]:
    normal = synthetic_values(4, scorer.window)
    shifted = synthetic_values(2, scorer.window, shift=25.0, seed=1)
    values = [normal[0], b"{", normal[1], shifted[0], None, normal[2], shifted[1], normal[3]]
    return [Record(offset, value) for offset, value in enumerate(values, start=100)]


def test_every_record_becomes_a_score_or_a_dead_letter(scorer):
    records = batch(scorer)
    result = pipeline(scorer).process(records)
    by_topic = {t: [o for o in result.outputs if o.topic == t] for t in ("events", "scores", "dlq")}
    scored = [json.loads(o.value)["source"]["offset"] for o in by_topic["scores"]]
    dead = [int(dict(o.headers)["faultwatch.source.offset"]) for o in by_topic["dlq"]]
    assert sorted(scored + dead) == [r.offset for r in records]
    assert dead == [101, 104]
    assert len(result.scores) == 6 and result.dead_letters == {"invalid_json": 2}
    assert result.anomalies == len(by_topic["events"]) >= 2  # the shifted windows at least


def test_a_dead_letter_is_the_original_record_with_headers(scorer):
    records = [Record(7, b"[1, 2]", key=b"\x00raw key"), Record(8, None, key=None)]
    dlq = pipeline(scorer).process(records).outputs
    assert (dlq[0].topic, dlq[0].key, dlq[0].value) == ("dlq", b"\x00raw key", b"[1, 2]")
    assert dict(dlq[0].headers) == {
        "faultwatch.error.reason": b"schema",
        "faultwatch.error.message": b"expected a JSON object",
        "faultwatch.source.topic": b"windows",
        "faultwatch.source.partition": b"3",
        "faultwatch.source.offset": b"7",
    }
    assert (dlq[1].key, dlq[1].value) == (None, b"")  # Kafka needs a key or a value


def test_events_describe_the_anomaly_and_are_the_same_on_redelivery(scorer):
    records = batch(scorer)
    first = pipeline(scorer).process(records).outputs
    again = pipeline(scorer).process(records).outputs
    assert first == again  # same ids, same bytes: consumers can drop the duplicates
    events = [json.loads(o.value) for o in first if o.topic == "events"]
    for event in events:
        assert event["event_id"] == event_id("windows", 3, event["source"]["offset"])
        assert event["machine_id"] == "pump-1" and event["model_version"] == scorer.version
        assert event["score"] > event["threshold"] == scorer.threshold
        assert event["timestamp"].endswith("Z")
        assert len(event["top_channels"]) == 2
        assert {c["channel"] for c in event["top_channels"]} <= set(scorer.channels)
    assert len({e["event_id"] for e in events}) == len(events)


def test_batch_scores_equal_the_scorer_one_window_at_a_time(scorer):
    records = batch(scorer)
    result = pipeline(scorer).process(records)
    valid = [r for r in records if r.value not in (None, b"{")]
    one_by_one = [pipeline(scorer).process([r]).scores[0] for r in valid]
    np.testing.assert_allclose(result.scores, one_by_one, rtol=1e-6)


def test_scores_topic_off_means_events_only(scorer):
    result = pipeline(scorer, scores_topic=None).process(batch(scorer))
    assert {o.topic for o in result.outputs} == {"events", "dlq"}


def test_a_key_other_than_the_machine_id_is_a_dead_letter_and_none_takes_the_machine_id(scorer):
    value = synthetic_values(1, scorer.window)[0]  # machine_id pump-1
    records = [Record(1, value, key=b"k"), Record(2, value, key=None), Record(3, value)]
    result = pipeline(scorer).process(records)
    scores = [o for o in result.outputs if o.topic == "scores"]
    assert [o.key for o in scores] == [b"pump-1", b"pump-1"]
    (dead,) = [o for o in result.outputs if o.topic == "dlq"]
    assert (dead.key, dead.value) == (b"k", value) and result.dead_letters == {"key_mismatch": 1}
    assert dict(dead.headers)["faultwatch.error.message"] == (
        b"key b'k' is not the machine_id 'pump-1'"
    )


def test_values_too_large_to_score_are_dead_letters_not_nan_scores(scorer):
    rows = np.full((scorer.window, len(scorer.channels)), 30.0)
    rows[3, 1] = 1e300  # finite JSON, but the model overflows on it
    value = json.dumps({"machine_id": "pump-1", "timestamp": 0, "values": rows.tolist()}).encode()
    result = pipeline(scorer).process(
        [Record(1, value), Record(2, synthetic_values(1, scorer.window)[0])]
    )
    assert result.dead_letters == {"non_finite": 1} and np.isfinite(result.scores).all()
    assert [o.topic for o in result.outputs if o.topic != "events"] == ["dlq", "scores"]


def test_a_batch_of_only_bad_records_scores_nothing(scorer):
    result = pipeline(scorer).process([Record(1, b"{"), Record(2, b"")])
    assert len(result.scores) == 0 and result.anomalies == 0
    assert [o.topic for o in result.outputs] == ["dlq", "dlq"]


# --- several models: routed by machine id, one forward pass per model


def two_models() -> Routes:
    """pump-* (window 10, 4 channels) and press-* (window 6, 3 channels)."""
    pump = dataclasses.replace(tiny_model().artifact, machines=("pump-*",))
    press = press_model().artifact
    return Routes(
        [
            Served(name, Path(f"{name}.fwm"), Scorer(a), ScoreDrift(a.score_quantiles))
            for name, a in (("pump", pump), ("press", press))
        ]
    )


def test_each_machine_is_scored_by_its_model_in_batch_order_and_unserved_ones_dead_letter():
    routes = two_models()
    pump, press = (m.scorer for m in routes.models)
    pump_rows = normal_values(20, seed=3)
    press_rows = press_values(20, seed=4)
    press_rows[8:] *= 1.5  # an anomaly on the press
    records, expected = [], []
    for t in range(8):
        p = pump_rows[t : t + pump.window]
        q = press_rows[t + 4 : t + 4 + press.window]
        records += [
            Record(2 * t, window_value("pump-1", 1_700_000_000 + t, p)),
            Record(2 * t + 1, window_value("press-1", 1_700_000_000 + t, q), key=b"press-1"),
        ]
        expected += [pump.score(p[None]).score[0], press.score(q[None]).score[0]]
    records += [
        Record(50, window_value("compressor-1", 0, pump_rows[:10]), key=b"compressor-1"),
        Record(51, window_value("press-2", 0, pump_rows[:10]), key=b"press-2"),  # pump's shape
    ]
    result = Pipeline(routes, Topics("events", "dlq", "scores"), max_record_bytes=10_000).process(
        records
    )
    scores = [json.loads(o.value) for o in result.outputs if o.topic == "scores"]
    assert [s["source"]["offset"] for s in scores] == list(range(16))  # batch order kept
    np.testing.assert_allclose([s["score"] for s in scores], expected, rtol=1e-6)
    assert {s["machine_id"]: s["model_version"] for s in scores} == {
        "pump-1": pump.version,
        "press-1": press.version,
    }
    assert result.dead_letters == {"no_model": 1, "shape": 1}
    dead = {o.key: dict(o.headers) for o in result.outputs if o.topic == "dlq"}
    assert dead[b"compressor-1"]["faultwatch.error.message"] == (
        b"no model serves machine 'compressor-1'"
    )
    assert [(b.served.name, len(b.scores)) for b in result.models] == [("pump", 8), ("press", 8)]
    events = [json.loads(o.value) for o in result.outputs if o.topic == "events"]
    assert events and {e["machine_id"] for e in events} == {"press-1"}


def test_events_and_score_records_name_the_leading_detector_and_every_ratio(scorer):
    result = pipeline(scorer).process(batch(scorer))
    records = [json.loads(o.value) for o in result.outputs if o.topic in ("events", "scores")]
    assert records
    names = set(scorer.detector_names)
    for record in records:
        assert set(record["detectors"]) == names
        assert record["detector"] in names
        assert record["detectors"][record["detector"]] == pytest.approx(record["score"], 1e-5)
