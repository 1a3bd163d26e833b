"""The keyed store, its changelog and the episode family (worker/state/), without a broker."""

from __future__ import annotations

import json

from model.episodes import Tracker
from tests.test_episodes import CONFIG, T0, THRESHOLD, stamp
from worker.state import EpisodeState, Store
from worker.state.changelog import encode, restore


class Log:
    """A state topic's partitions as lists."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self.reads = 0

    def __call__(self, partitions):
        self.reads += 1
        return {p: list(self.partitions.get(p, [])) for p in partitions}

    def write(self, partition: int, records) -> None:
        self.partitions.setdefault(partition, []).extend(records)


def observe(tracker: Tracker, t: float, score: float, machine: str = "m1") -> list[dict]:
    source = {"topic": "in", "partition": 0, "offset": int(t)}
    return tracker.observe(
        machine, T0 + t, stamp(T0 + t), score, THRESHOLD, lambda: [("a", 1.0)], "level", source
    )


def test_the_store_undoes_a_batch_and_reports_only_real_changes():
    store = Store(memory_only=["scratch"])
    store.put("family", "a", {"n": 1})
    store.begin()
    store.put("family", "a", {"n": 2})
    store.put("family", "b", {"n": 1})
    store.put("family", "c", {"n": 1})
    store.put("family", "c", None)  # created and deleted: no change
    store.put("scratch", "a", 5)
    assert store.changed() == {
        ("family", "a"): ({"n": 1}, {"n": 2}),
        ("family", "b"): (None, {"n": 1}),
    }
    assert sorted(store.rollback()) == [
        ("family", "a"), ("family", "b"), ("family", "c"), ("scratch", "a")
    ]  # fmt: skip
    assert dict(store.items("family")) == {"a": {"n": 1}} and store.get("scratch", "a") is None


def test_a_rolled_back_batch_is_redone_with_the_same_events():
    log = Log()
    state = EpisodeState(CONFIG, "in", "group", log)
    observe(state.tracker(0, 0), 0, 3.0)
    log.write(0, state.finish(0, 1))
    tracker = state.tracker(0, 1)
    before = {m: e.to_dict() for m, e in tracker.episodes.items()}
    first = observe(tracker, 1, 5.0) + observe(tracker, 2, 1.0) + observe(tracker, 40, 1.0)
    assert [e["kind"] for e in first] == ["closed"] and tracker.episodes == {}
    state.finish(0, 4)  # published, then its commit failed: the same batch again
    tracker = state.tracker(0, 1)
    assert {m: e.to_dict() for m, e in tracker.episodes.items()} == before
    assert observe(tracker, 1, 5.0) + observe(tracker, 2, 1.0) + observe(tracker, 40, 1.0) == first
    assert log.reads == 1  # undone in memory, not restored


def test_records_of_the_first_format_still_restore():
    """What the release before the store wrote: episode records keyed by machine, the clock under
    the empty key with its value in `clock`."""
    log = Log()
    state = EpisodeState(CONFIG, "in", "group", log)
    observe(state.tracker(0, 0), 0, 3.0)
    state.finish(0, 1)
    saved = state.episodes.trackers[0].episodes["m1"].to_dict()
    common = {"group": "group", "input": "in", "through": 1}
    log.write(0, [
        (b"m1", json.dumps(common | {"state": saved, "previous": None}).encode()),
        (b"", json.dumps(common | {"clock": T0, "previous": None}).encode()),
    ])  # fmt: skip
    restored = EpisodeState(CONFIG, "in", "group", log).tracker(0, 1)
    assert restored.episodes["m1"].to_dict() == saved and restored.clock == T0


class LastSeen:
    """The smallest family: no live objects, it works on the store directly."""

    names, memory_only = ("last_seen",), ()

    def restored(self, partition, store) -> int:
        return 0

    def save(self, partition, store) -> None:
        pass

    def rolled_back(self, partition, store, undone) -> None:
        pass

    def forget(self, partition) -> None:
        pass


def test_a_new_family_rides_in_the_same_topic_under_its_own_key():
    log = Log()
    state = EpisodeState(CONFIG, "in", "group", log, families=(LastSeen(),))
    state.begin({0: 0})
    state.store(0).put("last_seen", "m1", {"at": T0})
    records = state.finish(0, 1)
    assert [key for key, _ in records] == [b"last_seen/m1"]
    log.write(0, records)
    again = EpisodeState(CONFIG, "in", "group", log, families=(LastSeen(),))
    again.begin({0: 1})
    assert again.store(0).get("last_seen", "m1") == {"at": T0}
    record = encode("assembly", "m1", 7, {"buckets": []}, None, "group", "in")
    assert restore([record], 7, "group", "in").values == {("assembly", "m1"): {"buckets": []}}


def test_restore_keeps_the_state_with_the_highest_through_not_the_last_written():
    """A worker dropped from the group writes late for a partition another worker moved on."""
    log = Log()
    owner = EpisodeState(CONFIG, "in", "group", log)
    observe(owner.tracker(0, 0), 0, 3.0)
    log.write(0, owner.finish(0, 1))  # committed: m1 pending
    dropped = EpisodeState(CONFIG, "in", "group", log)
    observe(dropped.tracker(0, 1), 1, 5.0)
    stale = dropped.finish(0, 2)  # its batch ran past the poll limit: written later
    successor = EpisodeState(CONFIG, "in", "group", log)
    tracker = successor.tracker(0, 1)
    observe(tracker, 1, 5.0), observe(tracker, 2, 1.0), observe(tracker, 40, 1.0)
    log.write(0, successor.finish(0, 4))  # committed: m1 closed
    log.write(0, stale)  # the late write, after the newer state
    assert EpisodeState(CONFIG, "in", "group", log).tracker(0, 4).episodes == {}


def test_malformed_state_records_are_counted_and_skipped():
    log = Log()
    state = EpisodeState(CONFIG, "in", "group", log)
    tracker = state.tracker(0, 0)
    observe(tracker, 0, 3.0, "m1"), observe(tracker, 0, 3.0, "m2")
    log.write(0, state.finish(0, 1))
    common = {"group": "group", "input": "in", "through": 1, "previous": None}
    log.write(0, [
        (b"m3", b"{not json"),
        (b"m4", b"[1, 2]"),
        (b"m5", json.dumps(common | {"through": "1", "state": {}}).encode()),  # wrong type
        (b"m6", json.dumps({"group": "group", "input": "in", "through": 1}).encode()),
        (b"m7", json.dumps(common | {"state": {"machine_id": "m7"}}).encode()),  # no fields
        (b"m2", json.dumps(common | {"state": {**_episode(state, "m2"), "last": "x"}}).encode()),
    ])  # fmt: skip
    skipped: dict[str, int] = {}
    restored = EpisodeState(
        CONFIG, "in", "group", log, on_skip=lambda reason, n: skipped.__setitem__(reason, n)
    )
    tracker = restored.tracker(0, 1)
    assert list(tracker.episodes) == ["m1"]
    assert skipped == {"not_json": 2, "schema": 2, "state": 2}
    assert observe(tracker, 1, 5.0, "m1") == []  # and it carries on


def _episode(state: EpisodeState, machine: str) -> dict:
    return state.episodes.trackers[0].episodes[machine].to_dict()
