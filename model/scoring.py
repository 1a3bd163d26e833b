"""One scoring function for `score`, the worker and the benchmarks.

score = mean squared reconstruction error of the window in standardised units; higher is
more anomalous. Each channel's share of that error tells an engineer where to look.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import artifact as artifact_io
from model.artifact import Artifact
from model.errors import DataError
from model.preprocessing import model_input

CHUNK = 4096  # windows per forward pass: bounds memory on large offline files


@dataclass(frozen=True)
class Scores:
    score: np.ndarray  # (B,) float64
    channel_share: np.ndarray  # (B, C), each row sums to 1
    anomaly: np.ndarray  # (B,) bool, score > threshold

    def top_channels(self, i: int, channels: list[str], n: int = 3) -> list[dict]:
        """The n channels that contributed most to window i's error."""
        order = np.argsort(-self.channel_share[i])[:n]
        return [{"channel": channels[c], "share": round(float(self.channel_share[i, c]), 4)}
                for c in order]


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
        windows = np.asarray(windows)
        expected = (self.window, len(self.channels))
        if windows.ndim != 3 or windows.shape[1:] != expected:
            raise DataError(f"windows of shape {windows.shape[1:]}, the model needs {expected}")
        errors = [self._errors(windows[i : i + CHUNK]) for i in range(0, len(windows), CHUNK)]
        per_channel = np.concatenate(errors) if errors else np.empty((0, expected[1]))
        score = per_channel.mean(axis=1)  # (B,) equal channel widths, so mean of means
        total = per_channel.sum(axis=1, keepdims=True)
        share = np.divide(per_channel, total, out=np.zeros_like(per_channel), where=total > 0)
        return Scores(score, share, score > self.threshold)

    def _errors(self, windows: np.ndarray) -> np.ndarray:
        """(B, W, C) raw -> (B, C) mean squared error per channel."""
        x = torch.from_numpy(
            model_input(windows, self.artifact.preprocess, self.artifact.standardizer)
        )
        with torch.inference_mode():
            err = (self.model(x) - x).pow(2)  # (B, W*C)
        err = err.double().numpy().reshape(len(windows), self.window, len(self.channels))
        return err.mean(axis=1)  # (B, C)
