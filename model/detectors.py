"""Detectors: each turns a batch of windows into per-window and per-channel scores.

A detector is fitted on normal training windows, scores every window on its own, and is
stored as plain arrays (`detector.<name>.<array>` tensors in the model file; never pickled).
Its reference, the `quantile` of its window scores on held-out normal windows, is stored
beside it; the scorer fuses detectors by the ratio of each one's score to its reference.
Adding a detector is a class here and one line in DETECTORS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from model.forest import Forest

DEFAULT_DETECTORS = ("autoencoder", "level", "iqr", "pca_q", "stuck")


@dataclass(frozen=True)
class Batch:
    """What detectors see of B windows, all in the model's channel order."""

    raw: np.ndarray  # (B, W, C) the windows as received (float64)
    x: np.ndarray  # (B, W, C) float32, denoised and standardised: the network's input
    error: np.ndarray | None  # (B, W, C) float64 squared reconstruction error, or None


class Detector(ABC):
    """Fit on normal windows; score windows; travel as named arrays."""

    name: ClassVar[str]
    needs_network: ClassVar[bool] = False  # True: Batch.error must be there
    # The smallest reference calibration may set: a score that is ~0 on every normal window
    # (a residual of numerical noise) would otherwise turn the next rounding error into an alarm.
    reference_floor: ClassVar[float] = 1e-12

    @classmethod
    @abstractmethod
    def fit(cls, batch: Batch, seed: int = 0) -> Detector:
        """A detector fitted on normal training windows (`seed` for any randomness in it)."""

    @abstractmethod
    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(window scores (B,), channel contributions (B, C) >= 0); higher is more anomalous."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as named plain arrays (stored as `detector.<name>.<array>`)."""
        return {}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], channels: int) -> Detector:
        """Rebuild from arrays(); ValueError unless they are exactly what this detector needs."""
        _expect(cls.name, arrays, {})
        return cls()


class Reconstruction(Detector):
    """The network's mean squared reconstruction error; a channel's share is its own error."""

    name = "autoencoder"
    needs_network = True

    @classmethod
    def fit(cls, batch: Batch, seed: int = 0) -> Reconstruction:
        return cls()  # the network is the fitted part

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        per_channel = batch.error.mean(axis=1)  # (B, C)
        return per_channel.mean(axis=1), per_channel  # equal channel widths: the window's MSE


class Level(Detector):
    """The largest |z| of a channel's window mean: a level shift cannot hide in it.

    z = window mean of the standardised channel / the spread of that mean over normal
    windows. Slow channels are centred per window, so their level is 0 and drift is quiet.
    """

    name = "level"

    def __init__(self, scale: np.ndarray) -> None:
        self.scale = scale  # (C,)

    @classmethod
    def fit(cls, batch: Batch, seed: int = 0) -> Level:
        # A channel whose samples are independent averages its noise away over the window,
        # an autocorrelated one does not: the spread of the mean itself is the right unit.
        # Constant channels (and slow ones, centred per window) get 1, as nothing varies.
        spread = batch.x.astype(np.float64).mean(axis=1).std(axis=0)  # (C,)
        return cls(np.where(spread > 1e-6, spread, 1.0))

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        z = np.abs(batch.x.mean(axis=1, dtype=np.float64)) / self.scale  # (B, C)
        return z.max(axis=1), z**2

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], channels: int) -> Level:
        _expect(cls.name, arrays, {"scale": (channels,)})
        scale = arrays["scale"].astype(np.float64)
        if not (np.isfinite(scale) & (scale > 0)).all():
            raise ValueError("level-detector scales must be positive numbers")
        return cls(scale)


class Iqr(Detector):
    """The IQR rule per channel: the window's sample farthest from the channel's training
    median, in units of its interquartile range. Quartiles ignore the odd outliers that a
    mean and a standard deviation fitted on the same rows would absorb."""

    name = "iqr"

    def __init__(self, median: np.ndarray, iqr: np.ndarray) -> None:
        self.median, self.iqr = median, iqr  # (C,) each

    @classmethod
    def fit(cls, batch: Batch, seed: int = 0) -> Iqr:
        samples = batch.x.astype(np.float64).reshape(-1, batch.x.shape[2])  # (B*W, C)
        q1, median, q3 = np.quantile(samples, [0.25, 0.5, 0.75], axis=0)
        spread = q3 - q1
        return cls(median, np.where(spread > 1e-6, spread, 1.0))

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        # The farthest sample is the window's maximum or its minimum: two reductions over
        # time first, then (B, C) arithmetic (a fifth of the time on the worker's batches).
        high = batch.x.max(axis=1) - self.median  # (B, C)
        low = self.median - batch.x.min(axis=1)
        far = np.maximum(high, low) / self.iqr  # (B, C)
        return far.max(axis=1), far**2

    def arrays(self) -> dict[str, np.ndarray]:
        return {"median": self.median, "iqr": self.iqr}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], channels: int) -> Iqr:
        _expect(cls.name, arrays, {"median": (channels,), "iqr": (channels,)})
        median, iqr = (arrays[k].astype(np.float64) for k in ("median", "iqr"))
        if not (np.isfinite(median).all() and np.isfinite(iqr).all() and (iqr > 0).all()):
            raise ValueError("IQR-rule medians and ranges must be finite, ranges positive")
        return cls(median, iqr)


