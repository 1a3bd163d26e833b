"""Replay topics: exactly the windows `score` sees, paced, looped and limited; range copies."""

import csv
import json
import tracemalloc
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from cli.main import main
from cli.replay import Stream, encode_window, moment, replay_recordings
from model.recording import format_time, parse_time, read_recording
from tests.synthetic import normal_values, write_csv


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= expected:
                break
    finally:
        consumer.close()
    return records


def test_replay_produces_exactly_the_windows_score_sees(
    bootstrap, make_topic, tmp_path, tiny_model_path, capsys
):
    values = normal_values(60, seed=8)
    values[30:33, 2] = np.nan  # a short gap: interpolated by both
    values[45:52, 1] = np.nan  # a long gap: its windows are skipped by both
    data = write_csv(tmp_path / "pump-7.csv", values)
    assert (
        main(
            ["score", str(data), "--model", str(tiny_model_path), "--out", str(tmp_path / "s.csv")]
        )
        == 0
    )
    scored = list(csv.DictReader((tmp_path / "s.csv").open()))
    topic = make_topic("replay", partitions=2)
    assert (
        main(
            [
                "replay",
                str(data),
                "--topic",
                topic,
                "--model",
                str(tiny_model_path),
                "--bootstrap-servers",
                bootstrap,
            ]
        )
        == 0
    )
    assert f"{len(scored)} records replayed" in capsys.readouterr().out
    records = consume_all(bootstrap, topic, len(scored))
    assert len(records) == len(scored) and len(scored) < 60 - 10 + 1
    messages = sorted((json.loads(r.value) for r in records), key=lambda m: m["timestamp"])
    assert [m["timestamp"] for m in messages] == [r["timestamp"] for r in scored]
    assert {r.key for r in records} == {b"pump-7"}
    assert np.isfinite(np.array([m["values"] for m in messages])).all()


def test_copy_of_an_offset_range_keeps_key_value_and_headers(bootstrap, make_topic, capsys):
    from kafka import KafkaProducer

    source, target = make_topic("recorded"), make_topic("copy")
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(20):
        value = encode_window("m", f"{i}", ["a"], np.zeros((1, 1)))
        producer.send(source, key=b"m", value=value, headers=[("h", str(i).encode())])
    producer.flush()
    producer.close()
    assert (
        main(
            [
                "replay",
                "--from-topic",
                source,
                "--topic",
                target,
                "--from-offset",
                "5",
                "--to-offset",
                "15",
                "--bootstrap-servers",
                bootstrap,
            ]
        )
        == 0
    )
    assert "10 records replayed" in capsys.readouterr().out
    copied = consume_all(bootstrap, target, 10)
    assert [r.headers for r in copied] == [[("h", str(i).encode())] for i in range(5, 15)]
    assert all(r.key == b"m" for r in copied)


def test_replay_without_data_or_source_is_a_clear_error(capsys):
    assert main(["replay", "--topic", "t"]) == 1
    assert "needs either DATA.csv files or --from-topic" in capsys.readouterr().err


# Pacing, looping and limits, through replay's clock and sleep seams (no waiting in tests).


class FakeClock:
    """Time that moves only when replay sleeps; `sent` holds the time of each send."""

    def __init__(self) -> None:
        self.now, self.sent = 1000.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds

    def progress(self, n: int) -> None:
        self.sent.extend([self.now - 1000.0] * n)


def streams(tmp_path, *names: str, rows: int = 20) -> list[Stream]:
    """One stream per machine: `rows` samples one second apart, windows of 10."""
    found = []
    for seed, name in enumerate(names):
        recording = read_recording(write_csv(tmp_path / f"{name}.csv", normal_values(rows, seed)))
        found.append(Stream.cut(name, recording, 10, max_gap=5))
    return found


def replay(bootstrap, topic, cut, clock, **pace) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        return replay_recordings(
            cut,
            topic,
            producer,
            progress=clock.progress,
            clock=clock.clock,
            sleep=clock.sleep,
            **pace,
        )
    finally:
        producer.close(timeout=10)


def messages(bootstrap, topic, expected) -> list[tuple[bytes, dict]]:
    records = consume_all(bootstrap, topic, expected)
    assert len(records) == expected
    return [(r.key, json.loads(r.value)) for r in sorted(records, key=lambda r: r.offset)]


def test_rate_paces_all_machines_together(bootstrap, make_topic, tmp_path):
    topic, clock = make_topic("paced"), FakeClock()
    cut = streams(tmp_path, "pump-1", "pump-2")  # 11 windows each
    assert replay(bootstrap, topic, cut, clock, rate=4.0) == 22
    assert clock.sent == pytest.approx([i / 4.0 for i in range(22)])
    keys = [key for key, _ in messages(bootstrap, topic, 22)]
    assert keys == [b"pump-1", b"pump-2"] * 11  # side by side, window k of each, then k+1


