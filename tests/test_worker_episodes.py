"""The episode stage of the batch logic, without a broker: events, state records, restores."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from model.episodes import EpisodeConfig
from model.scoring import Scorer
from tests.helpers import Record, synthetic_values
from worker.clocks import WallClock
from worker.control import MuteTable
from worker.pipeline import Episodes, Pipeline, Topics
from worker.routing import Routes
from worker.state import CLOCK_KEY, EpisodeState

CONFIG = EpisodeConfig(
    open_seconds=0, clear_seconds=5, clear_ratio=1.0, update_seconds=3, silent_seconds=60,
    open_windows=1, clear_windows=1, silent_windows=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def scorer(tiny_scorer: Scorer) -> Scorer:
    return tiny_scorer


class Changelog:
    """The state topic's partitions as lists: what a batch wrote, and what a restore reads."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self.reads = 0

    def write(self, outputs) -> None:
        for o in outputs:
            if o.topic == "state":
                self.partitions.setdefault(o.partition, []).append((o.key, o.value))

    def __call__(self, partitions) -> dict[int, list[tuple[bytes, bytes | None]]]:
        self.reads += 1
        return {p: list(self.partitions.get(p, [])) for p in partitions}


def make(scorer: Scorer, changelog: Changelog, mutes: MuteTable | None = None) -> Pipeline:
    state = EpisodeState(CONFIG, "windows", "group", changelog)
    episodes = Episodes(state, mutes or MuteTable())
    topics = Topics("events", "dlq", "scores", "state")
    return Pipeline(scorer, topics, 2, episodes, max_record_bytes=10_000)


def stream(scorer: Scorer) -> list[Record]:
    """pump-1, one window a second: 5 normal, 6 anomalous, 12 normal (an episode, closed)."""
    normal = synthetic_values(30, scorer.window)
    shifted = synthetic_values(30, scorer.window, shift=25.0, seed=1)
    values = normal[:5] + shifted[5:11] + normal[11:23]  # timestamps follow the index
    return [Record(offset, value) for offset, value in enumerate(values)]


def events(outputs) -> list[dict]:
    return [json.loads(o.value) for o in outputs if o.topic == "events"]


def run(pipeline: Pipeline, records: list[Record], sizes: list[int], log: Changelog):
    """Process `records` in batches of `sizes`, each published (written to `log`)."""
    outputs, start = [], 0
    for size in sizes:
        batch = pipeline.process(records[start : start + size]).outputs
        log.write(batch)
        outputs += batch
        start += size
    return outputs


def test_one_episode_one_opened_and_one_closed_whatever_the_batches(scorer):
    records = stream(scorer)
    whole = events(run(make(scorer, Changelog()), records, [len(records)], Changelog()))
    assert [e["kind"] for e in whole] == ["opened", "updated", "closed"]
    opened, _, closed = whole
    assert opened["started_at"] == "2023-11-14T22:13:25Z" and opened["source"]["offset"] == 5
    assert closed["close_reason"] == "cleared" and closed["windows"] == 6
    assert closed["ended_at"] == "2023-11-14T22:13:31Z"  # the first normal window
    assert {e["episode_id"] for e in whole} == {opened["episode_id"]}
    assert all(e["model_version"] == scorer.version for e in whole)
    by_one = events(run(make(scorer, Changelog()), records, [1] * len(records), Changelog()))
    assert by_one == whole  # batch boundaries change nothing


def test_state_records_go_to_the_input_partition_keyed_by_machine(scorer):
    log = Changelog()
    outputs = run(make(scorer, log), stream(scorer)[:8], [8], log)
    state = [o for o in outputs if o.topic == "state"]
    assert {o.partition for o in state} == {3}
    assert [o.key for o in state] == [b"pump-1", CLOCK_KEY]
    saved = json.loads(state[0].value)
    assert saved["through"] == 8 and saved["previous"] is None
    assert saved["state"]["phase"] == "open" and saved["state"]["windows"] == 3
    assert (saved["group"], saved["input"]) == ("group", "windows")
    events_ = [o for o in outputs if o.topic == "events"]
    assert [o.key for o in events_] == [b"pump-1"] * len(events_)


def test_a_redone_batch_gives_the_same_bytes(scorer):
    records = stream(scorer)
    log = Changelog()
    pipeline = make(scorer, log)
    run(pipeline, records, [4], log)
    first = pipeline.process(records[4:12]).outputs  # not "committed": done again
    again = pipeline.process(records[4:12]).outputs
    assert first == again
    assert log.reads == 1  # rolled back in memory, not restored