class IsolationForest(Detector):
    """Isolation Forest (model/forest.py) on window features: each channel's mean and spread
    over the window. A channel's share is how far its features sit from their training
    medians, in units of their interquartile ranges (the trees themselves name no channel)."""

    name = "iforest"

    def __init__(self, forest: Forest, center: np.ndarray, spread: np.ndarray) -> None:
        self.forest = forest
        self.center, self.spread = center, spread  # (2C,) each

    @staticmethod
    def features(batch: Batch) -> np.ndarray:
        x = batch.x.astype(np.float64)  # (B, W, C)
        return np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1)  # (B, 2C)

    @classmethod
    def fit(cls, batch: Batch, seed: int = 0) -> IsolationForest:
        points = cls.features(batch)
        q1, center, q3 = np.quantile(points, [0.25, 0.5, 0.75], axis=0)
        spread = np.where(q3 - q1 > 1e-6, q3 - q1, 1.0)
        return cls(Forest.fit(points, seed), center, spread)

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        points = self.features(batch)
        far = ((points - self.center) / self.spread) ** 2  # (B, 2C)
        c = batch.x.shape[2]
        return self.forest.score(points), far[:, :c] + far[:, c:]

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.forest.arrays(), "center": self.center, "spread": self.spread}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], channels: int) -> IsolationForest:
        trees = {k: arrays[k] for k in FOREST if k in arrays}
        shape = trees["feature"].shape if "feature" in trees else (0,)
        shapes = {k: shape for k in FOREST} | {
            "sample": (),
            "center": (2 * channels,),
            "spread": (2 * channels,),
        }
        _expect(cls.name, arrays, shapes)
        center, spread = (arrays[k].astype(np.float64) for k in ("center", "spread"))
        if not (np.isfinite(center).all() and np.isfinite(spread).all() and (spread > 0).all()):
            raise ValueError("isolation-forest feature medians and ranges must be finite")
        return cls(Forest.from_arrays(arrays, 2 * channels), center, spread)


FOREST = ("feature", "threshold", "left", "right", "depth")


class _Pca(Detector):
    """Principal components of the standardised samples (each time step a C-vector), fitted on
    normal windows; the components that explain `EXPLAINED` of the variance are kept."""

    EXPLAINED = 0.9

    def __init__(self, loadings: np.ndarray, variances: np.ndarray) -> None:
        self.loadings = loadings  # (C, K) orthonormal columns
        self.variances = variances  # (K,) their variances on the fitting samples
        # The network's input is float32: projecting in float32 is 4x faster on the worker's
        # batches and differs from float64 by ~1e-7 of a score.
        self._loadings32 = loadings.astype(np.float32)

    @classmethod
    def fit(cls, batch: Batch, seed: int = 0) -> _Pca:
        samples = batch.x.astype(np.float64).reshape(-1, batch.x.shape[2])  # (B*W, C)
        centred = samples - samples.mean(axis=0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        variances = singular**2 / max(len(samples) - 1, 1)  # (min(B*W, C),)
        share = np.cumsum(variances) / max(variances.sum(), 1e-12)
        k = int(np.searchsorted(share, cls.EXPLAINED) + 1)
        k = max(1, min(k, int((variances > 1e-9 * max(variances[0], 1e-12)).sum()) or 1))
        return cls(vt[:k].T.copy(), np.maximum(variances[:k], 1e-9))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"loadings": self.loadings, "variances": self.variances}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], channels: int) -> _Pca:
        loadings = arrays.get("loadings")
        k = loadings.shape[1] if loadings is not None and loadings.ndim == 2 else 0
        if not 1 <= k <= channels:
            raise ValueError(f"detector.{cls.name}.loadings is not (channels, 1..channels)")
        _expect(cls.name, arrays, {"loadings": (channels, k), "variances": (k,)})
        loadings, variances = (arrays[n].astype(np.float64) for n in ("loadings", "variances"))
        if not (np.isfinite(loadings).all() and np.isfinite(variances).all()):
            raise ValueError(f"detector.{cls.name} holds NaN or infinity")
        if not (variances > 0).all():
            raise ValueError(f"detector.{cls.name}.variances must be positive")
        return cls(loadings, variances)


