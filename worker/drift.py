"""Drift of a model's own scores: its recent normal windows against its held-out ones at training.

The statistic is the population stability index (PSI) over ten bins cut at the deciles of the
score distribution stored in the model file (`calibration.score_quantiles`, held-out normal
windows): PSI = sum over bins of (recent share - stored share) x ln(recent / stored), each
share floored at 0.0001 so that an empty bin counts without dividing by zero. That floor bounds
it: 0 when the recent scores spread over the bins as at training, ~8.3 when they all fall into
one of ten equal bins, never above 2 ln(10^4) = 18.4. The usual reading: under 0.1 stable,
0.1-0.25 moving, over 0.25 drifted.

Recent means the last `capacity` windows the model scored as normal (its anomalies left out:
a fault is not drift, and episodes report it), in the partitions this worker holds. With
fewer than `minimum` of them there is no value yet: ten bins of a few windows are noise
(expected PSI of an undrifted model is about 9 / n).
"""

from __future__ import annotations

import math

import numpy as np

BINS = 10
FLOOR = 1e-4  # smallest share a bin counts with
CAPACITY = 10_000  # recent normal windows kept per model
MINIMUM = 500  # before this many, no value


class ScoreDrift:
    """The PSI of recent scores against the stored distribution; bounded memory."""

    def __init__(
        self, quantiles: np.ndarray, capacity: int = CAPACITY, minimum: int = MINIMUM
    ) -> None:
        quantiles = np.asarray(quantiles, dtype=np.float64)  # (101,) 0, 1, ..., 100 %
        inner = quantiles[len(quantiles) // BINS :: len(quantiles) // BINS][: BINS - 1]
        # Equal deciles (many equal held-out scores) merge their bins.
        self.edges = np.unique(inner)  # (E,) bin i holds scores in (edges[i-1], edges[i]]
        # The stored share of each bin: the stored quantiles at or below each edge.
        below = (np.searchsorted(quantiles, self.edges, side="right") - 1) / (len(quantiles) - 1)
        self.expected = np.maximum(np.diff(np.concatenate([[0.0], below, [1.0]])), FLOOR)
        self.capacity = capacity
        self.minimum = minimum
        self._ring = np.zeros(capacity, dtype=np.uint8)  # recent windows' bins
        self._filled = 0
        self._next = 0

    def add(self, scores: np.ndarray) -> None:
        """Scores of windows the model judged normal, in order."""
        bins = np.searchsorted(self.edges, np.asarray(scores)[-self.capacity :], side="left")
        n = len(bins)
        if not n:
            return
        at = (self._next + np.arange(n)) % self.capacity
        self._ring[at] = bins
        self._next = (self._next + n) % self.capacity
        self._filled = min(self.capacity, self._filled + n)

    def value(self) -> float | None:
        """The PSI now, or None while fewer than `minimum` windows were seen."""
        if self._filled < self.minimum:
            return None
        counts = np.bincount(self._ring[: self._filled], minlength=len(self.expected))
        actual = np.maximum(counts / self._filled, FLOOR)
        psi = float(np.sum((actual - self.expected) * np.log(actual / self.expected)))
        return psi if math.isfinite(psi) else None
