"""Replay topics: exactly the windows `score` sees, and topic-range copies."""

import csv
import json

import numpy as np
from kafka import KafkaConsumer

from cli.main import main
from cli.replay import encode_window
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