@pytest.mark.parametrize("cut", [6, 9, 12, 18])
def test_a_new_owner_restores_and_carries_on_under_the_same_ids(scorer, cut):
    """Crash after batch [cut, cut+4) was acknowledged but not committed: its state records are
    in the changelog; the new owner resumes at `cut` and redoes it."""
    records = stream(scorer)
    reference = events(run(make(scorer, Changelog()), records, [len(records)], Changelog()))
    log = Changelog()
    before = run(make(scorer, log), records, [cut, 4], log)  # the second batch: uncommitted
    after = run(make(scorer, log), records[cut:], [len(records) - cut], log)
    seen = {e["event_id"]: e for e in events(before) + events(after)}
    assert sorted(seen.values(), key=lambda e: e["source"]["offset"]) == reference


def test_state_of_another_group_is_ignored(scorer):
    records = stream(scorer)
    log = Changelog()
    run(make(scorer, log), records[:8], [8], log)  # open at offset 8
    other = EpisodeState(CONFIG, "windows", "another-group", log)
    assert other.tracker(3, 8).episodes == {}
    same = EpisodeState(CONFIG, "windows", "group", log)
    assert list(same.tracker(3, 8).episodes) == ["pump-1"]


def test_a_muted_machine_is_scored_but_opens_nothing(scorer):
    mutes = MuteTable(clock=lambda: 1e9)
    mutes.apply(b"pump-*", json.dumps({"machine": "pump-*", "mute_until": None}).encode())
    result = make(scorer, Changelog(), mutes).process(stream(scorer))
    assert events(result.outputs) == []
    assert len([o for o in result.outputs if o.topic == "scores"]) == len(stream(scorer))
    assert result.episodes.opened == 0


def test_a_mute_closes_the_open_episode_at_the_next_batch(scorer):
    records = stream(scorer)
    mutes = MuteTable(clock=lambda: 1e9)
    log = Changelog()
    pipeline = make(scorer, log, mutes)
    first = pipeline.process(records[:7])
    mutes.apply(b"pump-1", json.dumps({"machine": "pump-1", "mute_until": None}).encode())
    second = pipeline.process(records[7:9])
    (closed,) = events(second.outputs)
    assert closed["close_reason"] == "muted" and closed["source"]["offset"] == 7
    assert first.episodes.opened == 1 and second.episodes.closed == {"muted": 1}
    assert second.episodes.open_now == 0


def test_an_expired_mute_mutes_nothing(scorer):
    mutes = MuteTable(clock=lambda: 2e9)
    document = {"machine": "pump-1", "mute_until": "2020-01-01T00:00:00Z"}
    mutes.apply(b"pump-1", json.dumps(document).encode())
    result = make(scorer, Changelog(), mutes).process(stream(scorer))
    assert [e["kind"] for e in events(result.outputs)] == ["opened", "updated", "closed"]


def test_an_open_episode_carries_on_across_a_model_change_and_names_both_versions(scorer):
    records = stream(scorer)
    log = Changelog()
    pipeline = make(scorer, log)
    first = events(run(pipeline, records, [8], log))  # opened under the first model
    retrained = Scorer(dataclasses.replace(scorer.artifact, training={"retrained": True}))
    pipeline.serve(Routes.single(retrained))  # a reload, between two batches
    second = events(run(pipeline, records[8:], [3, len(records) - 11], log))
    assert [e["kind"] for e in first + second] == ["opened", "updated", "closed"]
    assert first[0]["model_version"] == scorer.version
    assert first[0]["model_versions"] == [scorer.version]
    closed = second[-1]
    assert closed["episode_id"] == first[0]["episode_id"]  # the same episode
    assert closed["model_version"] == retrained.version
    assert closed["model_versions"] == [scorer.version, retrained.version]
    assert set(closed["detectors"]) == set(scorer.detector_names)  # ratios at the peak
    assert closed["detectors"][closed["detector"]] == closed["peak_score"]
    # A worker restoring as of offset 11 (still open then) knows both: they are in the state.
    restored = EpisodeState(CONFIG, "windows", "group", log).tracker(3, 11)
    assert restored.episodes["pump-1"].versions == [scorer.version, retrained.version]


def other_machine(scorer: Scorer, shift: float = 0.0) -> list[Record]:
    """pump-2, two windows at 2023-11-14T22:13:20Z and :21 (before pump-1's episode began)."""
    values = synthetic_values(2, scorer.window, shift=shift, seed=7)
    return [
        Record(100 + i, value.replace(b'"pump-1"', b'"pump-2"'), key=b"pump-2")
        for i, value in enumerate(values)
    ]


