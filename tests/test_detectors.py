"""The detector interface: fitted on normal windows, scored per window and channel, stored as
plain arrays, fused by ratio to each one's reference."""

import dataclasses

import numpy as np
import pytest

from model.detectors import DEFAULT_DETECTORS, DETECTORS, Batch, resolve
from model.preprocessing import sliding_windows
from model.scoring import Scorer
from model.training import train
from tests.synthetic import TINY, normal_values, recording, tiny_model


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(tiny_model().artifact)


@pytest.mark.parametrize("name", DETECTORS)
def test_a_detector_round_trips_through_its_arrays_and_scores_the_same(name, scorer):
    batch = scorer.batch(sliding_windows(normal_values(200, seed=2), scorer.window), error=True)
    detector = DETECTORS[name].fit(batch)
    arrays = detector.arrays()
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    again = DETECTORS[name].from_arrays({k: a.copy() for k, a in arrays.items()}, 4)
    windows, channels = detector.score(batch), again.score(batch)
    assert windows[0].shape == (len(batch.x),) and windows[1].shape == (len(batch.x), 4)
    assert np.array_equal(windows[0], channels[0]) and np.array_equal(windows[1], channels[1])
    assert (windows[1] >= 0).all() and np.isfinite(windows[0]).all()
    with pytest.raises(ValueError, match="unexpected entry"):
        DETECTORS[name].from_arrays({**arrays, "extra": np.ones(4)}, 4)


def test_the_level_detector_refuses_arrays_that_do_not_fit_the_channels():
    level = DETECTORS["level"]
    with pytest.raises(ValueError, match="detector.level.scale is missing"):
        level.from_arrays({}, 4)
    with pytest.raises(ValueError, match="shape"):
        level.from_arrays({"scale": np.ones(3)}, 4)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["autoencoder", "magic"], "unknown detector 'magic'"),
        (["level", "level"], "once"),
        ([], "once"),
    ],
)
def test_detector_names_are_known_and_given_once(names, message):
    with pytest.raises(ValueError, match=message):
        resolve(names)


def test_scores_carry_each_detector_s_ratio_and_the_leader(scorer):
    values = normal_values(120, seed=8)
    values[60:, 1] += 1.0  # a level shift half-way
    windows = sliding_windows(values, scorer.window)
    scores = scorer.score(windows)
    raw = scorer.detector_scores(windows)
    assert scores.detectors == DEFAULT_DETECTORS
    for j, name in enumerate(scores.detectors):
        np.testing.assert_allclose(
            scores.ratios[:, j], raw[name] / scorer.artifact.references[name]
        )
    assert np.array_equal(scores.score, scores.ratios.max(axis=1))
    for i in range(len(windows)):
        ratios = scores.detector_ratios(i)
        assert ratios[scores.detector(i)] == scores.score[i] == max(ratios.values())
    assert len({scores.detector(i) for i in range(len(windows))}) >= 2


def test_a_model_without_the_reconstruction_detector_scores_without_the_network():
    config = dataclasses.replace(TINY, detectors=("level",), epochs=1)
    scorer = Scorer(train([recording(normal_values(600))], config).artifact)
    windows = sliding_windows(normal_values(50, seed=3), scorer.window)
    assert scorer.batch(windows).error is None
    scores = scorer.score(windows)
    assert scores.detectors == ("level",) and set(scores.leader) == {0}
    level = scorer.detector_scores(windows)["level"] / scorer.artifact.references["level"]
    np.testing.assert_allclose(scores.score, level)


def test_the_stuck_sensor_detector_flags_a_frozen_channel_and_names_it(scorer):
    values = normal_values(200, seed=12)
    frozen = values.copy()
    frozen[:, 2] = frozen[0, 2]  # the current sensor stops updating: its last value repeats
    normal = scorer.score(sliding_windows(values, scorer.window))
    stuck = scorer.score(sliding_windows(frozen, scorer.window))
    assert normal.anomaly.mean() < 0.02
    assert stuck.anomaly.all()
    assert {stuck.detector(i) for i in range(len(stuck.score))} == {"stuck"}
    assert stuck.top_channels(0, scorer.channels, n=1)[0]["channel"] == "current"


def test_pca_q_flags_channels_that_stop_moving_together():
    # Six channels driven by two hidden signals: two components explain them, the rest is
    # noise. Flipping one channel keeps every level and spread, and breaks the pattern.
    rng = np.random.default_rng(13)
    t = np.arange(800)[:, None]
    hidden = np.hstack([np.sin(2 * np.pi * t / 50), np.cos(2 * np.pi * t / 80)])  # (N, 2)
    values = hidden @ rng.normal(size=(2, 6)) + rng.normal(0, 0.05, (800, 6))  # (N, 6)
    broken = values.copy()
    broken[:, 0] = -broken[:, 0]

    def batch(v: np.ndarray) -> Batch:
        x = sliding_windows((v - values[:400].mean(0)) / values[:400].std(0), 10)
        return Batch(x, x.astype(np.float32), None)

    detector = DETECTORS["pca_q"].fit(batch(values[:400]))
    assert detector.loadings.shape[1] <= 3
    normal, _ = detector.score(batch(values[400:]))
    flipped, share = detector.score(batch(broken[400:]))
    assert np.median(flipped) > 3 * np.quantile(normal, 0.99)
    assert share.sum(axis=0).argmax() == 0


def _walk(forest, point: np.ndarray, tree: int) -> float:
    """One point down one tree, node by node: what the vectorised walk must agree with."""
    node = 0
    while forest.feature[tree, node] >= 0:
        f = forest.feature[tree, node]
        go_left = point[f] < forest.threshold[tree, node]
        node = forest.left[tree, node] if go_left else forest.right[tree, node]
    return forest.depth[tree, node]


def test_the_isolation_forest_walks_its_trees_as_a_plain_tree_walk_does(scorer):
    windows = sliding_windows(normal_values(300, seed=14), scorer.window)
    batch = scorer.batch(windows)
    detector = DETECTORS["iforest"].fit(batch, seed=3)
    points = detector.features(batch)[:25]
    points[:5] += 5.0  # some far away, isolated early
    forest = detector.forest
    expected = [
        np.mean([_walk(forest, p, t) for t in range(forest.feature.shape[0])]) for p in points
    ]
    np.testing.assert_allclose(forest.path_length(points), expected)
    scores = forest.score(points)
    assert scores[:5].min() > scores[5:].max()
    assert forest.levels == 8 and forest.feature.shape[0] == 100
