import numpy as np
import pytest

from model.errors import DataError
from model.preprocessing import sliding_windows
from model.scoring import Scorer
from tests.synthetic import normal_values, tiny_model


@pytest.fixture(scope="module")
def scorer():
    return Scorer(tiny_model().artifact)


def test_scores_are_finite_and_shares_sum_to_one(scorer):
    scores = scorer.score(sliding_windows(normal_values(100, seed=3), scorer.window))
    assert np.isfinite(scores.score).all()
    assert np.allclose(scores.channel_share.sum(axis=1), 1.0)


def test_batch_scoring_equals_one_by_one(scorer):
    windows = sliding_windows(normal_values(60, seed=4), scorer.window)
    batch = scorer.score(windows).score
    single = np.array([scorer.score(w[None]).score[0] for w in windows])
    assert np.allclose(batch, single, rtol=1e-5, atol=1e-9)


def test_a_level_shift_scores_above_the_threshold_and_names_its_channel(scorer):
    values = normal_values(100, seed=6)
    shifted = values.copy()
    shifted[:, 1] += 1.0  # pressure jumps by 20 normal amplitudes
    normal = scorer.score(sliding_windows(values, scorer.window))
    faulty = scorer.score(sliding_windows(shifted, scorer.window))
    assert faulty.score.min() > max(normal.score.max(), scorer.threshold)
    assert faulty.top_channels(0, scorer.channels, n=1)[0]["channel"] == "pressure"


def test_wrong_window_shape_is_a_clear_error(scorer):
    with pytest.raises(DataError, match="the model needs"):
        scorer.score(np.zeros((2, scorer.window + 1, len(scorer.channels))))