def test_a_retried_batch_gives_the_same_events_even_when_mutes_changed_meanwhile(scorer):
    """The first attempt's publish failed: the retry must be an exact replay (pump-1's mute close
    included) although pump-2's mute expired between the two attempts."""
    records = stream(scorer)
    now = [1e9]
    mutes = MuteTable(clock=lambda: now[0])
    log = Changelog()
    pipeline = make(scorer, log, mutes)
    log.write(pipeline.process(records[:7]).outputs)  # opened, committed
    mutes.apply(b"pump-1", json.dumps({"machine": "pump-1", "mute_until": None}).encode())
    until = "2001-09-09T01:46:50Z"  # 1e9 + 10
    mutes.apply(b"pump-2", json.dumps({"machine": "pump-2", "mute_until": until}).encode())
    batch = other_machine(scorer, shift=25.0)  # anomalous: opens an episode unless muted
    first = pipeline.process(batch).outputs  # its publish fails: not committed
    assert [e["close_reason"] for e in events(first)] == ["muted"]
    now[0] += 60  # the retry comes after pump-2's mute ended
    assert pipeline.process(batch).outputs == first


def test_a_mute_close_ends_at_the_machine_s_own_last_window(scorer):
    """Another machine's window, older than the episode, causes the close: no negative length."""
    records = stream(scorer)
    mutes = MuteTable(clock=lambda: 1e9)
    pipeline = make(scorer, Changelog(), mutes)
    pipeline.process(records[:8])
    mutes.apply(b"pump-1", json.dumps({"machine": "pump-1", "mute_until": None}).encode())
    result = pipeline.process(other_machine(scorer))
    (closed,) = events(result.outputs)
    assert closed["close_reason"] == "muted" and closed["source"]["offset"] == 100
    assert closed["ended_at"] == "2023-11-14T22:13:27Z"  # pump-1's last window, offset 7
    assert closed["duration_seconds"] == 2.0 and result.episodes.durations == [2.0]


def label_record(episode: dict, label: str) -> bytes:
    return json.dumps(
        {"kind": "label", "episode_id": episode["episode_id"], "machine_id": "pump-1",
         "label": label, "code": None, "note": "", "by": "ana", "at": "2026-01-05T06:00:00Z"}
    ).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("label", "reason"), [("false-alarm", "dismissed"), ("new-normal", "new_normal")]
)
def test_a_label_closes_the_open_episode_at_the_next_batch(scorer, label, reason):
    records = stream(scorer)
    table, log = MuteTable(), Changelog()
    pipeline = make(scorer, log, table)
    first = pipeline.process(records[:7])
    (opened,) = events(first.outputs)
    table.apply(b"pump-1", label_record(opened, label))
    second = pipeline.process(records[7:9])
    (closed,) = events(second.outputs)
    assert (closed["close_reason"], closed["label"]) == (reason, label)
    assert closed["episode_id"] == opened["episode_id"] and closed["source"]["offset"] == 7
    assert second.episodes.closed == {reason: 1} and second.episodes.labels == {label: 1}
    assert second.episodes.open_now == 0
    assert not any(e["kind"] == "opened" for e in events(second.outputs))


def test_a_confirmed_episode_stays_open_carries_its_label_and_survives_a_restore(scorer):
    records = stream(scorer)
    table, log = MuteTable(), Changelog()
    pipeline = make(scorer, log, table)
    (opened,) = events(run(pipeline, records, [7], log))
    table.apply(b"pump-1", label_record(opened, "fault"))
    second = pipeline.process(records[7:9])
    log.write(second.outputs)
    assert second.episodes.labels == {"fault": 1} and second.episodes.open_now == 1
    # Another worker takes the partition over: the label comes back with the state, once.
    other = make(scorer, log, table)
    rest = other.process(records[9:])
    (closed,) = events(rest.outputs)
    assert (closed["close_reason"], closed["label"]) == ("cleared", "fault")
    assert rest.episodes.labels == {}  # applied once, before the restore


def test_a_retried_batch_applies_the_labels_its_first_attempt_saw(scorer):
    records = stream(scorer)
    table, log = MuteTable(), Changelog()
    pipeline = make(scorer, log, table)
    (opened,) = events(run(pipeline, records, [7], log))
    first = pipeline.process(records[7:9])  # not published: it will be redone
    table.apply(b"pump-1", label_record(opened, "false-alarm"))
    redone = pipeline.process(records[7:9])
    assert redone.outputs == first.outputs  # an exact replay: no label then
    assert all(e["close_reason"] is None for e in events(redone.outputs))
    later = pipeline.process(records[9:10])
    assert [e["close_reason"] for e in events(later.outputs)] == ["dismissed"]


def make_at(scorer: Scorer, log: Changelog, wall: list[float], max_future: float = 300.0):
    """A pipeline whose wall clock reads `wall[0]`."""
    clock = WallClock(max_future, now=lambda: wall[0])
    state = EpisodeState(CONFIG, "windows", "group", log, clock=clock)
    topics = Topics("events", "dlq", "scores", "state")
    episodes = Episodes(state, MuteTable())
    return Pipeline(scorer, topics, 2, episodes, max_record_bytes=10_000, clock=clock)


