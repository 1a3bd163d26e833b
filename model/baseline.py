"""Baseline: what "normal" means for one machine now, adapted slowly in data time.

A model is calibrated on a short stretch of one machine's life; a machine runs for months
through seasons, loads and wear. Scores are ratios to the model's references, and a
machine's normal windows score around the model's typical score (the geometric mean of its
held-out normal scores). The baseline follows the machine's own normal score level: an
exponential average of log(score) over its normal windows with time constant
`adapt_seconds` of data time, each step clipped so the level moves at most ln 2 per time
constant (a factor of 2). The machine's scores are divided by

    factor = clip(exp(level) / (MARGIN x typical), 1, adapt_max)

before the episode rules compare them with the threshold: never more sensitive than the
model was calibrated, at most `adapt_max` times less, and not at all while the machine's
level stays within MARGIN (x1.25) of the model's typical score (a machine like the one the
model was fitted on keeps the model's sensitivity whole). Guards: nothing is learned from a
window above the threshold, inside a pending or open episode, or of a muted machine; the
level moves only when data time moves. `rebase` takes the machine's recent level (a fast
average, `recent_seconds`) as normal at once: the settle rule of an open episode and an
operator's `new-normal` label use it.
"""

from __future__ import annotations

import math
from typing import Any

MAX_STEP = math.log(2.0)  # a log-score further than this from the level counts as this far
MARGIN = 1.25  # a level within this factor of the model's typical score changes nothing
SAVE_STEP = 0.05  # the changelog is written when the level moved this far (5 %) since


class Baseline:
    """One machine's adapted normal: plain numbers, saved as JSON with its episode state."""

    __slots__ = ("level", "recent", "at", "typical", "factor", "saved_level")

    def __init__(self, typical: float, time: float) -> None:
        self.typical = typical
        self.level = self.recent = math.log(typical)
        self.at = time  # data time of the machine's last window
        self.factor = 1.0
        self.saved_level = self.level  # the level the changelog holds

    def copy(self) -> Baseline:
        twin = Baseline.__new__(Baseline)
        for name in Baseline.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "recent": self.recent, "at": self.at, "typical": self.typical}

    @classmethod
    def from_dict(cls, data: dict[str, Any], cap: float) -> Baseline:
        baseline = cls(float(data["typical"]), float(data["at"]))
        baseline.level, baseline.recent = float(data["level"]), float(data["recent"])
        baseline.saved_level = baseline.level
        baseline.refactor(cap)
        return baseline

    def watch(self, time: float, score: float, typical: float, recent_seconds: float) -> float:
        """Every window: the recent level follows; returns the seconds since the last window."""
        step = time - self.at
        self.at = time
        if typical != self.typical:  # another model serves the machine: same level, new unit
            self.typical = typical
        if step > 0:
            a = step / recent_seconds if step < recent_seconds else 1.0
            self.recent += a * (_log(score) - self.recent)
        return step

    def learn(self, step: float, score: float, seconds: float, cap: float) -> bool:
        """A normal window outside any episode, `step` seconds after the last one; True when
        the level moved far enough from the saved one to be written."""
        if step <= 0:
            return False
        a = step / seconds if step < seconds else 1.0
        x = _log(score)
        level = self.level
        x = min(max(x, level - MAX_STEP), level + MAX_STEP)
        self.level = level + a * (x - level)
        self.refactor(cap)
        return abs(self.level - self.saved_level) >= SAVE_STEP

    def rebase(self, cap: float) -> None:
        """The recent level is the machine's normal from now on (bounded by the cap)."""
        self.level = self.recent
        self.refactor(cap)

    def refactor(self, cap: float) -> None:
        ratio = math.exp(self.level) / (MARGIN * self.typical) if self.typical > 0 else 1.0
        self.factor = min(cap, max(1.0, ratio))


def typical_score(quantiles: Any) -> float:
    """The geometric mean of a model's held-out normal scores (its stored quantiles)."""
    values = [max(float(q), 1e-6) for q in quantiles if math.isfinite(float(q))]
    if not values:
        return 1.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _log(score: float) -> float:
    return math.log(score) if score > 1e-6 else -13.815510557964274  # log(1e-6)
