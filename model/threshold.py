"""Turning held-out normal scores into the alarm threshold.

Rule: each detector's score is divided by its `quantile` on held-out normal windows (its
normal scale); a window is anomalous when the larger of those ratios exceeds `factor`.
The quantile ignores a few odd held-out windows; the factor leaves room for normal
behaviour the training rows never showed (other operating points, slow drift).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TINY = 1e-12  # a reference of 0 (a perfectly constant training signal) would divide by zero


@dataclass(frozen=True)
class ThresholdRule:
    quantile: float = 0.99
    factor: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)

    def reference(self, held_out_scores: np.ndarray) -> float:
        """A detector's normal scale: the `quantile` of its held-out normal scores."""
        scores = np.asarray(held_out_scores, dtype=np.float64)
        if scores.size == 0 or not np.isfinite(scores).all():
            raise ValueError("threshold needs finite held-out scores")
        return max(float(np.quantile(scores, self.quantile)), TINY)
