"""The control table (worker/control/table.py) without a broker: mutes, labels, tombstones."""

from __future__ import annotations

import json

from worker.control import MuteTable

NOW = 1_800_000_000.0


def mute(machine: str, until: str | None = None, reason: str = "maintenance") -> bytes:
    document = {"machine": machine, "mute_until": until, "reason": reason, "at": "2027-01-15Z"}
    return json.dumps(document).encode()


def test_machines_and_patterns_are_muted_until_their_end():
    table = MuteTable(clock=lambda: NOW)
    assert not table.checker()("press-1")  # no mutes: the fast path
    table.apply(b"press-*", mute("press-*", "2027-06-01T00:00:00Z"))  # after NOW
    table.apply(b"pump-7", mute("pump-7"))  # until unmuted
    table.apply(b"old", mute("old", "2020-01-01T00:00:00Z"))  # over
    muted = table.checker()
    assert muted("press-1") and muted("press-22") and muted("pump-7")
    assert not muted("pump-1") and not muted("old") and not muted("xpress-1")
    assert [m.target for m in table.active()] == ["press-*", "pump-7"]
    later = MuteTable(clock=lambda: NOW + 86_400 * 365)
    later.apply(b"press-*", mute("press-*", "2027-06-01T00:00:00Z"))
    assert not later.checker()("press-1")  # expired


def test_a_tombstone_unmutes_and_a_new_record_replaces_the_old():
    table = MuteTable(clock=lambda: NOW)
    table.apply(b"pump-7", mute("pump-7"))
    version = table.version
    table.apply(b"pump-7", mute("pump-7", reason="longer"))
    assert [m.reason for m in table.active()] == ["longer"] and table.version == version + 1
    table.apply(b"pump-7", None)
    assert table.active() == [] and not table.checker()("pump-7")
    table.apply(b"unknown", None)  # nothing to lift: nothing changes
    assert table.version == version + 2


def test_a_bad_control_record_is_ignored():
    table = MuteTable(clock=lambda: NOW)
    table.apply(b"k", b"not json")
    table.apply(b"k", json.dumps({"machine": "m", "mute_until": 5}).encode())
    table.apply(b"k", json.dumps([1]).encode())
    assert table.active() == [] and table.version == 0


def test_a_changed_table_is_seen_by_the_next_checker():
    table = MuteTable(clock=lambda: NOW)
    table.apply(b"a", mute("a"))
    assert not table.checker()("b")
    table.apply(b"b", mute("b"))
    assert table.checker()("b")  # the cache follows the table's version


def label(episode: str, verdict: str = "false-alarm", machine: str = "pump-7") -> bytes:
    document = {"kind": "label", "episode_id": episode, "machine_id": machine, "label": verdict}
    return json.dumps(
        document | {"code": None, "note": "", "by": "ana", "at": "2027-01-15Z"}
    ).encode()


def test_a_label_keyed_by_a_machine_never_mutes_it_nor_lifts_its_mute():
    table = MuteTable(clock=lambda: NOW)
    table.apply(b"pump-7", label("ep-1"))
    assert not table.checker()("pump-7") and table.version == 0
    table.apply(b"pump-7", mute("pump-7"))
    table.apply(b"pump-7", label("ep-2"))  # the same key as the mute: the mute stays
    assert table.checker()("pump-7") and [m.target for m in table.active()] == ["pump-7"]


def test_a_tombstone_lifts_the_mute_of_its_key_and_never_a_label():
    table = MuteTable(clock=lambda: NOW)
    table.apply(b"pump-7", mute("pump-7"))
    table.apply(b"pump-7", label("ep-1"))
    table.apply(b"pump-7", None)
    assert not table.checker()("pump-7")
    assert table.label("ep-1") is not None and table.label("ep-1").label == "false-alarm"
    table.apply(b"pump-7", None)  # no mute left under the key: still the label
    assert set(table.labels()) == {"ep-1"}


def test_the_last_label_of_an_episode_stands():
    table = MuteTable(clock=lambda: NOW)
    table.apply(b"pump-7", label("ep-1", "false-alarm"))
    table.apply(b"pump-7", label("ep-2", "fault"))
    table.apply(b"pump-7", label("ep-1", "new-normal"))
    assert {e: lab.label for e, lab in table.labels().items()} == {
        "ep-1": "new-normal",
        "ep-2": "fault",
    }
    assert table.labels_version == 3


def test_skipped_records_are_counted_by_reason():
    reasons: list[str] = []
    table = MuteTable(clock=lambda: NOW, skipped=reasons.append)
    table.apply(b"k", b"not json")
    table.apply(b"k", json.dumps({"kind": "alarm"}).encode())
    table.apply(b"k", json.dumps({"kind": "label", "episode_id": "e"}).encode())
    assert reasons == ["invalid_json", "unknown_kind", "invalid_label"]
    assert table.skipped == {"invalid_json": 1, "unknown_kind": 1, "invalid_label": 1}
    assert table.active() == [] and table.labels() == {}


def test_a_snapshot_holds_its_version_and_its_mutes_together():
    table = MuteTable(clock=lambda: NOW)
    table.apply(b"a", mute("a"))
    before = table.snapshot()
    table.apply(b"b", mute("b"))  # the control thread, between two reads of a batch
    assert before.version == 1 and not before.muted("b")
    muted, version = table.snapshot()
    assert version == 2 and muted("b") and muted("a")


def test_muted_machines_counts_machines_seen_here_not_mutes():
    clock = [NOW]
    table = MuteTable(clock=lambda: clock[0])
    seen = table.checker()
    for machine in ("press-1", "press-2", "press-3", "pump-1"):
        seen(machine)  # windows of this worker's partitions, before any mute
    table.apply(b"press-*", mute("press-*"))  # one mute, three machines
    table.apply(b"pump-9", mute("pump-9"))  # a machine this worker never saw
    assert len(table.active()) == 2 and table.muted_machines() == 3
    table.apply(b"press-*", None)
    assert table.muted_machines() == 0
    table.apply(b"pump-*", mute("pump-*"))
    assert table.muted_machines() == 1
    clock[0] += 3601  # pump-1 went quiet an hour ago: no longer counted, and forgotten
    assert table.muted_machines() == 0
    table.checker()("pump-2")
    assert table.muted_machines() == 1 and set(table._seen) == {"pump-2"}


def test_the_mute_cache_is_bounded_whatever_the_machine_ids():
    table = MuteTable(clock=lambda: NOW, max_cached=100)
    table.apply(b"press-*", mute("press-*"))
    muted = table.checker()
    assert all(muted(f"press-{i}") for i in range(1000))
    assert not any(muted(f"pump-{i}") for i in range(1000))
    assert len(table._cache) <= 100
