"""`faultwatch label`: label records on the real broker's control topic, and how they are read."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from cli.labels import history
from cli.main import main
from cli.topic_windows import mute_spans
from tests.helpers import produce, read_topic
from worker.control import MuteTable

EPISODE = {"machine_id": "pump-7", "episode_id": "ep-42", "started_at": "2026-01-05T06:00:00Z"}


@pytest.fixture
def topics(bootstrap, make_topic, monkeypatch) -> dict[str, str]:
    """An events topic holding one episode of pump-7 (opened, then closed), a control topic."""
    found = {"events": make_topic("events", 2), "control": make_topic("control")}
    monkeypatch.setenv("FAULTWATCH_BOOTSTRAP_SERVERS", bootstrap)
    monkeypatch.setenv("FAULTWATCH_EVENTS_TOPIC", found["events"])
    monkeypatch.setenv("FAULTWATCH_CONTROL_TOPIC", found["control"])
    closed = EPISODE | {"kind": "closed", "ended_at": "2026-01-05T06:10:00Z"}
    other = {"machine_id": "pump-1", "episode_id": "ep-1", "started_at": "2026-01-05T05:00:00Z"}
    produce(
        bootstrap,
        found["events"],
        [
            (b"pump-1", json.dumps(other | {"kind": "opened"}).encode(), 0),
            (b"pump-7", json.dumps(EPISODE | {"kind": "opened"}).encode(), 1),
            (b"pump-7", json.dumps(closed).encode(), 1),
        ],
    )
    return found


def test_a_label_is_written_keyed_by_the_machine_and_the_last_one_stands(bootstrap, topics, capsys):
    argv = ["label", "ep-42", "--as", "fault", "--code", "B-7", "--note", "bearing", "--by", "ana"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == "episode ep-42 of pump-7 labelled fault (code B-7)"
    assert main(["label", "ep-42", "--as", "false-alarm", "--by", "ana"]) == 0
    assert main(["label", "ep-42", "--as", "false-alarm", "--by", "ana"]) == 0  # again: harmless

    records = read_topic(bootstrap, topics["control"])
    assert [r.key for r in records] == [b"pump-7"] * 3
    first = json.loads(records[0].value)
    assert {k: v for k, v in first.items() if k != "at"} == {
        "kind": "label",
        "episode_id": "ep-42",
        "machine_id": "pump-7",
        "label": "fault",
        "code": "B-7",
        "note": "bearing",
        "by": "ana",
    }
    assert first["at"].endswith("Z")
    found = history(read_topic(bootstrap, topics["events"]), records)
    assert [(e.episode_id, e.label) for e in found] == [("ep-1", None), ("ep-42", "false-alarm")]
    episode = found[1]
    assert (episode.episode_id, episode.label, episode.code) == ("ep-42", "false-alarm", None)
    assert episode.normal and not episode.open


def test_an_unknown_episode_is_one_line_and_writes_nothing(bootstrap, topics, capsys):
    assert main(["label", "ep-nope", "--as", "fault"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no episode ep-nope in " + topics["events"] in err
    assert main(["label", "ep-42", "--as", "new-normal", "--code", "X"]) == 1
    assert "--code names a fault" in capsys.readouterr().err
    assert read_topic(bootstrap, topics["control"]) == []


def test_a_label_neither_mutes_its_machine_nor_lifts_its_mute():
    mute = json.dumps({"machine": "pump-7", "mute_until": None, "reason": "service"}).encode()
    label = json.dumps(EPISODE | {"kind": "label", "label": "fault"}).encode()
    table = MuteTable(clock=lambda: 0.0)
    table.apply(b"pump-1", label)
    assert table.mutes() == []
    table.apply(b"pump-7", mute)
    table.apply(b"pump-7", label)
    assert [m.target for m in table.active()] == ["pump-7"]
    records = [Stamped(b"pump-7", mute, 1000), Stamped(b"pump-7", label, 2000)]
    ((found, span),) = mute_spans(iter(records))
    assert found.target == "pump-7" and span == (1.0, float("inf"))


@dataclass(frozen=True)
class Stamped:
    """A control record with its own time (ms), as mute_spans reads it."""

    key: bytes
    value: bytes
    timestamp: int
