"""One scoring function for `score`, the worker and the benchmarks.

Detectors (model/detectors.py) look at the same denoised, standardised window; by default:
- autoencoder: the network's mean squared reconstruction error (any architecture);
- level: the largest z-score of a channel's window mean. An autoencoder can learn to
  reproduce a moderate level shift (it saw levels vary in training); this z-score cannot
  miss one. Slow channels are centred per window, so their slow drift raises no alarm.
Each detector's window score is divided by its reference (its 99th percentile on held-out
normal windows); the window's score is the largest ratio: 1 is the edge of normal, the
threshold sits above it. The detector with that ratio leads, and each channel's share of
its score tells an engineer where to look. Every window is scored on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import artifact as artifact_io
from model.artifact import Artifact
from model.baseline import typical_score
from model.detectors import Batch
from model.errors import DataError
from model.preprocessing import model_input

CHUNK = 4096  # windows per forward pass: bounds memory on large offline files


@dataclass(frozen=True)
class Scores:
    score: np.ndarray  # (B,) float64
    channel_share: np.ndarray  # (B, C), each row sums to 1 (or 0 for a perfect window)
    anomaly: np.ndarray  # (B,) bool, score > threshold
    detectors: tuple[str, ...] = ()  # fusion order
    ratios: np.ndarray | None = None  # (B, D) each detector's score / its reference
    leader: np.ndarray | None = None  # (B,) index in `detectors` of the one that led

    def subset(self, keep: np.ndarray) -> Scores:
        """The scores of some windows only (an index or a boolean mask over the batch)."""

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[keep]

        return Scores(
            self.score[keep],
            self.channel_share[keep],
            self.anomaly[keep],
            self.detectors,
            take(self.ratios),
            take(self.leader),
        )

    def top_channels(self, i: int, channels: list[str], n: int = 3) -> list[dict]:
        """The n channels that contributed most to window i's score."""
        order = np.argsort(-self.channel_share[i])[:n]
        return [
            {"channel": channels[c], "share": round(float(self.channel_share[i, c]), 4)}
            for c in order
        ]

    def detector(self, i: int) -> str:
        """The name of the detector that led window i's score."""
        return self.detectors[int(self.leader[i])]

    def detector_ratios(self, i: int) -> dict[str, float]:
        """Window i's ratio to its reference, per detector: why it was (not) flagged."""
        return {name: float(r) for name, r in zip(self.detectors, self.ratios[i], strict=True)}


class Scorer:
    """A loaded model, ready to score batches of raw (B, W, C) windows."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.model = artifact.build()
        self.version = artifact.version
        self.window = artifact.window
        self.channels = artifact.channels
        self.threshold = artifact.threshold
        self.architecture = artifact.architecture
        self.detectors = artifact.detectors
        self.detector_names = tuple(d.name for d in artifact.detectors)
        self.references = np.array([artifact.references[n] for n in self.detector_names])
        self.needs_network = any(d.needs_network for d in artifact.detectors)
        # What the episode rules need of the model: its sampling interval (None in files from
        # before it was stored) and the typical score of its normal windows (the baselines' unit).
        self.interval = artifact.sampling_interval
        self.typical = typical_score(artifact.score_quantiles)

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
        raw, contributions = self._detect(windows)  # (D, B), (D, B, C)
        ratios = raw / self.references[:, None]  # (D, B)
        leader = ratios.argmax(axis=0)  # (B,) the first detector wins a tie
        score = ratios[leader, np.arange(len(leader))]
        share = _shares(contributions[leader, np.arange(len(leader))])
        return Scores(score, share, score > self.threshold, self.detector_names, ratios.T, leader)

    def detector_scores(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """Each detector's raw (B,) window score, before division by its reference."""
        raw, _ = self._detect(windows)
        return dict(zip(self.detector_names, raw, strict=True))

    def batch(self, windows: np.ndarray, error: bool = False) -> Batch:
        """What the detectors see of raw windows (B, W, C): one forward pass when a detector
        needs the network's reconstruction error (or `error` asks for it)."""
        raw = np.asarray(windows, dtype=np.float64)
        x = model_input(raw, self.artifact.preprocess, self.artifact.standardizer)  # (B, W*C)
        shape = (len(raw), self.window, len(self.channels))
        squared = None
        if self.needs_network or error:
            tensor = torch.from_numpy(x)
            with torch.inference_mode():
                err = (self.model(tensor) - tensor).pow(2)  # (B, W*C)
            squared = err.double().numpy().reshape(shape)
        return Batch(raw, x.reshape(shape), squared)

    def _detect(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(D, B) window scores and (D, B, C) channel contributions, chunk by chunk."""
        windows = np.asarray(windows)
        expected = (self.window, len(self.channels))
        if windows.ndim != 3 or windows.shape[1:] != expected:
            raise DataError(f"windows of shape {windows.shape[1:]}, the model needs {expected}")
        raws, contributions = [], []
        for i in range(0, len(windows), CHUNK):
            # Values near float's limit overflow to inf or NaN here, silently: such a window's
            # score is not finite, and its callers skip (score) or dead-letter (worker) it.
            with np.errstate(all="ignore"):
                batch = self.batch(windows[i : i + CHUNK])
                parts = [d.score(batch) for d in self.detectors]
            raws.append(np.stack([p[0] for p in parts]))
            contributions.append(np.stack([p[1] for p in parts]))
        if not raws:
            d = len(self.detectors)
            return np.empty((d, 0)), np.empty((d, 0, expected[1]))
        return np.concatenate(raws, axis=1), np.concatenate(contributions, axis=1)


def _shares(per_channel: np.ndarray) -> np.ndarray:
    total = per_channel.sum(axis=1, keepdims=True)
    return np.divide(per_channel, total, out=np.zeros_like(per_channel), where=total > 0)
