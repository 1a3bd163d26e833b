"""Small generated recordings and a tiny trained model, so model tests need no shared data."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from model.preprocessing import PreprocessConfig
from model.recording import Recording
from model.training import TrainConfig, TrainResult, train

CHANNELS = ["flow", "pressure", "current", "temperature"]


def normal_values(rows: int, seed: int = 0) -> np.ndarray:
    """(rows, 4) smooth periodic signals with sensor noise: a pump in steady operation."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    base = np.array([32.0, 1.2, 2.0, 70.0])
    amplitude = np.array([1.0, 0.05, 0.2, 0.5])
    period = np.array([30.0, 45.0, 20.0, 60.0])
    return base + amplitude * np.sin(2 * np.pi * t / period) + rng.normal(0, 0.05, (rows, 4))


def write_csv(
    path: Path,
    values: np.ndarray,
    channels: list[str] = CHANNELS,
    delimiter: str = ",",
    labels: np.ndarray | None = None,
) -> Path:
    header = ["datetime", *channels] + (["anomaly"] if labels is not None else [])
    lines = [delimiter.join(header)]
    for i, row in enumerate(values):
        cells = [f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z"]
        cells += ["" if np.isnan(v) else repr(float(v)) for v in row]
        if labels is not None:
            cells.append(str(int(labels[i])))
        lines.append(delimiter.join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def recording(values: np.ndarray, name: str = "synthetic.csv") -> Recording:
    stamps = [str(i) for i in range(len(values))]
    return Recording(Path(name), stamps, list(CHANNELS), values)


TINY = TrainConfig(
    window=10,
    epochs=8,
    seed=1,
    hidden=32,
    bottleneck=4,
    patience=3,
    preprocess=PreprocessConfig(denoise="mean", kernel=3),
)


@functools.cache
def tiny_model() -> TrainResult:
    """Trained once per test session: a few seconds on 2 cores."""
    return train([recording(normal_values(600))], TINY)


# The contract suite's members (tests/test_model_family.py): each architecture, listed once,
# at a size that trains in seconds. A new architecture joins every contract test by a line here.
FAMILY: dict[str, TrainConfig] = {
    "dense": TINY,
    "conv": dataclasses.replace(TINY, architecture="conv", network={"filters": 8, "kernel": 3}),
    "vae": dataclasses.replace(TINY, architecture="vae"),
    "attention": dataclasses.replace(
        TINY, architecture="attention", network={"d_model": 8, "heads": 2}
    ),
}


@functools.cache
def family_model(architecture: str) -> TrainResult:
    """A tiny trained model of `architecture`, once per test session."""
    if architecture == "dense":
        return tiny_model()
    return train([recording(normal_values(600))], FAMILY[architecture])


PRESS_CHANNELS = ["force", "stroke", "oil_temperature"]
PRESS = dataclasses.replace(TINY, window=6, machines=("press-*",))


def press_values(rows: int, seed: int = 0) -> np.ndarray:
    """(rows, 3) another machine type: other channels, other levels."""
    return normal_values(rows, seed)[:, [0, 2, 3]] * np.array([10.0, 0.5, 1.2])


@functools.cache
def press_model() -> TrainResult:
    """A tiny model of another machine type (window 6, 3 channels, serving `press-*`)."""
    values = press_values(600)
    stamps = [str(i) for i in range(len(values))]
    press = Recording(Path("press.csv"), stamps, list(PRESS_CHANNELS), values)
    return train([press], PRESS)
