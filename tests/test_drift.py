"""Score drift: the PSI of recent normal scores against the stored held-out distribution."""

from __future__ import annotations

import numpy as np

from worker.drift import ScoreDrift


def quantiles(samples: np.ndarray) -> np.ndarray:
    return np.quantile(samples, np.linspace(0, 1, 101))


def test_the_training_distribution_itself_is_not_drift():
    rng = np.random.default_rng(0)
    drift = ScoreDrift(quantiles(rng.gamma(2.0, 0.2, 20_000)))
    drift.add(rng.gamma(2.0, 0.2, 10_000))
    assert drift.value() < 0.01


def test_scores_that_crept_up_are_drift_and_the_value_is_bounded():
    rng = np.random.default_rng(1)
    drift = ScoreDrift(quantiles(rng.gamma(2.0, 0.2, 20_000)))
    drift.add(rng.gamma(2.0, 0.2, 10_000) * 1.5)  # the same machines, 50 % higher scores
    moved = drift.value()
    assert moved > 0.25
    drift.add(np.full(10_000, 100.0))  # every recent score in the top bin
    assert moved < drift.value() < 8.3 + 1e-6


def test_no_value_before_the_minimum_and_only_the_recent_windows_count():
    rng = np.random.default_rng(2)
    stored = quantiles(rng.gamma(2.0, 0.2, 20_000))
    drift = ScoreDrift(stored, capacity=1_000, minimum=500)
    drift.add(rng.gamma(2.0, 0.2, 499))
    assert drift.value() is None
    drift.add(np.full(1_000, 100.0))  # a drifted stretch fills the window...
    assert drift.value() > 1
    drift.add(rng.gamma(2.0, 0.2, 1_000))  # ...and normal scores push it out again
    assert drift.value() < 0.05


def test_equal_stored_quantiles_merge_their_bins():
    stored = np.concatenate([np.zeros(60), np.linspace(0.1, 1.0, 41)])  # 60 % scored 0
    drift = ScoreDrift(stored, minimum=10)
    assert len(drift.edges) < 9
    drift.add(np.concatenate([np.zeros(600), np.linspace(0.1, 1.0, 400)]))
    assert drift.value() < 0.05  # the stored quantiles place the tie within 1 %
