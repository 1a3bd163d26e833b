"""The one model file: weights, shape, preprocessing, threshold and metadata, checksummed.

Layout (a torch zip read with `weights_only=True`, so loading never runs code):
    {"format": "faultwatch-model", "format_version": 2, "meta": <JSON text>,
     "tensors": {name: tensor}, "checksum": sha256 of meta + tensors}
The version is the checksum's first 12 hex digits: it changes whenever the content does.
Format 2 holds the slow-channel flags, the level detector's per-channel scales and the
detector references; any other format is refused rather than misscored.
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
FORMAT_VERSION = 2
DETECTORS = ("autoencoder", "level")  # whose references a format-2 model stores


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
    references: dict[str, float]  # detector -> its normal scale (held-out q99)
    level_scale: np.ndarray  # (C,) spread of a normal window's mean, standardised
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
            "references": self.references,
            "slow_channels": [
                c for c, s in zip(self.channels, self.standardizer.slow, strict=True) if s
            ],
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
            "references": self.references,
        }
        return json.dumps(meta, sort_keys=True)

    def _tensors(self) -> dict[str, torch.Tensor]:
        stats = {
            "standardizer.mean": torch.from_numpy(self.standardizer.mean.copy()),
            "standardizer.scale": torch.from_numpy(self.standardizer.scale.copy()),
            "standardizer.slow": torch.from_numpy(self.standardizer.slow.astype(np.uint8)),
            "detector.level_scale": torch.from_numpy(self.level_scale.copy()),
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
    _check_tensors(path, tensors)
    if payload.get("checksum") != _checksum(meta, tensors):
        raise ArtifactError(f"{path}: checksum mismatch, the model file was altered or damaged")
    try:
        return _from_parts(json.loads(meta), tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        problem = " ".join(str(exc).split())[:300]  # one line, even for torch's long errors
        raise ArtifactError(f"{path}: inconsistent model file ({problem})") from exc


def _read(path: Path) -> object:
    _check_container(path)
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
    slow = tensors["standardizer.slow"].numpy().astype(bool)
    if slow.shape != (len(channels),):
        raise ValueError("slow-channel flags do not match the channels")
    level_scale = tensors["detector.level_scale"].numpy().astype(np.float64)
    ok = np.isfinite(level_scale) & (level_scale > 0)
    if level_scale.shape != (len(channels),) or not ok.all():
        raise ValueError("level-detector scales do not match the channels")
    artifact = Artifact(
        config=config,
        window=window,
        channels=channels,
        preprocess=PreprocessConfig(**meta["preprocess"]),
        standardizer=Standardizer(mean, scale, slow),
        threshold=float(meta["threshold"]),
        state=state,
        references=_references(meta["references"]),
        level_scale=level_scale,
        training=meta.get("training", {}),
    )
    _check_content(artifact)
    artifact.build()
    return artifact


# A checksum proves integrity, not origin: anyone can write a file whose checksum is right.
# So nothing a file declares is trusted before it is checked against what the file holds.


def _check_container(path: Path) -> None:
    """Torch stores entries uncompressed: a compressed entry, or one declared larger than the
    file, would be inflated into memory before anything else is checked (a zip bomb)."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArtifactError(f"{path}: truncated or corrupt model file (not a whole zip)") from exc
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size > size:
            raise ArtifactError(
                f"{path}: refused, entry {entry.filename!r} is compressed or larger than the file"
            )


def _check_tensors(path: Path, tensors: dict) -> None:
    """Plain tensors whose data is in the file: a stride-0 view of one number can declare
    gigabytes, which checksumming or scoring would then allocate."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ArtifactError(f"{path}: model file entry {name!r} is not a tensor")
        plain = tensor.layout == torch.strided and tensor.device.type == "cpu"
        if not plain or tensor.is_quantized or tensor.dtype in (torch.bfloat16,):
            raise ArtifactError(f"{path}: refused, tensor {name!r} is not a plain tensor")
        held = tensor.untyped_storage().nbytes()
        if not tensor.is_contiguous() or tensor.numel() * tensor.element_size() > held:
            raise ArtifactError(f"{path}: refused, tensor {name!r} declares more than it holds")


def _check_content(artifact: Artifact) -> None:
    """Shapes the config declares, finite numbers, a usable threshold and preprocessing;
    raises ValueError before the network is built (a declared size could be huge)."""
    with torch.device("meta"):  # shapes only: nothing allocated
        expected = {k: tuple(v.shape) for k, v in Autoencoder(artifact.config).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in artifact.state.items()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise ValueError(f"weights {', '.join(wrong[:4])} do not match the declared layer sizes")
    if not all(torch.isfinite(t).all() for t in artifact.state.values() if t.is_floating_point()):
        raise ValueError("weights hold NaN or infinity")
    stats = (artifact.standardizer.mean, artifact.standardizer.scale)
    if not all(np.isfinite(s).all() for s in stats):
        raise ValueError("normalisation statistics hold NaN or infinity")
    if not (np.isfinite(artifact.threshold) and artifact.threshold > 0):
        raise ValueError(f"threshold {artifact.threshold} is not a positive number")
    p = artifact.preprocess
    if p.denoise not in ("none", "mean", "median"):
        raise ValueError(f"unknown denoising {p.denoise!r}")
    if type(p.kernel) is not int or not 1 <= p.kernel <= artifact.window:
        raise ValueError(f"denoising kernel {p.kernel!r} is not 1 to the window's length")
    if type(p.max_gap) is not int or p.max_gap < 0:
        raise ValueError(f"max_gap {p.max_gap!r} is not a count of samples")


def _references(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ValueError("detector references are not a mapping")
    refs = {str(k): float(v) for k, v in raw.items()}
    if sorted(refs) != sorted(DETECTORS):
        raise ValueError(f"detector references {sorted(refs)}, expected {list(DETECTORS)}")
    if not all(np.isfinite(v) and v > 0 for v in refs.values()):
        raise ValueError("detector references must be positive")
    return refs


def _checksum(meta: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