def test_speed_follows_the_data_s_own_clock(bootstrap, make_topic, tmp_path):
    topic, clock = make_topic("speed"), FakeClock()
    (cut,) = streams(tmp_path, "pump-1")
    assert replay(bootstrap, topic, [cut], clock, speed=4.0) == 11
    # window k ends at row 9 + k, i.e. 9 + k seconds after the first row
    assert clock.sent == pytest.approx([(9 + k) / 4.0 for k in range(11)])
    stamps = [doc["timestamp"] for _, doc in messages(bootstrap, topic, 11)]
    assert stamps == [format_time(end) for end in cut.ends]


def test_loop_moves_time_forward_and_limit_stops_it(bootstrap, make_topic, tmp_path):
    topic, clock = make_topic("loop"), FakeClock()
    (cut,) = streams(tmp_path, "pump-1")
    assert replay(bootstrap, topic, [cut], clock, speed=10.0, loops=None, limit=25) == 25
    span = 20.0  # 20 rows one second apart: each loop starts 20 s of data time later
    expected = [(loop * span + 9 + k) / 10.0 for loop in range(3) for k in range(11)][:25]
    assert clock.sent == pytest.approx(expected)
    docs = [doc for _, doc in messages(bootstrap, topic, 25)]
    moments = [parse_time(doc["timestamp"]) for doc in docs]
    assert moments == sorted(moments) and len(set(moments)) == 25  # never back in time
    assert moments[11] - moments[0] == timedelta(seconds=span)
    assert [doc["values"] for doc in docs[11:22]] == [doc["values"] for doc in docs[:11]]


def test_unpaced_replay_never_sleeps(bootstrap, make_topic, tmp_path):
    topic, clock = make_topic("unpaced"), FakeClock()
    assert replay(bootstrap, topic, streams(tmp_path, "pump-1"), clock, limit=4) == 4
    assert clock.sent == [0.0] * 4


def test_a_looped_replay_runs_in_constant_memory(bootstrap, make_topic, tmp_path):
    # --loop never ends: every send it keeps track of must be let go as it is acknowledged.
    topic = make_topic("forever")
    cut = streams(tmp_path, "pump-1", rows=60)
    traced: dict[int, int] = {}
    sent = 0

    def sample(n: int) -> None:
        nonlocal sent
        sent += n
        if sent in (10_000, 40_000):
            traced[sent] = tracemalloc.get_traced_memory()[0]

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=2**20)
    tracemalloc.start()
    try:
        replay_recordings(cut, topic, producer, loops=None, limit=40_000, progress=sample)
    finally:
        tracemalloc.stop()
        producer.close(timeout=10)
    grew = (traced[40_000] - traced[10_000]) / 2**20
    print(f"traced memory grew {grew:.2f} MiB over 30,000 looped windows")
    assert grew < 3.0  # when every send was kept: 15 MiB for these 30,000


def test_a_copy_keeps_the_records_of_a_time_range(bootstrap, make_topic, capsys):
    source, target = make_topic("recorded", partitions=2), make_topic("copy")
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(30):
        stamp = int((start + timedelta(seconds=i)).timestamp() * 1000)
        producer.send(source, key=b"m", value=str(i).encode(), partition=i % 2, timestamp_ms=stamp)
    producer.flush()
    producer.close()
    since, until = format_time(start + timedelta(seconds=10)), start + timedelta(seconds=19)
    argv = ["replay", "--from-topic", source, "--topic", target, "--bootstrap-servers", bootstrap]
    assert main([*argv, "--since", since, "--until", str(until.timestamp())]) == 0
    assert "10 records replayed" in capsys.readouterr().out
    assert sorted(int(r.value) for r in consume_all(bootstrap, target, 10)) == list(range(10, 20))


def test_relative_moments_count_back_from_now():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert moment("2h", "--since", now) == now - timedelta(hours=2)
    assert moment("1.5m", "--since", now) == now - timedelta(seconds=90)
    assert moment("2024-05-01T10:00:00Z", "--since", now) == now - timedelta(hours=2)
    assert moment(None, "--since", now) is None


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--since", "1e20", "out of range"),
        ("--since", "1e400", "not a finite number"),
        ("--until", "inf", "not a finite number"),
        ("--since", "1700000000000", "epoch milliseconds?"),
        ("--since", "99999999999d", "before year 1"),
        ("--until", "yesterday", "neither RFC 3339 nor epoch seconds"),
    ],
)
def test_a_time_out_of_range_is_one_line_not_a_traceback(capsys, flag, value, said):
    assert main(["replay", "--from-topic", "src", "--topic", "t", flag, value]) == 1
    err = capsys.readouterr().err
    assert said in err and flag in err and len(err.strip().splitlines()) == 1


