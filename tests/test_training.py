import numpy as np
import pytest
import torch

from model.errors import DataError
from model.training import summary, train
from tests.synthetic import TINY, normal_values, recording, tiny_model


def test_same_seed_gives_the_same_model():
    first = tiny_model().artifact
    again = train([recording(normal_values(600))], TINY).artifact
    assert first.version == again.version
    for name, tensor in first.state.items():
        assert torch.equal(tensor, again.state[name])


def test_threshold_sits_above_most_held_out_normal_scores():
    result = tiny_model()
    share_below = (result.holdout_scores <= result.artifact.threshold).mean()
    assert share_below >= 0.95
    assert result.artifact.threshold > 0


def test_training_statistics_come_from_the_training_rows_only():
    values = normal_values(600)
    values[300:, 0] += 100.0  # rows past --train-rows must not move the statistics
    rec = recording(values)
    short = train([rec], TINY.__class__(**{**TINY.__dict__, "train_rows": 300, "epochs": 1}))
    assert abs(short.artifact.standardizer.mean[0] - 32.0) < 0.5


def test_long_gaps_are_excluded_and_counted():
    values = normal_values(600)
    values[100:102, 1] = np.nan  # short: interpolated
    values[400:420, 2] = np.nan  # long: its windows are dropped
    result = train([recording(values)], TINY.__class__(**{**TINY.__dict__, "epochs": 1}))
    figures = summary(result)
    assert figures["gaps_filled"] == 2
    assert figures["windows_skipped"] == 20 + TINY.window - 1


def test_too_few_rows_for_the_window_is_a_clear_error():
    with pytest.raises(DataError, match="too few windows"):
        train([recording(normal_values(10))], TINY)
