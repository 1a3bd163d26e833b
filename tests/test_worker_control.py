"""The mute table (worker/control.py) without a broker: patterns, expiry, tombstones."""

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


def test_the_mute_cache_is_bounded_whatever_the_machine_ids():
    table = MuteTable(clock=lambda: 1e9, max_cached=100)
    table.apply(b"press-*", json.dumps({"machine": "press-*", "mute_until": None}).encode())
    muted = table.checker()
    assert all(muted(f"press-{i}") for i in range(1000))
    assert not any(muted(f"pump-{i}") for i in range(1000))
    assert len(table._cache) <= 100