class PcaT2(_Pca):
    """Hotelling's T-squared inside the principal subspace, averaged over the window's steps:
    the process moved along its normal directions, but too far (levels, variability)."""

    name = "pca_t2"

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        x = batch.x  # (B, W, C) float32
        t = x @ self._loadings32  # (B, W, K)
        scaled = t / self.variances.astype(np.float32)
        t2 = (t * scaled).sum(axis=2, dtype=np.float64)  # (B, W)
        # A channel's part: x_c * (P diag(1/var) P^T x)_c, summed over the steps, >= 0 taken.
        back = scaled @ self._loadings32.T  # (B, W, C)
        return t2.mean(axis=1), np.abs(x * back).mean(axis=1, dtype=np.float64)


class PcaQ(_Pca):
    """The squared prediction error (Q, SPE) outside the principal subspace, averaged over
    the window's steps: the channels stopped moving together as they normally do."""

    name = "pca_q"
    reference_floor = 1e-2  # a residual of 0.1 standard deviations in one channel

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        x = batch.x  # (B, W, C) float32
        residual = x - (x @ self._loadings32) @ self._loadings32.T  # (B, W, C)
        per_channel = np.square(residual).mean(axis=1, dtype=np.float64)  # (B, C)
        return per_channel.sum(axis=1), per_channel


class Stuck(Detector):
    """A frozen or dead sensor: a channel whose variation within the window collapses.

    Per channel, the raw readings' standard deviation within the window against its median
    over normal windows; score = median / (std + 1e-3 median), about 1 when normal, up to 1000
    for a reading that does not move. Channels that sit still in normal operation (any of
    their training windows without variation) cannot be judged and score 0.
    """

    name = "stuck"

    def __init__(self, typical: np.ndarray) -> None:
        self.typical = typical  # (C,) median within-window std; 0 = not judged

    @classmethod
    def fit(cls, batch: Batch, seed: int = 0) -> Stuck:
        spread = _within_std(batch.raw)  # (B, C)
        median = np.median(spread, axis=0)
        moving = spread.min(axis=0) > 1e-9 * np.maximum(1.0, np.abs(batch.raw).max(axis=(0, 1)))
        return cls(np.where(moving, median, 0.0))

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        spread = _within_std(batch.raw)  # (B, C)
        judged = self.typical > 0
        ratio = np.zeros_like(spread)
        ratio[:, judged] = self.typical[judged] / (spread[:, judged] + 1e-3 * self.typical[judged])
        return ratio.max(axis=1), ratio**2

    def arrays(self) -> dict[str, np.ndarray]:
        return {"typical": self.typical}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], channels: int) -> Stuck:
        _expect(cls.name, arrays, {"typical": (channels,)})
        typical = arrays["typical"].astype(np.float64)
        if not (np.isfinite(typical).all() and (typical >= 0).all()):
            raise ValueError("stuck-sensor spreads must be non-negative numbers")
        return cls(typical)


DETECTORS: dict[str, type[Detector]] = {
    d.name: d for d in (Reconstruction, Level, Iqr, IsolationForest, PcaT2, PcaQ, Stuck)
}


def _within_std(raw: np.ndarray) -> np.ndarray:
    """(B, C) standard deviation over each window's steps; np.std's result, a fifth faster."""
    deviation = raw - raw.mean(axis=1, keepdims=True)  # (B, W, C)
    return np.sqrt(np.einsum("bwc,bwc->bc", deviation, deviation) / raw.shape[1])


def resolve(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Checked detector names, in order; ValueError for unknown, repeated or none."""
    names = tuple(names)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector {unknown[0]!r} (known: {', '.join(DETECTORS)})")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"detectors {list(names)}: name each one once, at least one")
    return names


def _expect(name: str, arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    """ValueError unless `arrays` are exactly the named arrays of these shapes."""
    for key in sorted(shapes.keys() - arrays.keys()):
        raise ValueError(f"detector.{name}.{key} is missing")
    for key in sorted(arrays.keys() - shapes.keys()):
        raise ValueError(f"unexpected entry detector.{name}.{key[:40]}")
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise ValueError(f"detector.{name}.{key} has shape {arrays[key].shape}, not {shape}")
