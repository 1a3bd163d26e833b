import itertools

import numpy as np

from model.preprocessing import (
    PreprocessConfig,
    Standardizer,
    denoise,
    fill_gaps,
    model_input,
    sliding_windows,
)


def test_windows_end_at_the_expected_rows():
    values = np.arange(12, dtype=float).reshape(6, 2)
    windows = sliding_windows(values, 3, stride=2)
    assert windows.shape == (2, 3, 2)
    assert windows[1, -1, 0] == values[4, 0]  # window b ends at row b*stride + W - 1


def test_constant_channel_does_not_divide_by_zero():
    values = np.column_stack([np.full(50, 7.0), np.linspace(0, 1, 50)])
    scaler = Standardizer.fit(values)
    assert np.isfinite(scaler.apply(values)).all()
    assert scaler.scale[0] == 1.0


def test_level_shift_survives_normalisation_with_training_statistics():
    train = np.random.default_rng(0).normal(0, 1, (500, 2))
    scaler = Standardizer.fit(train)
    shifted = np.full((1, 10, 2), 5.0)
    x = model_input(shifted, PreprocessConfig(denoise="none"), scaler)
    assert x.mean() > 4  # per-window normalisation would give 0 here


def test_short_gaps_are_interpolated_long_gaps_kept():
    col = np.arange(20, dtype=float)
    col[3:5] = np.nan  # 2 missing: filled
    col[10:18] = np.nan  # 8 missing: too long
    filled, count = fill_gaps(col[:, None], max_gap=3)
    assert count == 2
    assert filled[3, 0] == 3.0 and filled[4, 0] == 4.0
    assert np.isnan(filled[10:18, 0]).all()


def test_leading_and_trailing_gaps_are_never_interpolated():
    # Nothing before (or after) them to interpolate from: extrapolating would invent data.
    col = np.arange(20, dtype=float)
    col[:2] = np.nan
    col[-1:] = np.nan
    filled, count = fill_gaps(col[:, None], max_gap=3)
    assert count == 0 and np.isnan(filled[:2, 0]).all() and np.isnan(filled[-1, 0])


def test_median_denoising_removes_a_single_spike_and_keeps_shape():
    window = np.zeros((1, 9, 1))
    window[0, 4, 0] = 100.0
    out = denoise(window, PreprocessConfig(denoise="median", kernel=3))
    assert out.shape == window.shape
    assert np.abs(out).max() == 0
    mean = denoise(window, PreprocessConfig(denoise="mean", kernel=3))
    assert np.isclose(mean[0, 3:6, 0], 100 / 3).all()


def test_median_filter_equals_numpy_median_for_odd_and_even_kernels():
    rng = np.random.default_rng(1)
    windows = np.concatenate([rng.normal(size=(6, 20, 3)), rng.integers(0, 3, (6, 20, 3))])  # ties
    for k in (2, 3, 4, 5, 7):
        k_left, k_right = (k - 1) // 2, k // 2
        padded = np.pad(windows, ((0, 0), (k_left, k_right), (0, 0)), mode="edge")
        view = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1)
        out = denoise(windows, PreprocessConfig(denoise="median", kernel=k))
        assert np.array_equal(out, np.median(view, axis=-1))


def test_median_of_five_holds_for_every_order_of_five_values():
    orders = np.array(list(itertools.permutations([1.0, 2.0, 3.0, 4.0, 5.0])))  # (120, 5)
    windows = np.repeat(orders[:, :, None], 2, axis=2)  # the middle row sees each order whole
    out = denoise(windows, PreprocessConfig(denoise="median", kernel=5))
    assert (out[:, 2] == 3.0).all()


def _slow_of(values: np.ndarray) -> np.ndarray:
    config = PreprocessConfig()
    windows = sliding_windows(values, 20)
    return Standardizer.fit(values, windows, config).slow


def test_a_slow_channel_beside_a_moving_one_is_centred_per_window():
    t = np.arange(600, dtype=float)
    drift = 20.0 + t / 60  # warms slowly: little variance inside any window
    noise = np.random.default_rng(0).normal(0, 1, 600)
    assert _slow_of(np.column_stack([drift, noise])).tolist() == [True, False]


def test_when_every_moving_channel_is_slow_none_is():
    t = np.arange(600, dtype=float)
    drift = 20.0 + t / 60
    # alone (a one-channel stream), or beside a constant: its level stays in view
    assert _slow_of(drift[:, None]).tolist() == [False]
    assert _slow_of(np.column_stack([drift, np.full(600, 3.0)])).tolist() == [False, False]
