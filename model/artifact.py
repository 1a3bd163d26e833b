"""The one model file: weights, shape, preprocessing, threshold and metadata, checksummed.

Layout (a torch zip read with `weights_only=True`, so loading never runs code):
    {"format": "faultwatch-model", "format_version": 1, "meta": <JSON text>,
     "tensors": {name: tensor}, "checksum": sha256 of meta + tensors}
The version is the checksum's first 12 hex digits: it changes whenever the content does.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.autoencoder import Autoencoder, AutoencoderConfig
from model.errors import ArtifactError
from model.preprocessing import PreprocessConfig, Standardizer

FORMAT = "faultwatch-model"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    """Everything needed to score a window exactly as at training time."""

    config: AutoencoderConfig
    window: int
    channels: list[str]
    preprocess: PreprocessConfig
    standardizer: Standardizer
    threshold: float
    state: dict[str, torch.Tensor]
    training: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return _checksum(self._meta_json(), self._tensors())[:12]

    def build(self) -> Autoencoder:
        model = Autoencoder(self.config)
        model.load_state_dict(self.state)
        return model.eval()

    def summary(self) -> dict:
        """The fields `inspect --json` prints."""
        return {
            "version": self.version,
            "parameters": sum(t.numel() for t in self.state.values()),
            "input_dim": self.config.input_dim,
            "hidden": self.config.hidden,
            "bottleneck": self.config.bottleneck,
            "window": self.window,
            "channels": self.channels,
            "threshold": self.threshold,
            "preprocessing": self.preprocess.to_dict(),
            "training": self.training,
        }

    def _meta_json(self) -> str:
        meta = {
            "config": self.config.to_dict(),
            "window": self.window,
            "channels": self.channels,
            "preprocess": self.preprocess.to_dict(),
            "threshold": self.threshold,
            "training": self.training,
        }
        return json.dumps(meta, sort_keys=True)

    def _tensors(self) -> dict[str, torch.Tensor]:
        stats = {
            "standardizer.mean": torch.from_numpy(self.standardizer.mean.copy()),
            "standardizer.scale": torch.from_numpy(self.standardizer.scale.copy()),
        }
        return {**{f"model.{k}": v.detach().cpu() for k, v in self.state.items()}, **stats}


def save(artifact: Artifact, path: str | Path) -> None:
    meta, tensors = artifact._meta_json(), artifact._tensors()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta,
        "tensors": tensors,
        "checksum": _checksum(meta, tensors),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written model where a worker could load it


def load(path: str | Path) -> Artifact:
    """Load and verify a model file; anything untrustworthy raises ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such model file")
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a faultwatch model")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: model format {payload.get('format_version')} unsupported")
    meta, tensors = payload.get("meta"), payload.get("tensors")
    if not isinstance(meta, str) or not isinstance(tensors, dict):
        raise ArtifactError(f"{path}: model file is incomplete")
    if payload.get("checksum") != _checksum(meta, tensors):
        raise ArtifactError(f"{path}: checksum mismatch, the model file was altered or damaged")
    try:
        return _from_parts(json.loads(meta), tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: inconsistent model file ({exc})") from exc


def _read(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise ArtifactError(f"{path}: refused, the file holds more than data ({first})") from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ArtifactError(f"{path}: truncated or corrupt model file") from exc


def _from_parts(meta: dict, tensors: dict[str, torch.Tensor]) -> Artifact:
    config = AutoencoderConfig(**meta["config"])
    channels = [str(c) for c in meta["channels"]]
    window = int(meta["window"])
    if window * len(channels) != config.input_dim:
        raise ValueError(f"window {window} x {len(channels)} channels != {config.input_dim}")
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    mean = tensors["standardizer.mean"].numpy().astype(np.float64)
    scale = tensors["standardizer.scale"].numpy().astype(np.float64)
    if mean.shape != (len(channels),) or scale.shape != (len(channels),) or (scale <= 0).any():
        raise ValueError("normalisation statistics do not match the channels")
    artifact = Artifact(
        config=config,
        window=window,
        channels=channels,
        preprocess=PreprocessConfig(**meta["preprocess"]),
        standardizer=Standardizer(mean, scale),
        threshold=float(meta["threshold"]),
        state=state,
        training=meta.get("training", {}),
    )
    artifact.build()  # shapes must match the config, or load_state_dict raises
    return artifact


def _checksum(meta: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise ArtifactError(f"model file entry {name!r} is not a tensor")
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
