"""Gap filling, windowing, denoising and standardisation, identical offline and in the worker.

Statistics come from the training rows and travel in the artifact: a window is never
normalised by its own statistics, since that would erase level shifts (the anomalies).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Denoise = Literal["none", "mean", "median"]


@dataclass(frozen=True)
class PreprocessConfig:
    """How a raw window becomes the model's input."""

    denoise: Denoise = "median"
    kernel: int = 5  # samples in the denoising filter, along time
    max_gap: int = 5  # longest run of missing samples that is interpolated
    # A channel whose variance within a window is below this share of its training variance
    # moves mostly slower than the window (warming, drift): it is judged by its shape within
    # the window, not by a level the training rows sampled too briefly. 0 keeps every level.
    slow_share: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Standardizer:
    """Per-channel statistics fitted on training rows.

    Level channels become (x - mean) / scale. Slow channels (see PreprocessConfig.slow_share)
    become (x - the window's own mean) / scale, with the scale of their within-window
    variation: a step inside the window still shows, slow warming between windows does not.
    """

    mean: np.ndarray  # (C,)
    scale: np.ndarray  # (C,), never zero
    slow: np.ndarray  # (C,) bool

    @classmethod
    def fit(
        cls,
        values: np.ndarray,
        windows: np.ndarray | None = None,
        config: PreprocessConfig | None = None,
    ) -> Standardizer:
        """Fit on (N, C) rows, ignoring NaN; constant channels get scale 1 (no divide by zero).

        With the raw training windows (B, W, C) and a config whose slow_share > 0, channels
        whose mean within-window variance is below slow_share x their variance are marked slow,
        unless that is every channel that moves (a one-channel stream, say): some channel's
        level must stay in view.
        """
        with np.errstate(over="ignore", invalid="ignore"):  # 1e300: training refuses it
            return cls._fit(values, windows, config)

    @classmethod
    def _fit(
        cls, values: np.ndarray, windows: np.ndarray | None, config: PreprocessConfig | None
    ) -> Standardizer:
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        floor = 1e-6 * np.maximum(1.0, np.abs(mean))
        scale = np.where(std > floor, std, 1.0)
        slow = np.zeros(len(mean), dtype=bool)
        if windows is not None and config is not None and config.slow_share > 0 and len(windows):
            within = np.var(windows, axis=1).mean(axis=0)  # (C,)
            slow = (std > floor) & (within < config.slow_share * std**2)
            smooth = denoise(np.asarray(windows, dtype=np.float64), config)
            spread = np.sqrt(np.var(smooth, axis=1).mean(axis=0))  # what the model will see
            slow &= spread > floor
            if not (~slow & (std > floor)).any():
                # Every moving channel slow: centring them all would leave the model no level
                # to watch (a one-channel stream's level shift would score nothing): none is.
                slow[:] = False
            scale = np.where(slow, spread, scale)
        return cls(mean.astype(np.float64), scale.astype(np.float64), slow)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardise (..., W, C) windows; slow channels are centred on each window's mean."""
        centre = self.mean
        if self.slow.any():
            centre = np.where(self.slow, x.mean(axis=-2, keepdims=True), self.mean)
        return (x - centre) / self.scale


def fill_gaps(values: np.ndarray, max_gap: int) -> tuple[np.ndarray, int]:
    """Linearly interpolate runs of NaN up to `max_gap` long; longer runs stay NaN.

    Returns the filled copy of (N, C) values and the number of cells filled.
    """
    out = values.copy()
    filled = 0
    rows = np.arange(len(out))
    for c in range(out.shape[1]):
        col = out[:, c]
        missing = np.isnan(col)
        if not missing.any() or missing.all():
            continue
        for start, stop in _runs(missing):
            inside = start > 0 and stop < len(col)
            if stop - start <= max_gap and inside:
                col[start:stop] = np.interp(rows[start:stop], rows[~missing], col[~missing])
                filled += stop - start
    return out, filled


def fill_forward(values: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """Carry each channel's last value into at most `limit` missing rows after it.

    The worker's rule for readings (worker/inputs/assembler.py): a stream cannot see the value
    after a gap, so it cannot interpolate. Never before a channel's first value. Returns the
    filled copy of (N, C) values and the number of cells filled.
    """
    missing = np.isnan(values)  # (N, C)
    rows = np.arange(len(values))[:, None]
    last = np.maximum.accumulate(np.where(missing, -1, rows), axis=0)  # (N, C) last valid row
    fill = missing & (last >= 0) & (rows - last <= limit)
    out = values.copy()
    cols = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    out[fill] = values[last[fill], cols[fill]]
    return out, int(fill.sum())


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def sliding_windows(values: np.ndarray, window: int, stride: int = 1) -> np.ndarray:
    """(N, C) rows -> (B, W, C) windows, a view; window b ends at row b*stride + W - 1."""
    if len(values) < window:
        return np.empty((0, window, values.shape[1]), dtype=values.dtype)
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # (B, C, W)
    return view[::stride].transpose(0, 2, 1)


def denoise(windows: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Filter each window along time with edge padding, so a window alone is enough (worker)."""
    k = config.kernel
    if config.denoise == "none" or k <= 1:
        return windows
    left, right = (k - 1) // 2, k // 2
    padded = np.pad(windows, ((0, 0), (left, right), (0, 0)), mode="edge")  # (B, W+k-1, C)
    if config.denoise == "median" and k == 5:  # the default, on the worker's hot path
        width = windows.shape[1]
        return _median_of_5(*(padded[:, i : i + width] for i in range(5)))
    view = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1)  # (B, W, C, k)
    if config.denoise == "median":
        if k % 2:  # the middle element: what np.median returns, at half its cost
            return np.partition(view, k // 2, axis=-1)[..., k // 2]
        return np.median(view, axis=-1)
    return view.mean(axis=-1)


def _median_of_5(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, e: np.ndarray
) -> np.ndarray:
    """Elementwise median of five arrays in ten min/max passes: a tenth of np.partition's time.

    The lower of the two pairs' minima lies below three others and the higher of their maxima
    above three, so neither is the median: it is the median of the two left over and e.
    """
    low = np.maximum(np.minimum(a, b), np.minimum(c, d))
    high = np.minimum(np.maximum(a, b), np.maximum(c, d))
    return np.maximum(np.minimum(low, high), np.minimum(np.maximum(low, high), e))


def model_input(
    windows: np.ndarray, config: PreprocessConfig, standardizer: Standardizer
) -> np.ndarray:
    """Raw (B, W, C) windows -> (B, W*C) float32 model input."""
    x = standardizer.apply(denoise(np.asarray(windows, dtype=np.float64), config))
    return x.reshape(len(x), x.shape[1] * x.shape[2]).astype(np.float32)