def test_a_time_cell_out_of_range_names_the_file(tmp_path, capsys):
    data = write_csv(tmp_path / "pump-1.csv", normal_values(20))
    lines = data.read_text().splitlines()
    lines[20] = "1e400" + lines[20][lines[20].index(",") :]  # the last row's time
    data.write_text("\n".join(lines) + "\n")
    assert main(["replay", str(data), "--topic", "t", "--window", "10"]) == 1
    err = capsys.readouterr().err
    assert str(data) in err and "'1e400'" in err and len(err.strip().splitlines()) == 1


def _assembled(records, form, channels, window):
    """The replayed records through the worker's decoder and assembler (default settings)."""
    from worker.inputs.assembler import Assembler, Grid, Rules
    from worker.inputs.readings import ReadingDecoder

    decoded = ReadingDecoder(form, [channels], 1_000_000).decode_batch(
        [r.value for r in records], [r.key for r in records]
    )
    assert decoded.invalid == []
    grid = Grid.of(channels, window, 1.0)
    out = Assembler(Rules()).assemble(decoded.readings, [grid], decoded.readings.slots)
    windows = np.concatenate([b.windows for b in out.built])
    return windows, sorted(why.reason for why in out.refused.values())


def test_replay_as_samples_and_tags_gives_score_s_windows_and_late_ones_when_asked(
    bootstrap, make_topic, tmp_path, tiny_model_path
):
    values = normal_values(60, seed=8)
    values[30:32, 2] = np.nan
    data = write_csv(tmp_path / "pump-7.csv", values)
    recording = read_recording(data)
    expected = recording.windows(10, max_gap=5, fill="carry")[1]
    plain = make_topic("samples", partitions=1)
    model = ["--model", str(tiny_model_path), "--bootstrap-servers", bootstrap]
    assert main(["replay", str(data), "--topic", plain, "--as", "samples", *model]) == 0
    records = consume_all(bootstrap, plain, 60)
    assert len(records) == 60 and {r.key for r in records} == {b"pump-7"}
    assert set(json.loads(records[0].value)) == {"machine_id", "timestamp", "values"}
    windows, refused = _assembled(records, "samples", recording.channels, 10)
    np.testing.assert_array_equal(windows, expected[: len(windows)])
    assert len(windows) == len(expected) - 6 and refused == []  # 5 s grace + the open bucket

    messy = make_topic("tags", partitions=1)
    disorder = ["--shuffle-within", "2", "--jitter", "2", "--late-share", "0.1", "--seed", "3"]
    assert main(["replay", str(data), "--topic", messy, "--as", "tags", *disorder, *model]) == 0
    tags = int((~np.isnan(values)).sum())
    records = consume_all(bootstrap, messy, tags)
    assert len(records) == tags
    assert [r.value for r in records] != sorted((r.value for r in records), key=_tag_time)
    windows, refused = _assembled(records, "tags", recording.channels, 10)
    assert refused and set(refused) == {"late"}  # disorder within the grace costs nothing else


def _tag_time(value: bytes) -> float:
    return parse_time(str(json.loads(value)["timestamp"])).timestamp()


def test_disorder_flags_need_samples_or_tags(capsys, tmp_path):
    data = write_csv(tmp_path / "m.csv", normal_values(20))
    assert main(["replay", str(data), "--topic", "t", "--jitter", "2"]) != 0
    assert "--as samples or tags" in capsys.readouterr().err


def test_readings_are_paced_by_data_time_or_rate_and_keep_moving_on_in_loops():
    from pathlib import Path

    from cli.replay import Disorder, ReadingStreams
    from model.recording import Recording
    from tests.synthetic import CHANNELS

    stamps = [str(1_700_000_000 + i) for i in range(3)]
    rec = Recording(Path("m.csv"), stamps, list(CHANNELS), normal_values(3))
    streams = ReadingStreams([("m", rec)], "samples", Disorder(), 3)
    by_time = list(streams.schedule(None, 2.0, loops=2))  # twice as fast as data time
    assert [at for at, _, _ in by_time] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # a loop: 3 s later
    assert {key for _, key, _ in by_time} == {b"m"}
    later = [json.loads(value)["timestamp"] for _, _, value in by_time]
    assert later[3] == format_time(datetime.fromtimestamp(1_700_000_003, UTC))
    by_rate = [at for at, _, _ in streams.schedule(10.0, None, loops=1)]
    assert by_rate == [0.0, 0.1, 0.2]
    assert [at for at, _, _ in streams.schedule(None, None, loops=1)] == [None] * 3
