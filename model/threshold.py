"""Turning held-out normal scores into the alarm threshold.

Rule: threshold = factor x the `quantile` of the scores of held-out normal windows.
The quantile ignores a few odd held-out windows; the factor leaves room for normal
behaviour the training rows never showed (drifts, other operating points).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ThresholdRule:
    quantile: float = 0.99
    factor: float = 1.5

    def to_dict(self) -> dict:
        return asdict(self)

    def calibrate(self, held_out_scores: np.ndarray) -> float:
        scores = np.asarray(held_out_scores, dtype=np.float64)
        if scores.size == 0 or not np.isfinite(scores).all():
            raise ValueError("threshold needs finite held-out scores")
        return float(self.factor * np.quantile(scores, self.quantile))
