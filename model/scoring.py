"""One scoring function for `score`, the worker and the benchmarks.

Two detectors look at the same standardised window:
- autoencoder: mean squared reconstruction error (the specified model);
- level: the largest z-score of a channel's window mean, |mean| / the spread of that mean
  over the training windows. An autoencoder can learn to reproduce a moderate level shift
  (it saw levels vary in training); this z-score cannot miss one. Slow channels are centred
  per window, so their level is 0: their slow drift raises no alarm.
score = the larger of the two, each divided by its reference (its 99th percentile on held-out
normal windows): 1 is the edge of normal, the threshold sits above it. Each channel's share
of the leading detector tells an engineer where to look. Every window is scored on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import artifact as artifact_io
from model.artifact import DETECTORS, Artifact
from model.errors import DataError
from model.preprocessing import model_input

CHUNK = 4096  # windows per forward pass: bounds memory on large offline files


@dataclass(frozen=True)
class Scores:
    score: np.ndarray  # (B,) float64
    channel_share: np.ndarray  # (B, C), each row sums to 1 (or 0 for a perfect window)
    anomaly: np.ndarray  # (B,) bool, score > threshold

    def top_channels(self, i: int, channels: list[str], n: int = 3) -> list[dict]:
        """The n channels that contributed most to window i's score."""
        order = np.argsort(-self.channel_share[i])[:n]
        return [
            {"channel": channels[c], "share": round(float(self.channel_share[i, c]), 4)}
            for c in order
        ]


class Scorer:
    """A loaded model, ready to score batches of raw (B, W, C) windows."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.model = artifact.build()
        self.version = artifact.version
        self.window = artifact.window
        self.channels = artifact.channels
        self.threshold = artifact.threshold

    @classmethod
    def load(cls, path: str | Path) -> Scorer:
        return cls(artifact_io.load(path))

    def check_channels(self, channels: list[str], source: str) -> None:
        if channels != self.channels:
            raise DataError(
                f"{source}: channels {channels} differ from the model's {self.channels}"
            )

    def score(self, windows: np.ndarray) -> Scores:
        """Score raw windows (B, W, C) in as few forward passes as memory allows."""
        per_channel = self.per_channel(windows)
        references = self.artifact.references
        ratios = {name: _combine(name, per_channel[name]) / references[name] for name in DETECTORS}
        score = np.maximum(ratios["autoencoder"], ratios["level"])
        level_leads = (ratios["level"] > ratios["autoencoder"])[:, None]
        share = _shares(
            np.where(level_leads, per_channel["level"] ** 2, per_channel["autoencoder"])
        )
        return Scores(score, share, score > self.threshold)

    def detector_scores(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """Each detector's raw (B,) window score, before division by its reference."""
        return {name: _combine(name, c) for name, c in self.per_channel(windows).items()}

    def per_channel(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """(B, C) per detector: mean squared reconstruction error and the level z-score."""
        windows = np.asarray(windows)
        expected = (self.window, len(self.channels))
        if windows.ndim != 3 or windows.shape[1:] != expected:
            raise DataError(f"windows of shape {windows.shape[1:]}, the model needs {expected}")
        parts = [self._chunk(windows[i : i + CHUNK]) for i in range(0, len(windows), CHUNK)]
        if not parts:
            empty = np.empty((0, expected[1]))
            return {"autoencoder": empty, "level": empty}
        return {
            "autoencoder": np.concatenate([p[0] for p in parts]),
            "level": np.concatenate([p[1] for p in parts]),
        }

    def _chunk(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(
            model_input(windows, self.artifact.preprocess, self.artifact.standardizer)
        )
        with torch.inference_mode():
            err = (self.model(x) - x).pow(2)  # (B, W*C)
        shape = (len(windows), self.window, len(self.channels))
        err = err.double().numpy().reshape(shape).mean(axis=1)
        level = np.abs(x.double().numpy().reshape(shape).mean(axis=1))
        return err, level / self.artifact.level_scale


def _combine(name: str, per_channel: np.ndarray) -> np.ndarray:
    """(B, C) -> (B,): the mean error over channels (equal widths), the largest level z."""
    return per_channel.mean(axis=1) if name == "autoencoder" else per_channel.max(axis=1)


def _shares(per_channel: np.ndarray) -> np.ndarray:
    total = per_channel.sum(axis=1, keepdims=True)
    return np.divide(per_channel, total, out=np.zeros_like(per_channel), where=total > 0)
