"""The episode state machine alone (model/episodes.py): rules in data time, no broker."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from model.episodes import Episode, EpisodeConfig, Tracker, episode_id

T0 = 1_700_000_000.0
THRESHOLD = 2.0
CONFIG = EpisodeConfig(
    open_seconds=0, clear_seconds=10, clear_ratio=1.0, update_seconds=30, silent_seconds=100,
    open_windows=1, clear_windows=1, silent_windows=1,
)  # fmt: skip


def stamp(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


class Feed:
    """Windows into one tracker, one per call, offsets counting up."""

    def __init__(self, config: EpisodeConfig = CONFIG) -> None:
        self.tracker = Tracker(config, top_channels=2)
        self.offset = 0
        self.events: list[dict] = []

    def __call__(
        self, t: float, score: float, machine: str = "m1", muted: bool = False, channel: str = "a"
    ) -> list[dict]:
        source = {"topic": "in", "partition": 0, "offset": self.offset}
        self.offset += 1
        shares = [(channel, 0.75), ("b", 0.25)]
        events = self.tracker.observe(
            machine,
            T0 + t,
            stamp(T0 + t),
            score,
            THRESHOLD,
            lambda: shares,
            "level" if channel == "a" else "autoencoder",
            source,
            muted,
        )
        self.events += events
        return events

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]


def test_the_first_anomalous_window_opens_an_episode_and_clear_windows_close_it():
    feed = Feed()
    assert feed(0, 1.0) == []
    (opened,) = feed(1, 3.0)
    assert opened["kind"] == "opened" and opened["started_at"] == stamp(T0 + 1)
    assert opened["episode_id"] == episode_id("m1", stamp(T0 + 1))
    assert opened["windows"] == 1 and opened["peak_score"] == 3.0
    assert opened["ended_at"] is None and opened["close_reason"] is None
    assert opened["source"] == {"topic": "in", "partition": 0, "offset": 1}
    feed(2, 5.0)
    feed(3, 1.0)  # clear from t=3 ...
    assert feed(12, 1.5) == []  # ... 9 s: not yet
    (closed,) = feed(13, 1.5)  # 10 s of clear windows
    assert closed["kind"] == "closed" and closed["close_reason"] == "cleared"
    assert closed["ended_at"] == stamp(T0 + 3)  # normal again from the first clear window
    assert closed["duration_seconds"] == 2.0 and closed["windows"] == 2
    assert closed["peak_score"] == 5.0 and closed["timestamp"] == stamp(T0 + 13)
    assert closed["episode_id"] == opened["episode_id"] != closed["event_id"]
    assert feed.tracker.episodes == {}


def test_open_seconds_needs_the_windows_to_stay_anomalous():
    feed = Feed(replace(CONFIG, open_seconds=5))
    feed(0, 3.0)
    feed(3, 3.0)
    feed(4, 1.0)  # a normal window: the pending episode is dropped, nothing was published
    feed(5, 3.0)
    assert feed(9, 3.0) == []
    (opened,) = feed(10, 3.0)
    assert opened["started_at"] == stamp(T0 + 5) and opened["windows"] == 3
    assert opened["opened_at"] == stamp(T0 + 10)
    assert feed.kinds() == ["opened"]


def test_hysteresis_scores_between_ratio_and_threshold_hold_it_open():
    feed = Feed(replace(CONFIG, clear_ratio=0.5))
    feed(0, 3.0)
    feed(1, 0.5)  # clear (below 1.0)
    feed(5, 1.5)  # below the threshold, above 0.5 x threshold: the clear clock stops
    assert feed(11, 0.5) == []  # the clear stretch starts again here
    assert feed(20, 0.5) == []
    (closed,) = feed(21, 0.5)
    assert closed["ended_at"] == stamp(T0 + 11)


def test_updates_only_when_the_peak_rose_and_at_most_once_per_update_seconds():
    feed = Feed()
    feed(0, 3.0)
    assert feed(10, 4.0) == []  # higher, but within 30 s of `opened`
    (updated,) = feed(30, 2.5)  # 30 s on, the peak has risen since: one update
    assert updated["kind"] == "updated" and updated["peak_score"] == 4.0
    assert updated["score"] == 2.5 and updated["windows"] == 3
    assert feed(45, 9.0) == []  # risen again, but 15 s after the update
    assert feed(59, 2.2) == []
    assert [e["kind"] for e in feed(60, 2.1)] == ["updated"]  # 30 s after it
    assert feed(95, 3.0) == []  # 35 s on, but the peak did not rise


def test_a_silent_machine_closes_by_the_partition_s_clock():
    feed = Feed()
    feed(0, 3.0, "m1")
    feed(5, 3.0, "m1")
    feed(50, 1.0, "m2")
    assert feed(104, 1.0, "m2") == []  # 99 s since m1's last window
    (closed,) = feed(105, 1.0, "m2")  # 100 s: m1 is silent
    assert closed["machine_id"] == "m1" and closed["close_reason"] == "silent"
    assert closed["ended_at"] == stamp(T0 + 5) and closed["duration_seconds"] == 5.0
    assert closed["timestamp"] == stamp(T0 + 105)  # caused by m2's window
    assert closed["source"]["offset"] == feed.offset - 1
    # m1 comes back later: a new episode with a new id
    (opened,) = feed(300, 3.0, "m1")
    assert opened["episode_id"] != closed["episode_id"]


def test_a_machine_back_after_silence_closes_its_old_episode_first():
    feed = Feed()
    feed(0, 3.0)
    events = feed(500, 3.0)
    assert [(e["kind"], e.get("close_reason")) for e in events] == [
        ("closed", "silent"),
        ("opened", None),
    ]
    assert events[0]["ended_at"] == stamp(T0) and events[1]["started_at"] == stamp(T0 + 500)


def test_a_muted_machine_opens_nothing_and_its_open_episode_closes_muted():
    feed = Feed()
    assert feed(0, 3.0, muted=True) == []
    assert feed.tracker.episodes == {}
    feed(1, 3.0)
    (closed,) = feed(2, 3.0, muted=True)
    assert closed["close_reason"] == "muted" and closed["ended_at"] == stamp(T0 + 2)
    assert feed(3, 3.0, muted=True) == []
    (opened,) = feed(4, 3.0)  # mute lifted: a new episode
    assert opened["started_at"] == stamp(T0 + 4)


def test_close_muted_closes_the_episodes_of_a_machine_that_sends_nothing():
    feed = Feed()
    feed(0, 3.0, "press-1")
    feed(0, 3.0, "press-2")
    feed(0, 3.0, "pump-1")
    from model.episodes import Cause

    cause = Cause(T0 + 1, stamp(T0 + 1), THRESHOLD, {"topic": "in", "partition": 0, "offset": 9})
    events = feed.tracker.close_muted(lambda m: m.startswith("press-"), cause)
    assert [(e["machine_id"], e["close_reason"]) for e in events] == [
        ("press-1", "muted"),
        ("press-2", "muted"),
    ]
    assert set(feed.tracker.episodes) == {"pump-1"}


def test_late_windows_change_nothing():
    feed = Feed()
    feed(10, 1.0)
    assert feed(5, 9.0) == []  # older than the machine's newest window
    assert feed.tracker.episodes == {} and feed.tracker.take_late() == 1
    feed(11, 3.0)
    feed(12, 1.0)
    assert feed(3, 1.0) == [] and feed(30, 1.0)[0]["kind"] == "closed"
    assert feed.tracker.take_late() == 1


def test_channels_and_detector_cover_the_whole_episode():
    feed = Feed()
    feed(0, 3.0, channel="a")  # level leads, channel a
    feed(1, 9.0, channel="c")  # the peak: autoencoder, channel c
    feed(2, 3.0, channel="a")
    feed(20, 1.0)
    (closed,) = feed(30, 1.0)
    assert closed["detector"] == "autoencoder"  # at the peak
    # a: 0.75 x (3 + 3) = 4.5; c: 0.75 x 9 = 6.75; b: 0.25 x 15 = 3.75
    assert [c["channel"] for c in closed["top_channels"]] == ["c", "a"]
    assert closed["top_channels"][0]["share"] == round(6.75 / 15, 4)


def test_same_windows_same_events_and_ids():
    def run() -> list[dict]:
        feed = Feed()
        for t, score in [(0, 1.0), (1, 3.0), (2, 4.0), (40, 5.0), (41, 1.0), (60, 1.0)]:
            feed(t, score)
        return feed.events

    first, again = run(), run()
    assert first == again and len({e["event_id"] for e in first}) == len(first) == 3


def test_restored_state_carries_the_episode_on_under_the_same_id():
    feed = Feed()
    (opened,) = feed(0, 3.0)
    feed(1, 4.0)
    saved = [json.loads(json.dumps(e.to_dict())) for e in feed.tracker.episodes.values()]
    other = Feed()
    other.tracker.restore([Episode.from_dict(d) for d in saved], feed.tracker.clock)
    other.offset = feed.offset
    assert other(2, 1.0) == feed(2, 1.0) == []
    closed_there, closed_here = other(20, 1.0), feed(20, 1.0)
    assert closed_there == closed_here and closed_here[0]["episode_id"] == opened["episode_id"]
    assert closed_here[0]["windows"] == 2


@pytest.mark.parametrize("silent", [0.0])
def test_silent_seconds_0_never_closes_for_silence(silent):
    feed = Feed(replace(CONFIG, silent_seconds=silent))
    feed(0, 3.0, "m1")
    assert feed(10**6, 1.0, "m2") == []
    assert "m1" in feed.tracker.episodes


def test_labels_dismiss_re_base_or_confirm_the_open_episodes():
    from model.episodes import Cause

    feed = Feed()
    for machine in ("m1", "m2", "m3", "m4"):
        feed(0, 3.0, machine)
        feed(1, 3.0, machine)
    feed(2, 3.0, "m5")  # pending: nobody has seen its id, no label can name it
    feed.tracker.episodes["m5"].phase = "pending"
    ids = {m: e.id for m, e in feed.tracker.episodes.items()}
    labels = {ids["m1"]: "false-alarm", ids["m2"]: "new-normal", ids["m3"]: "fault"}
    cause = Cause(T0 + 5, stamp(T0 + 5), THRESHOLD, {"topic": "in", "partition": 0, "offset": 9})
    events, applied = feed.tracker.apply_labels(labels.get, cause)
    assert [(e["machine_id"], e["close_reason"], e["label"]) for e in events] == [
        ("m1", "dismissed", "false-alarm"),
        ("m2", "new_normal", "new-normal"),
    ]
    assert events[0]["ended_at"] == stamp(T0 + 1)  # its own machine's last window
    assert applied == [("m1", "false-alarm"), ("m2", "new-normal"), ("m3", "fault")]
    assert feed.tracker.open_count() == 2  # m3 and m4
    assert feed(6, 9.0, "m1") == []  # still anomalous: dismissed, no new episode
    feed(7, 1.0, "m1")
    assert feed(17, 1.0, "m1") == [] and "m1" not in feed.tracker.episodes  # cleared, quietly
    (reopened,) = feed(18, 3.0, "m1")  # a new condition: a new episode
    assert reopened["kind"] == "opened" and reopened["label"] is None
    assert feed.tracker.episodes["m3"].label == "fault"
    assert feed.tracker.apply_labels(labels.get, cause) == ([], [])  # again: nothing new
    (updated,) = feed(40, 5.0, "m3")  # a confirmed episode's events carry its label
    assert updated["label"] == "fault"
    saved = Episode.from_dict(json.loads(json.dumps(feed.tracker.episodes["m3"].to_dict())))
    assert saved.label == "fault"
    labels[ids["m3"]] = "false-alarm"  # relabelled: the last label stands
    (closed,), _ = feed.tracker.apply_labels(labels.get, cause)
    assert closed["close_reason"] == "dismissed" and closed["label"] == "false-alarm"


HELD = replace(CONFIG, clear_windows=10, silent_windows=5)  # hold: settle_seconds, 10 windows


def dismissed(feed: Feed, step: float) -> tuple[str, float]:
    """m1 opens at 0 and stays anomalous; an operator labels it false-alarm after its window at
    `step`. Returns its episode id and the hold's start."""
    from model.episodes import Cause

    feed(0, 5.0)
    feed(step, 5.0)
    (ident,) = [e.id for e in feed.tracker.episodes.values()]
    cause = Cause(T0 + step, stamp(T0 + step), THRESHOLD, {"topic": "c", "partition": 0})
    (closed,), _ = feed.tracker.apply_labels({ident: "false-alarm"}.get, cause)
    assert closed["close_reason"] == "dismissed"
    return ident, step


