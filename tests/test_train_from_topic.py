"""`faultwatch train --from-topic`: windows read back from the real broker, rows rebuilt."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from cli import topic_windows
from cli.main import main
from cli.replay import TopicRange
from model import artifact as artifact_io
from model.recording import format_time
from model.scoring import Scorer
from tests.helpers import committed, produce, unique, window_value
from tests.synthetic import CHANNELS, normal_values, write_csv
from worker import settings as settings_io

# The tiny model's shape (tests/synthetic.py TINY), as flags.
TINY_FLAGS = [
    "--epochs", "8", "--seed", "1", "--hidden", "32", "--bottleneck", "4",
    "--denoise", "mean", "--kernel", "3", "--quiet",
]  # fmt: skip
T0 = 1_700_000_000


def at(seconds: int) -> str:
    """RFC 3339 time of the window ending at row `seconds` (one row a second from T0)."""
    return format_time(datetime.fromtimestamp(T0 + seconds, UTC))


def test_a_model_from_replayed_windows_matches_the_one_from_their_csv(
    bootstrap, make_topic, tmp_path, capsys
):
    data = write_csv(tmp_path / "pump-1.csv", normal_values(400, seed=5))
    topic = make_topic("history", partitions=2)
    replay = ["replay", str(data), "--topic", topic, "--window", "10"]
    assert main([*replay, "--bootstrap-servers", bootstrap]) == 0
    # A production group's committed offsets, which training must leave as they are.
    group = unique("production")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(5, "", -1)})
    consumer.close(autocommit=False)
    capsys.readouterr()

    from_csv, from_topic = tmp_path / "csv.fwm", tmp_path / "topic.fwm"
    assert main(["train", str(data), "--out", str(from_csv), "--window", "10", *TINY_FLAGS]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    flags = ["--from-topic", topic, "--since", "1h", "--bootstrap-servers", bootstrap]
    assert main(["train", *flags, "--out", str(from_topic), *TINY_FLAGS]) == 0
    topic_lines = capsys.readouterr().out.splitlines()

    assert topic_lines[0].startswith(f"read 391 records from {topic}: 391 windows of 1 machines")
    assert "1 segments, 400 rows" in topic_lines[0]
    # The same report and summary as from CSV, figure for figure but the time.
    assert topic_lines[1].startswith(f"model written to {from_topic}")
    summary = [dict(f.split("=") for f in lines[-1].split()) for lines in (csv_lines, topic_lines)]
    for figures in summary:
        figures.pop("seconds"), figures.pop("version")  # the version names the source files
    assert summary[0] == summary[1]
    a, b = (Scorer(artifact_io.load(path)) for path in (from_csv, from_topic))
    assert (a.window, a.channels, a.threshold) == (b.window, b.channels, b.threshold)
    windows = np.lib.stride_tricks.sliding_window_view(normal_values(60, seed=9), 10, axis=0)
    windows = windows.transpose(0, 2, 1)  # (B, W, C)
    np.testing.assert_allclose(a.score(windows).score, b.score(windows).score, rtol=1e-6)
    np.testing.assert_array_equal(a.artifact.score_quantiles, b.artifact.score_quantiles)
    assert committed(bootstrap, group, topic, 2) == {0: 5, 1: None}


def test_windows_inside_episodes_and_mutes_are_left_out(bootstrap, make_topic, tmp_path, capsys):
    rows = normal_values(600, seed=6)
    topic, events, control = make_topic("history"), make_topic("events"), make_topic("control")
    produce(
        bootstrap,
        control,
        [
            (b"pump-2", json.dumps({"machine": "pump-2", "mute_until": None}).encode(), None),
            # labels keyed by the machine id (DESIGN.md): they neither mute pump-1 nor lift
            # pump-2's mute (issue 22)
            (b"pump-1", _label("e0", "pump-1"), None),
            (b"pump-2", _label("e9", "pump-2"), None),
            (b"pump-3", json.dumps({"kind": "alarm"}).encode(), None),  # unknown: skipped
        ],
    )
    windows = [
        (m.encode(), window_value(m, T0 + end, rows[end - 9 : end + 1], channels=CHANNELS), None)
        for end in range(9, 600)
        for m in ("pump-1", "pump-2")  # pump-2 is muted all along
    ]
    produce(bootstrap, topic, windows)
    episode = {"machine_id": "pump-1", "episode_id": "e1", "started_at": at(200)}
    produce(
        bootstrap,
        events,
        [
            (b"pump-1", json.dumps(episode | {"kind": "opened"}).encode(), None),  # T0 + 200
            (b"pump-1", json.dumps(episode | {"kind": "updated"}).encode(), None),
            (
                b"pump-1",
                json.dumps(episode | {"kind": "closed", "ended_at": at(260)}).encode(),
                None,
            ),  # T0 + 260
            # FAULTWATCH_EVENTS=windows: one anomalous window, at T0 + 400
            (b"pump-1", json.dumps({"machine_id": "pump-1", "timestamp": at(400)}).encode(), None),
        ],
    )
    out = tmp_path / "model.fwm"
    flags = ["--from-topic", topic, "--bootstrap-servers", bootstrap, "--exclude-episodes"]
    flags += ["--events-topic", events, "--control-topic", control]
    assert main(["train", *flags, "--out", str(out), *TINY_FLAGS, "--epochs", "2"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    # pump-1: windows whose rows touch 200..260 (ending 200..269) or 400 (ending 400..409);
    # pump-2: all 591 of its windows, produced under its mute.
    assert "1182 windows of 2 machines" in line and "671 left out" in line, line
    # Left: rows 0-199, 261-399 and 401-599 of pump-1: 191 + 130 + 190 windows of 10.
    assert "3 segments, 538 rows" in line, line
    training = artifact_io.load(out).training
    slices = ("windows_train", "windows_stopping", "windows_reference", "windows_purged")
    assert sum(training[name] for name in slices) == 511, training
    assert training["files"] == [f"pump-1#{n}" for n in (1, 2, 3)]


def _label(episode: str, machine: str) -> bytes:
    document = {"kind": "label", "episode_id": episode, "machine_id": machine, "label": "fault"}
    return json.dumps(document | {"code": None, "note": "", "by": "ana", "at": at(0)}).encode()


class StalledConsumer(KafkaConsumer):
    """A real consumer whose partition 1 never delivers, as behind a broker that stalls."""

    def assign(self, partitions):
        super().assign(partitions)
        self.pause(*[tp for tp in partitions if tp.partition == 1])


def test_a_partition_left_unread_is_an_error_not_a_model_of_part_of_the_range(
    bootstrap, make_topic, tmp_path, capsys, monkeypatch
):
    topic = make_topic("history", partitions=2)
    windows = [
        (m.encode(), window_value(m, T0 + end, normal_values(10, seed=end), channels=CHANNELS), p)
        for end in range(9, 60)
        for m, p in (("pump-1", 0), ("pump-2", 1))
    ]
    produce(bootstrap, topic, windows)
    monkeypatch.setattr(topic_windows, "KafkaConsumer", StalledConsumer)
    monkeypatch.setattr(topic_windows, "IDLE", 2.0)
    flags = ["--from-topic", topic, "--bootstrap-servers", bootstrap]
    out = tmp_path / "model.fwm"
    assert main(["train", *flags, "--out", str(out), *TINY_FLAGS]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{topic}: no records for 2 s from partitions 1 (at 0 of " in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_a_model_from_replayed_samples_or_tags_matches_the_one_from_their_csv(
    bootstrap, make_topic, tmp_path, capsys
):
    data = write_csv(tmp_path / "pump-1.csv", normal_values(400, seed=5))
    from_csv = tmp_path / "csv.fwm"
    # The last bucket and the 5 s of grace before it stay open: 394 rows come back.
    csv_flags = ["--window", "10", "--train-rows", "394"]
    assert main(["train", str(data), "--out", str(from_csv), *csv_flags, *TINY_FLAGS]) == 0
    a = Scorer(artifact_io.load(from_csv))
    windows = np.lib.stride_tricks.sliding_window_view(normal_values(60, seed=9), 10, axis=0)
    windows = windows.transpose(0, 2, 1)  # (B, W, C)
    for form in ("samples", "tags"):
        topic = make_topic(form, partitions=2)
        replay = ["replay", str(data), "--topic", topic, "--as", form, "--shuffle-within", "2"]
        assert main([*replay, "--bootstrap-servers", bootstrap]) == 0
        capsys.readouterr()
        out = tmp_path / f"{form}.fwm"
        flags = ["--from-topic", topic, "--bootstrap-servers", bootstrap, "--window", "10"]
        assert main(["train", *flags, "--out", str(out), *TINY_FLAGS]) == 0
        line = capsys.readouterr().out.splitlines()[0]
        assert f"closed buckets (of {form}) of 1 machines" in line
        assert "1 segments, 394 rows" in line
        b = Scorer(artifact_io.load(out))
        assert (b.window, b.artifact.sampling_interval) == (10, 1.0)
        if form == "tags":  # tags have no column order: channels by name
            assert b.channels == sorted(CHANNELS)
            assert np.isfinite(b.score(windows[..., [2, 0, 1, 3]]).score).all()
            continue
        assert b.channels == CHANNELS and b.threshold == a.threshold
        np.testing.assert_allclose(a.score(windows).score, b.score(windows).score, rtol=1e-6)


def test_a_record_stamped_after_until_does_not_cut_the_rest_of_its_partition(bootstrap, make_topic):
    """One gateway with a fast clock: its record is left out, the partition read to its end."""
    topic = make_topic("history")
    produced = time.time() - 3600  # an hour ago, by the gateways' (right) clocks
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    stamps = [produced] * 20 + [produced + 86_400] + [produced] * 30  # the 21st: a day ahead
    for i, stamp in enumerate(stamps):
        machine = "pump-9" if stamp > produced else "pump-1"
        value = window_value(machine, T0 + i, normal_values(10, seed=i), channels=CHANNELS)
        producer.send(topic, key=machine.encode(), value=value, timestamp_ms=int(stamp * 1000))
    producer.flush(timeout=30)
    producer.close(timeout=10)
    settings = settings_io.load({"bootstrap_servers": bootstrap})
    span = TopicRange(until=datetime.fromtimestamp(produced + 60, UTC))
    read = list(topic_windows.read_topic(settings, topic, span))
    assert [r.offset for r in read] == [*range(20), *range(21, 51)]
    assert {r.key for r in read} == {b"pump-1"}


def test_the_events_topic_is_read_once_for_spans_and_for_labelled_history():
    from cli.labels import history
    from tests.helpers import Record

    def event(**fields):
        return Record(0, json.dumps(fields).encode())

    events = [
        event(kind="opened", episode_id="a", machine_id="m", started_at="2026-01-01T00:00:00Z"),
        event(
            kind="closed", episode_id="a", machine_id="m",
            started_at="2026-01-01T00:00:00Z", ended_at="2026-01-01T00:10:00Z",
        ),
        event(kind="opened", episode_id="b", machine_id="n", started_at=1767225600.0),
        event(machine_id="m", timestamp="2026-01-01T01:00:00Z", score=3.0),  # windows mode
        Record(0, b"not json"),
        event(kind="opened", machine_id="m"),  # no episode id, no start: not faultwatch's
    ]  # fmt: skip
    t0 = 1767225600.0  # 2026-01-01T00:00:00Z
    assert topic_windows.episode_spans(iter(events)) == {
        "m": [(t0, t0 + 600), (t0 + 3600, t0 + 3600)],
        "n": [(t0, float("inf"))],
    }
    found = history(events, [])
    assert [(e.episode_id, e.machine_id, e.start, e.end) for e in found] == [
        ("a", "m", t0, t0 + 600),
        ("b", "n", t0, float("inf")),
    ]
