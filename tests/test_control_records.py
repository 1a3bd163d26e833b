"""The one parser of control records (worker/control/records.py): mutes, unmutes, labels, skips."""

from __future__ import annotations

import json

import pytest

from worker.control import Label, Mute, NotAMute, Skipped, Unmute, parse, parse_mute


def doc(**fields: object) -> bytes:
    return json.dumps(fields).encode()


LABEL = {
    "kind": "label",
    "episode_id": "ep-1",
    "machine_id": "pump-1",
    "label": "false-alarm",
    "code": None,
    "note": "valve test",
    "by": "ana",
    "at": "2027-01-15T10:00:00Z",
}


def test_a_record_without_kind_or_of_kind_mute_is_a_mute():
    plain = parse(b"press-*", doc(machine="press-*", mute_until=None, reason="r", at="t"))
    assert plain == Mute("press-*", None, None, "r", "t", b"press-*")
    kinded = parse(b"pump-1", doc(kind="mute", mute_until="2027-01-15T10:00:00Z"))
    assert isinstance(kinded, Mute) and kinded.target == "pump-1"  # the key names the machine
    assert kinded.until == 1_800_007_200.0


def test_a_tombstone_is_an_unmute_of_its_key():
    assert parse(b"pump-1", None) == Unmute(b"pump-1")
    assert parse(None, None) == Unmute(b"")


def test_a_label_is_a_label_never_a_mute():
    label = parse(b"pump-1", json.dumps(LABEL).encode())
    assert label == Label("ep-1", "pump-1", "false-alarm", None, "valve test", "ana", LABEL["at"])
    assert label.to_dict() == LABEL
    with pytest.raises(NotAMute):
        parse_mute(b"pump-1", json.dumps(LABEL).encode())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1]", "not_an_object"),
        (b'"pump-1"', "not_an_object"),
        (doc(kind="unmute", machine="pump-1"), "unknown_kind"),
        (doc(kind=["mute"]), "unknown_kind"),
        (doc(machine="m", mute_until=5), "invalid_mute"),
        (doc(machine="m", mute_until="next week"), "invalid_mute"),
        (doc(machine=7), "invalid_mute"),
        (doc(**(LABEL | {"label": "maybe"})), "invalid_label"),
        (doc(**(LABEL | {"episode_id": ""})), "invalid_label"),
        (doc(**{k: v for k, v in LABEL.items() if k != "machine_id"}), "invalid_label"),
        (doc(**(LABEL | {"code": 3})), "invalid_label"),
        (doc(**(LABEL | {"note": None})), "invalid_label"),
    ],
)
def test_anything_else_is_skipped_with_a_reason(value: bytes, reason: str):
    record = parse(b"k", value)
    assert isinstance(record, Skipped) and record.reason == reason


def test_a_mute_without_machine_and_a_key_that_is_not_utf8_is_skipped():
    record = parse(b"\xff", doc(reason="r"))
    assert isinstance(record, Skipped) and record.reason == "invalid_mute"