@pytest.mark.parametrize("step", [1.0, 3600.0])
def test_a_dismissed_machine_still_above_the_threshold_opens_again_after_the_hold(step):
    """Held, its baseline does not adapt and the settle rule does not apply: without a bound
    a fault developing later would never open. The bound is settle_seconds and clear_windows
    windows: 7,200 windows of 1-second data, 10 (not 2) of hourly data."""
    feed = Feed(HELD)
    ident, start = dismissed(feed, step)
    bound = feed.tracker.hold_seconds
    windows = max(round(bound / step), HELD.clear_windows)
    assert bound == HELD.settle_seconds and windows == (7200 if step == 1.0 else 10)
    for n in range(1, windows):
        assert feed(start + n * step, 5.0) == []  # held: not before the bound
    (opened,) = feed(start + windows * step, 5.0)  # seen again: the usual rules
    assert opened["kind"] == "opened" and opened["episode_id"] != ident
    assert opened["label"] is None


def test_the_hold_rides_in_the_saved_state_and_state_saved_without_it_starts_it_anew():
    feed = Feed(HELD)
    _, start = dismissed(feed, 1.0)
    for n in range(1, 100):
        feed(start + n, 5.0)
    held = feed.tracker.episodes["m1"]
    saved = json.loads(json.dumps(held.to_dict()))
    again = Episode.from_dict(saved)
    assert (again.phase, again.held_since, again.held_count) == ("labelled", T0 + start, 99)
    older = {k: v for k, v in saved.items() if k not in ("held_since", "held_count")}
    restored = Tracker(HELD, top_channels=2)
    restored.restore([Episode.from_dict(older)], T0 + 100)
    feed.tracker = restored
    for n in range(100, 100 + 7200):  # the hold starts at its next window: 7,200 more
        assert feed(start + n, 5.0) == []
    (opened,) = feed(start + 7300, 5.0)
    assert opened["kind"] == "opened"


