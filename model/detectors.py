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

DEFAULT_DETECTORS = ("autoencoder", "level")


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
        z = np.abs(batch.x.astype(np.float64).mean(axis=1)) / self.scale  # (B, C)
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


DETECTORS: dict[str, type[Detector]] = {d.name: d for d in (Reconstruction, Level)}


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