def test_a_window_from_the_future_is_a_dead_letter_and_never_moves_the_clock(scorer):
    records = stream(scorer)  # 1_700_000_000 + 0 .. 22
    log = Changelog()
    result = make_at(scorer, log, [1_700_000_000.0], max_future=10).process(records)
    dead = [o for o in result.outputs if o.topic == "dlq"]
    assert [dict(o.headers)["faultwatch.error.reason"] for o in dead] == [b"future"] * 12
    assert [o.value for o in dead] == [r.value for r in records[11:]]  # bytes unchanged
    assert result.dead_letters == {"future": 12}
    clock = json.loads(log.partitions[3][-1][1]) if log.partitions else None
    saved = [json.loads(o.value) for o in result.outputs if o.topic == "state" and o.key == b""]
    assert clock is None and saved[-1]["state"] == 1_700_000_010  # the last window kept


def test_a_saved_clock_from_the_future_is_clamped_when_restored(scorer):
    log = Changelog()
    log.partitions[3] = [
        (b"", json.dumps({"group": "group", "input": "windows", "through": 5,
                          "clock": 4e9, "previous": None}).encode())
    ]  # fmt: skip  # what a release without the bound saved
    tracker = make_at(scorer, log, [1_700_000_000.0]).episodes.state.tracker(3, 5)
    assert tracker.clock == 1_700_000_300.0


def test_a_machine_clock_set_back_far_is_a_reset_not_every_window_late(scorer):
    records = stream(scorer)
    pipeline = make(scorer, Changelog())
    first = pipeline.process(records[:8])  # open, at 22:13:25 .. :27
    assert first.episodes.opened == 1
    back = [  # the gateway's clock set back an hour: the same anomalous windows
        Record(8 + i, r.value.replace(b"1700000", b"1699996")) for i, r in enumerate(records[5:10])
    ]
    result = pipeline.process(back)
    closed, opened = events(result.outputs)[:2]
    assert (closed["kind"], closed["close_reason"]) == ("closed", "reset")
    assert closed["ended_at"] == "2023-11-14T22:13:27Z" and closed["duration_seconds"] == 2.0
    assert opened["kind"] == "opened" and opened["started_at"] == "2023-11-14T21:06:45Z"
    assert result.episodes.resets == 1 and result.episodes.late == 0


def test_an_idle_partition_closes_silent_by_processing_time(scorer):
    records = stream(scorer)
    wall = [2e9]
    log = Changelog()
    pipeline = make_at(scorer, log, wall)
    log.write(pipeline.process(records[:8]).outputs)  # open; then nothing comes
    assert pipeline.idle() == ([], None)
    wall[0] += CONFIG.silent_seconds - 1
    assert events(pipeline.idle()[0]) == []
    wall[0] += 1
    outputs, counts = pipeline.idle()
    (closed,) = events(outputs)
    assert closed["close_reason"] == "silent" and closed["ended_at"] == "2023-11-14T22:13:27Z"
    assert closed["source"] == {"topic": "windows", "partition": 3, "offset": 8}
    assert counts.closed == {"silent": 1} and counts.open_now == 0
    log.write(outputs)
    restored = EpisodeState(CONFIG, "windows", "group", log).tracker(3, 8)
    assert restored.episodes == {}  # the close is in the state topic too


def test_a_machines_baseline_survives_a_restart(scorer):
    """Adaptation state rides in the episode family's store (family `baseline`, keyed by the
    machine): a new owner restores it as it was last written, not a fresh baseline."""
    config = dataclasses.replace(CONFIG, adapt_seconds=2.0, settle_seconds=0)
    normal = synthetic_values(40, scorer.window)
    records = [Record(offset, value) for offset, value in enumerate(normal)]
    log = Changelog()
    state = EpisodeState(config, "windows", "group", log)
    live = Pipeline(
        scorer,
        Topics("events", "dlq", "scores", "state"),
        2,
        Episodes(state, MuteTable()),
        max_record_bytes=10_000,
    )
    run(live, records[:30], [10, 10, 10], log)
    saved = [json.loads(v) for k, v in log.partitions[3] if k == b"baseline/pump-1"]
    assert saved and saved[-1]["family"] == "baseline"
    held = state.tracker(3, 30).baselines["pump-1"]
    restored = EpisodeState(config, "windows", "group", log).tracker(3, 30).baselines["pump-1"]
    assert restored.to_dict() == saved[-1]["state"]  # what was written, exactly
    assert restored.level != math.log(scorer.typical)  # adapted, not a fresh baseline
    assert abs(restored.level - held.level) < 0.05  # written whenever it moved 5 %
    assert restored.typical == held.typical == pytest.approx(scorer.typical)