def test_the_newest_window_times_are_bounded_and_pruned_by_data_time():
    """A gateway that puts a sequence number in machine_id: one new machine per window."""
    feed = Feed()
    feed.tracker.max_machines = 100
    for t in range(1000):
        feed(t * 0.01, 1.0, machine=f"m{t}")  # ten seconds of data time: only the bound helps
    assert len(feed.tracker.seen) <= 100
    (opened,) = feed(10, 3.0, machine="open")
    for t in range(1000):
        feed(10 + t * 0.01, 1.0, machine=f"n{t}")
    assert "open" in feed.tracker.seen  # a machine with an episode is never forgotten
    (closed,) = feed(30 + 2 * feed.tracker.reset_seconds, 1.0, machine="late-comer")
    assert closed["close_reason"] == "silent"  # then "open" is one more quiet machine
    assert set(feed.tracker.seen) == {"late-comer"}  # pruned by data time


DEEP = replace(CONFIG, clear_seconds=600, clear_ratio=0.8, clear_windows=10, clear_deep_seconds=150)


def test_scores_back_well_inside_normal_close_after_the_deep_clear_time():
    feed = Feed(DEEP)
    feed(0, 9.0)
    for t in range(1, 151):  # under half the threshold, a stray 1.7 among them
        assert feed(t, 1.7 if t == 60 else 0.6) == []
    (closed,) = feed(151, 0.6)
    assert closed["close_reason"] == "cleared" and closed["ended_at"] == stamp(T0 + 1)


