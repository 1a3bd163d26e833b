"""`faultwatch run` end to end on real SKAB windows through the real broker."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

from cli.main import main as cli_main
from model.preprocessing import sliding_windows
from model.recording import read_recording, to_rfc3339
from model.scoring import Scorer
from tests.conftest import SKAB_FILE
from tests.helpers import committed, headers, produce, read_topic, run_until, unique, worker_env
from tests.helpers import window_value as value_of
from worker.pipeline import event_id

MAX_RECORD_BYTES = 20_000


def invalid_records(channels: list[str], window: int) -> list[tuple[bytes | None, str]]:
    """One bad record per way of breaking the contract, with the reason it must get."""
    rows = [[0.5] * len(channels)] * window
    nested = b'{"machine_id":"m","timestamp":1,"values":' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        (None, "invalid_json"),  # a tombstone
        (b"\xff\xfe{}", "invalid_json"),  # not UTF-8
        (nested, "invalid_json"),  # deeper than the parser goes: a reason, not a crash
        (b"[1, 2, 3]", "schema"),
        (json.dumps({"machine_id": "m", "timestamp": 1}).encode(), "schema"),
        (value_of("m", 1, [["1"] * len(channels)] * window), "schema"),
        (value_of("m", "last tuesday", rows), "schema"),
        (value_of("m", 1, rows[:-1]), "shape"),
        (value_of("m", 1, [r[:-1] for r in rows]), "shape"),
        (value_of("m", 1, rows, channels=channels[::-1]), "channels"),
        (value_of("m", 1, rows).replace(b"0.5", b"NaN", 1), "non_finite"),
        (value_of("m", 1, rows).replace(b"0.5", b"1e999", 1), "non_finite"),
        (b'{"padding": "' + b"x" * MAX_RECORD_BYTES + b'"}', "too_large"),
    ]


@pytest.mark.skab
def test_skab_windows_are_scored_or_dead_lettered_exactly_once(
    bootstrap, make_topic, skab_dir, skab_model_path, tmp_path
):
    data = skab_dir / SKAB_FILE
    scorer = Scorer.load(skab_model_path)
    recording = read_recording(data)
    windows = sliding_windows(recording.values, scorer.window)  # (B, W, C), b ends at b + W - 1
    assert not np.isnan(windows).any()
    topics = {name: make_topic(name, partitions=2) for name in ("windows", "events", "scores")}
    topics["dlq"] = make_topic("dlq")

    # Valid windows on both partitions, a bad record after every 60th.
    bad = invalid_records(scorer.channels, scorer.window)
    records, expected = [], []  # expected: end row of a window, or the reason of a bad record
    for b, values in enumerate(windows):
        end_row = b + scorer.window - 1
        stamp = to_rfc3339(recording.timestamps[end_row])
        value = value_of("valve1-1", stamp, values, channels=scorer.channels)
        records.append((b"valve1-1", value, b % 2))
        expected.append(end_row)
        if b % 60 == 0 and bad:
            bad_value, reason = bad.pop()
            records.append((b"bad", bad_value, b % 2))
            expected.append(reason)
    assert not bad
    offsets = produce(bootstrap, topics["windows"], records)
    source = {
        offset: (record, want)
        for offset, record, want in zip(offsets, records, expected, strict=True)
    }

    group = unique("group")
    env = worker_env(
        bootstrap,
        skab_model_path,
        events="windows",
        input_topic=topics["windows"],
        events_topic=topics["events"],
        scores_topic=topics["scores"],
        dlq_topic=topics["dlq"],
        group_id=group,
        max_record_bytes=MAX_RECORD_BYTES,
        max_poll_records=200,
    )
    ends = Counter(partition for partition, _ in offsets)
    worker = run_until(
        env,
        tmp_path / "worker.log",
        lambda: committed(bootstrap, group, topics["windows"], 2) == dict(ends),
        "every offset committed",
        timeout=120,
    )
    assert worker.process.returncode == 0, worker.stderr
    assert "Traceback" not in worker.stderr

    scores = [json.loads(r.value) for r in read_topic(bootstrap, topics["scores"])]
    dead = read_topic(bootstrap, topics["dlq"])
    events = [json.loads(r.value) for r in read_topic(bootstrap, topics["events"])]

    # Every input offset was scored or dead-lettered, exactly once.
    seen = Counter((s["source"]["partition"], s["source"]["offset"]) for s in scores)
    seen += Counter(
        (
            int(headers(d)["faultwatch.source.partition"]),
            int(headers(d)["faultwatch.source.offset"]),
        )
        for d in dead
    )
    assert set(seen) == set(source)
    assert max(seen.values()) == 1

    # Dead letters: the original bytes, the reason and the source in headers.
    assert len(dead) == len(invalid_records(scorer.channels, scorer.window))
    for d in dead:
        h = headers(d)
        (key, value, _), reason = source[
            (int(h["faultwatch.source.partition"]), int(h["faultwatch.source.offset"]))
        ]
        assert (d.key, d.value) == (key, value if value is not None or key else b"")
        assert h["faultwatch.error.reason"].decode() == reason
        assert h["faultwatch.source.topic"].decode() == topics["windows"]
        assert h["faultwatch.error.message"]
    assert worker.stderr.count("dead letter topic=") == len(dead)

    # Scores equal `faultwatch score` on the same windows (its CSV keeps 6 digits).
    out = tmp_path / "scores.csv"
    assert cli_main(["score", str(data), "--model", str(skab_model_path), "--out", str(out)]) == 0
    with out.open() as f:
        offline = {int(row["end_row"]): row for row in csv.DictReader(f)}
    end_rows = [source[(s["source"]["partition"], s["source"]["offset"])][1] for s in scores]
    worker_scores = np.array([s["score"] for s in scores])
    offline_scores = np.array([float(offline[r]["score"]) for r in end_rows])
    np.testing.assert_allclose(worker_scores, offline_scores, rtol=2e-5)
    exact = scorer.score(windows[np.array(end_rows) - scorer.window + 1]).score
    np.testing.assert_allclose(worker_scores, exact, rtol=1e-6)
    clear = np.abs(worker_scores - scorer.threshold) > 1e-4 * scorer.threshold
    flags = np.array([s["anomaly"] for s in scores])
    offline_flags = np.array([offline[r]["anomaly"] == "1" for r in end_rows])
    assert (flags == offline_flags)[clear].all()

    # One event per anomalous window, with a unique id derived from its source record.
    anomalous = {(s["source"]["partition"], s["source"]["offset"]) for s in scores if s["anomaly"]}
    assert 0 < len(anomalous) < len(scores)  # the valve closes part-way through the file
    assert {(e["source"]["partition"], e["source"]["offset"]) for e in events} == anomalous
    assert len({e["event_id"] for e in events}) == len(events) == len(anomalous)
    for e in events:
        src = e["source"]
        assert e["event_id"] == event_id(src["topic"], src["partition"], src["offset"])
        assert e["model_version"] == scorer.version and e["threshold"] == scorer.threshold
        assert e["score"] > scorer.threshold and e["machine_id"] == "valve1-1"
        top = [c["channel"] for c in e["top_channels"]]
        assert len(set(top)) == 3 and set(top) <= set(scorer.channels)

    # The whole input is committed.
    per_partition = Counter(p for p, _ in offsets)
    assert committed(bootstrap, group, topics["windows"], 2) == dict(per_partition)
    print(next(line for line in worker.stderr.splitlines() if "shutdown batches=" in line))
