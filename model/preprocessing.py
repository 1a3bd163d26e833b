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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Standardizer:
    """Per-channel mean and scale fitted on training rows."""

    mean: np.ndarray  # (C,)
    scale: np.ndarray  # (C,), never zero

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        """Fit on (N, C) rows, ignoring NaN; constant channels get scale 1 (no divide by zero)."""
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        floor = 1e-6 * np.maximum(1.0, np.abs(mean))
        scale = np.where(std > floor, std, 1.0)
        return cls(mean.astype(np.float64), scale.astype(np.float64))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


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
    view = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1)  # (B, W, C, k)
    if config.denoise == "median":
        return np.median(view, axis=-1)
    return view.mean(axis=-1)


def model_input(
    windows: np.ndarray, config: PreprocessConfig, standardizer: Standardizer
) -> np.ndarray:
    """Raw (B, W, C) windows -> (B, W*C) float32 model input."""
    x = standardizer.apply(denoise(np.asarray(windows, dtype=np.float64), config))
    return x.reshape(len(x), -1).astype(np.float32)