def test_scores_just_under_the_clear_line_need_the_whole_clear_time():
    feed = Feed(DEEP)
    feed(0, 9.0)
    for t in range(1, 601):  # below 0.8 x threshold, above half of it: not deep
        assert feed(t, 1.4) == []
    (closed,) = feed(601, 1.4)
    assert closed["ended_at"] == stamp(T0 + 1)


def test_a_window_above_the_threshold_restarts_the_deep_clear():
    feed = Feed(DEEP)
    feed(0, 9.0)
    for t in range(1, 100):
        feed(t, 0.5)
    feed(100, 3.0)
    assert [feed(t, 0.5) for t in range(101, 251)] == [[]] * 150
    (closed,) = feed(251, 0.5)
    assert closed["ended_at"] == stamp(T0 + 101)


def test_the_deep_clear_needs_its_windows_on_slow_data_and_survives_a_restore():
    slow = replace(DEEP, clear_seconds=3000, clear_windows=4, silent_seconds=0)
    feed = Feed(slow)
    feed(0, 9.0)
    feed(300, 0.5)
    feed(600, 0.5)  # 300 s past the deep clear time, 2 of 4 windows
    saved = [json.loads(json.dumps(e.to_dict())) for e in feed.tracker.episodes.values()]
    other = Feed(slow)
    other.tracker.restore([Episode.from_dict(d) for d in saved], feed.tracker.clock)
    assert other(900, 0.5) == []
    (closed,) = other(1200, 0.5)
    assert closed["ended_at"] == stamp(T0 + 300)
