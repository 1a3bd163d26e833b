"""Per-machine baselines (model/baseline.py) and the rules around them in the tracker: rules at
any sampling rate, drift adaptation and its guards, the settle rule, re-basing, the state."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from model.baseline import MARGIN, Baseline, typical_score
from model.episodes import Episode, EpisodeConfig, Tracker

T0 = 1_700_000_000.0
THRESHOLD = 2.0
TYPICAL = 0.5
# Rules as shipped, with short times where a test needs them.
RULES = EpisodeConfig(open_seconds=30, clear_seconds=600, update_seconds=60, silent_seconds=600)


class Machine:
    """Windows of one machine, `every` seconds apart, into a tracker; events kept."""

    def __init__(self, config: EpisodeConfig, every: float, tracker: Tracker | None = None):
        self.tracker = tracker or Tracker(config)
        self.every, self.n, self.events = every, 0, []

    def feed(self, scores, machine: str = "m", muted: bool = False, typical=TYPICAL) -> list:
        found = []
        for score in scores:
            t = T0 + self.n * self.every
            found += self.tracker.observe(
                machine, t, f"{t}", score, THRESHOLD, lambda: [("a", 1.0)], "level",
                {"offset": self.n}, muted, interval=self.every, typical=typical,
            )  # fmt: skip
            self.n += 1
        self.events += found
        return found

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]


@pytest.mark.parametrize("every", [1.0, 180.0, 300.0, 3600.0])
def test_one_anomalous_window_never_opens_an_episode_at_any_rate(every):
    m = Machine(RULES, every)
    m.feed([0.5] * 5 + [9.0] + [0.5] * 5 + [9.0, 9.0] + [0.5] * 5)
    assert m.events == []


@pytest.mark.parametrize("every", [180.0, 300.0, 3600.0])
def test_on_slow_data_the_window_count_opens_and_clears(every):
    config = RULES
    m = Machine(config, every)
    m.feed([0.5] * 3)
    m.feed([9.0] * (config.open_windows - 1))
    assert m.events == []  # 30 s passed long ago: the count decides
    (opened,) = m.feed([9.0])
    assert opened["kind"] == "opened" and opened["windows"] == config.open_windows
    m.feed([0.5] * (config.clear_windows - 1))
    assert m.kinds() == ["opened"]  # 600 s of normal passed, not 10 windows
    (closed,) = m.feed([0.5])
    assert closed["close_reason"] == "cleared"


def test_on_second_data_the_seconds_decide():
    m = Machine(RULES, 1.0)
    m.feed([9.0] * 30)
    assert m.events == []  # 29 s since the first anomalous window
    assert m.feed([9.0])[0]["kind"] == "opened"


def test_an_hourly_machine_is_not_silent_between_its_windows():
    """Another machine's windows move the partition's clock; an hourly machine's episode
    stays open until it misses silent_windows of its own interval."""
    config = replace(RULES, open_windows=1, open_seconds=0)
    hourly = Machine(config, 3600.0)
    hourly.feed([9.0, 9.0])
    other = Machine(config, 60.0, tracker=hourly.tracker)
    other.n = int(2 * 3600 / 60)  # the other machine starts where the hourly one is
    other.feed([0.5] * 60 * 4, machine="other")  # 4 hours later
    assert "closed" not in hourly.kinds() + other.kinds()
    closed = other.feed([0.5] * 60 * 2, machine="other")  # past 5 hours of silence
    assert [e["close_reason"] for e in closed] == ["silent"]


def test_drift_below_the_threshold_raises_the_factor_within_its_rate_and_cap():
    config = replace(RULES, adapt_seconds=3600.0, adapt_max=4.0)
    m = Machine(config, 60.0)
    m.feed([1.5] * 60)  # an hour of scores 3 x the typical one, under the threshold
    baseline = m.tracker.baselines["m"]
    moved = baseline.level - math.log(TYPICAL)
    assert 0.6 < moved <= math.log(2.0) + 1e-9  # at most a doubling per time constant
    assert baseline.factor == pytest.approx(math.exp(baseline.level) / (MARGIN * TYPICAL))
    assert baseline.factor > 1.0
    assert m.events == []
    quiet = Machine(config, 60.0)  # a model whose normal windows score 0.25: 1.9 is 7.6 x
    quiet.feed([1.9] * 60 * 24, typical=0.25)
    assert quiet.tracker.baselines["m"].factor == pytest.approx(config.adapt_max)


def test_the_adapted_factor_lets_a_drifted_machine_stay_quiet():
    config = replace(RULES, adapt_seconds=3600.0, settle_seconds=0)
    slow = Machine(config, 60.0)
    # the machine's normal creeps from 0.5 to 2.6 over 12 hours: adapted, no episode
    slow.feed([0.5 * math.exp(i / 450) for i in range(720)])
    assert slow.events == []
    fixed = Machine(replace(config, adapt_seconds=0), 60.0)
    fixed.feed([0.5 * math.exp(i / 450) for i in range(720)])
    assert fixed.kinds()[0] == "opened"


def test_nothing_is_learned_inside_an_episode_or_while_muted():
    config = replace(RULES, adapt_seconds=600.0, settle_seconds=0)
    m = Machine(config, 60.0)
    m.feed([0.5] * 10)
    level = m.tracker.baselines["m"].level
    m.feed([9.0] * 40)  # pending, then open: 40 minutes of a fault
    assert m.kinds() == ["opened"]
    assert m.tracker.baselines["m"].level == level
    muted = Machine(config, 60.0)
    muted.feed([0.5] * 10)
    level = muted.tracker.baselines["m"].level
    muted.feed([1.8] * 40, muted=True)
    assert muted.tracker.baselines["m"].level == level


def test_a_machine_that_settles_at_a_new_level_closes_after_settle_and_clear():
    config = replace(RULES, settle_seconds=1800.0)
    m = Machine(config, 60.0)
    m.feed([0.5] * 10)
    m.feed([9.0] * 10)  # the fault
    m.feed([5.0] * 30)  # undone, yet a slow channel settled away from training: steady
    assert m.kinds() == ["opened"]
    m.feed([5.0] * 11)
    assert m.kinds() == ["opened", "closed"]
    closed = m.events[-1]
    assert closed["close_reason"] == "cleared"
    # 30 minutes steady (settle) + 10 windows below the clear level, a window a minute
    assert m.n - 20 <= 30 + config.clear_windows + 1
    assert m.tracker.baselines["m"].factor > 5.0 / (0.8 * THRESHOLD)
    never = Machine(replace(config, settle_seconds=0), 60.0)
    never.feed([0.5] * 10 + [9.0] * 10 + [5.0] * 200)
    assert never.kinds() == ["opened"]  # 0: a steady level never becomes normal


def test_a_steady_level_beyond_the_cap_stays_open():
    config = replace(RULES, settle_seconds=600.0, adapt_max=2.0)
    m = Machine(config, 60.0)
    m.feed([0.5] * 10 + [9.0] * 200)
    assert m.kinds() == ["opened"]


def test_rebase_takes_the_recent_level_as_normal_at_once():
    config = replace(RULES, settle_seconds=0, adapt_seconds=30 * 86400.0)
    m = Machine(config, 60.0)
    m.feed([0.5] * 5 + [3.0] * 30)
    assert m.kinds() == ["opened"]
    assert m.tracker.rebase("m") is True
    assert m.tracker.baselines["m"].factor > 3.0 / (0.8 * THRESHOLD)
    m.feed([3.0] * (config.clear_windows + 1))  # 10 windows and 600 s below the clear level
    assert m.kinds() == ["opened", "closed"]
    assert m.tracker.rebase("never-seen") is False


def test_a_baseline_survives_json_and_older_episodes_still_read():
    config = replace(RULES, adapt_seconds=600.0)
    m = Machine(config, 60.0)
    m.feed([1.5] * 30 + [9.0] * 8)
    live = m.tracker.baselines["m"]
    restored = Baseline.from_dict(json.loads(json.dumps(live.to_dict())), config.adapt_max)
    assert restored.to_dict() == live.to_dict() and restored.factor == live.factor
    old = {k: v for k, v in m.tracker.episodes["m"].to_dict().items() if k != "step"}
    assert Episode.from_dict(old).step is None  # saved before the field existed


def test_the_batch_reports_which_baselines_changed_and_which_to_write():
    config = replace(RULES, adapt_seconds=600.0)
    m = Machine(config, 60.0)
    m.feed([0.5] * 5)
    before = m.tracker.baselines["m"].to_dict()
    m.tracker.begin()
    m.feed([1.8] * 20)
    adapted, due = m.tracker.adapted()
    assert adapted == {"m"} and due == {"m"}  # moved more than 5 %: written
    m.tracker.load_baseline("m", before)  # the batch undone (the worker's store does it)
    assert m.tracker.baselines["m"].to_dict() == before
    m.tracker.begin()
    m.feed([0.5])
    assert m.tracker.adapted() == ({"m"}, set())  # changed a little: kept in memory only


def test_a_level_within_the_margin_keeps_the_models_sensitivity():
    config = replace(RULES, adapt_seconds=600.0)
    m = Machine(config, 60.0)
    m.feed([TYPICAL * 1.2] * 600)  # ten time constants at 1.2 x the typical score
    assert m.tracker.baselines["m"].factor == 1.0


def test_typical_score_is_the_geometric_mean_of_the_quantiles():
    assert typical_score([0.25, 1.0]) == pytest.approx(0.5)
    assert typical_score([]) == 1.0
    assert typical_score([float("nan"), 0.25, 1.0, float("inf")]) == pytest.approx(0.5)


def test_a_new_normal_label_closes_the_episode_and_re_bases_the_machine_at_once():
    from model.episodes import Cause

    config = replace(RULES, settle_seconds=0, adapt_seconds=30 * 86400.0)
    m = Machine(config, 60.0)
    m.feed([0.5] * 5 + [3.0] * 30)  # after a repair the pump runs at a new level
    (opened,) = m.events
    cause = Cause(T0 + 35 * 60, "now", THRESHOLD, {"offset": 35})
    labels = {opened["episode_id"]: "new-normal"}
    (closed,), applied = m.tracker.apply_labels(labels.get, cause)
    assert (closed["close_reason"], closed["label"], applied) == (
        "new_normal",
        "new-normal",
        [("m", "new-normal")],
    )
    assert m.tracker.baselines["m"].factor > 3.0 / (0.8 * THRESHOLD)  # re-based, not slowly
    assert m.feed([3.0] * 40) == []  # the new level is normal: no episode
    assert "m" not in m.tracker.episodes  # the held episode cleared quietly
    (fault,) = m.feed([3.0 * 4 * 2] * config.open_windows)  # a real fault on top still opens
    assert fault["kind"] == "opened"


def test_baselines_stay_bounded_whatever_the_machine_ids():
    m = Machine(RULES, 1.0)
    m.tracker.max_machines = 50
    for n in range(3000):  # a gateway that puts a sequence number in machine_id
        m.feed([0.5], machine=f"seq-{n}")
    assert len(m.tracker.baselines) <= 2 * m.tracker.max_machines
    assert "seq-2999" in m.tracker.baselines  # the newest kept


def test_a_baseline_outlives_a_long_stop_and_goes_after_weeks_of_quiet():
    config = replace(RULES, adapt_seconds=3600.0)
    m = Machine(config, 3600.0)  # hourly
    m.feed([0.5] * 3, machine="stopped")
    m.feed([0.5] * 24 * 7, machine="running")  # a week of the other machine
    assert "stopped" in m.tracker.baselines  # a week's stop: its normal is kept
    m.tracker.begin()
    m.feed([0.5] * 24 * 8, machine="running")  # more than BASELINE_QUIET in all
    assert "stopped" not in m.tracker.baselines
    adapted, due = m.tracker.adapted()
    assert "stopped" in adapted and "stopped" in due  # deleted from the changelog too


def test_on_hourly_data_a_rebase_takes_more_than_the_last_window():
    config = replace(RULES, settle_seconds=0, adapt_seconds=30 * 86400.0)
    m = Machine(config, 3600.0)
    m.feed([0.5] * 5 + [3.0] * 30 + [1.0])  # a new level of 3.0, then one low window
    assert m.kinds() == ["opened"]
    assert m.tracker.rebase("m") is True  # new-normal: the level of the last hours, not 1.0
    assert m.tracker.baselines["m"].factor > 3.0 / (0.8 * THRESHOLD)
