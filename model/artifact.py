"""The one model file: network, preprocessing, detectors, threshold and metadata, checksummed.

Layout (a torch zip read with `weights_only=True`, so loading never runs code):
    {"format": "faultwatch-model", "format_version": 3, "meta": <JSON text>,
     "tensors": {name: tensor}, "checksum": sha256 of meta + every tensor's name, dtype,
     shape and bytes}
meta: architecture and its hyper-parameters, window, channels, preprocessing, threshold,
detectors in fusion order with their references, machine patterns, training metadata.
tensors: `model.<parameter>` (the network), `standardizer.{mean,scale,slow}`,
`detector.<name>.<array>` (each detector's fitted arrays), `calibration.score_quantiles`
(quantiles 0, 1, ..., 100 % of the model's score on held-out normal windows).
The version is the checksum's first 12 hex digits: it changes whenever the content does.
Any other format is refused rather than misscored.
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
from torch import nn

from model import machines as machine_patterns
from model import networks
from model.detectors import DETECTORS, Detector
from model.errors import ArtifactError
from model.networks import NetworkConfig
from model.preprocessing import PreprocessConfig, Standardizer

FORMAT = "faultwatch-model"
FORMAT_VERSION = 3
QUANTILES = 101  # the stored score distribution: its 0, 1, ..., 100 % quantiles
STANDARDIZER = ("standardizer.mean", "standardizer.scale", "standardizer.slow")
SCORE_QUANTILES = "calibration.score_quantiles"


@dataclass(frozen=True)
class Artifact:
    """Everything needed to score a window exactly as at training time."""

    config: NetworkConfig
    window: int
    channels: list[str]
    preprocess: PreprocessConfig
    standardizer: Standardizer
    threshold: float
    state: dict[str, torch.Tensor]
    detectors: tuple[Detector, ...]  # in fusion order: the first leads a tie
    references: dict[str, float]  # detector -> its normal scale (held-out q99)
    score_quantiles: np.ndarray  # (QUANTILES,) the score on held-out normal windows
    architecture: str = "dense"
    machines: tuple[str, ...] = machine_patterns.ALL
    training: dict = field(default_factory=dict)
    # Seconds between two rows of the training data (their median step): the grid readings
    # are assembled on and the unit of the episode rules. None: the data had no usable times.
    sampling_interval: float | None = None

    @property
    def version(self) -> str:
        return _checksum(self._meta_json(), self._tensors())[:12]

    def build(self) -> nn.Module:
        net = networks.build(self.architecture, self.config)
        net.load_state_dict(self.state)
        return net.eval()

    def summary(self) -> dict:
        """The fields `inspect --json` prints."""
        return {
            "version": self.version,
            "architecture": self.architecture,
            "parameters": sum(t.numel() for t in self.state.values()),
            "input_dim": self.config.input_dim,
            "window": self.window,
            "channels": self.channels,
            "threshold": self.threshold,
            "network": self.config.to_dict(),
            "layers": networks.layers(self.state),
            "detectors": self._detector_meta(),
            "machines": list(self.machines),
            "sampling_interval": self.sampling_interval,
            "slow_channels": [
                c for c, s in zip(self.channels, self.standardizer.slow, strict=True) if s
            ],
            "preprocessing": self.preprocess.to_dict(),
            "score_quantiles": [float(q) for q in self.score_quantiles],
            "training": self.training,
        }

    def _detector_meta(self) -> list[dict]:
        return [{"name": d.name, "reference": self.references[d.name]} for d in self.detectors]

    def _meta_json(self) -> str:
        meta = {
            "architecture": self.architecture,
            "config": self.config.to_dict(),
            "window": self.window,
            "channels": self.channels,
            "preprocess": self.preprocess.to_dict(),
            "threshold": self.threshold,
            "detectors": self._detector_meta(),
            "machines": list(self.machines),
            "training": self.training,
        }
        if self.sampling_interval is not None:  # absent in files trained before it was stored
            meta["sampling_interval"] = self.sampling_interval
        return json.dumps(meta, sort_keys=True)

    def _tensors(self) -> dict[str, torch.Tensor]:
        s = self.standardizer
        tensors = {f"model.{k}": v.detach().cpu() for k, v in self.state.items()}
        tensors |= {
            "standardizer.mean": torch.from_numpy(s.mean.copy()),
            "standardizer.scale": torch.from_numpy(s.scale.copy()),
            "standardizer.slow": torch.from_numpy(s.slow.astype(np.uint8)),
            SCORE_QUANTILES: torch.from_numpy(np.asarray(self.score_quantiles, np.float64)),
        }
        for detector in self.detectors:
            for name, array in detector.arrays().items():
                tensors[f"detector.{detector.name}.{name}"] = torch.from_numpy(array.copy())
        return tensors


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
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: model format {printable(version)[:20]} is not supported (this faultwatch "
            f"reads format {FORMAT_VERSION}): train the model again"
        )
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
    architecture = meta["architecture"]
    if not isinstance(architecture, str):
        raise ValueError("the architecture is not a name")
    config = networks.config_from_dict(architecture, meta["config"])
    channels = [str(c) for c in meta["channels"]]
    window = int(meta["window"])
    config.check(window, len(channels))
    _check_names(tensors, meta["detectors"])
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    mean = tensors["standardizer.mean"].numpy().astype(np.float64)
    scale = tensors["standardizer.scale"].numpy().astype(np.float64)
    if mean.shape != (len(channels),) or scale.shape != (len(channels),) or (scale <= 0).any():
        raise ValueError("normalisation statistics do not match the channels")
    slow = tensors["standardizer.slow"].numpy().astype(bool)
    if slow.shape != (len(channels),):
        raise ValueError("slow-channel flags do not match the channels")
    detectors, references = _detectors(meta["detectors"], tensors, len(channels))
    artifact = Artifact(
        config=config,
        window=window,
        channels=channels,
        preprocess=PreprocessConfig(**meta["preprocess"]),
        standardizer=Standardizer(mean, scale, slow),
        threshold=float(meta["threshold"]),
        state=state,
        detectors=detectors,
        references=references,
        score_quantiles=_score_quantiles(tensors[SCORE_QUANTILES]),
        architecture=architecture,
        machines=machine_patterns.check(meta["machines"]),
        training=meta.get("training", {}),
        sampling_interval=_interval(meta.get("sampling_interval")),
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
        if not isinstance(name, str):
            raise ArtifactError(f"{path}: model file entry {printable(name)[:40]} is not named")
        if not isinstance(tensor, torch.Tensor):
            raise ArtifactError(f"{path}: model file entry {name!r} is not a tensor")
        plain = tensor.layout == torch.strided and tensor.device.type == "cpu"
        if not plain or tensor.is_quantized or tensor.dtype in (torch.bfloat16,):
            raise ArtifactError(f"{path}: refused, tensor {name!r} is not a plain tensor")
        held = tensor.untyped_storage().nbytes()
        if not tensor.is_contiguous() or tensor.numel() * tensor.element_size() > held:
            raise ArtifactError(f"{path}: refused, tensor {name!r} declares more than it holds")


def _check_content(artifact: Artifact) -> None:
    """Shapes and dtypes the architecture declares, finite numbers, a usable threshold and
    preprocessing; raises ValueError before the network is built (a declared size could be
    huge)."""
    with torch.device("meta"):  # shapes only: nothing allocated
        net = networks.build(artifact.architecture, artifact.config)
        expected = {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in artifact.state.items()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise ValueError(
            f"weights {', '.join(wrong[:4])} do not match the declared {artifact.architecture} "
            "layers"
        )
    if not all(torch.isfinite(t).all() for t in artifact.state.values()):
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


def _check_names(tensors: dict[str, torch.Tensor], detectors: object) -> None:
    """Every entry belongs to a part this format knows: nothing rides along unchecked."""
    entries = detectors if isinstance(detectors, list) else []
    listed = {d.get("name") for d in entries if isinstance(d, dict)}
    for name in tensors:
        part = name.split(".")
        known = (
            part[0] == "model"
            or name in STANDARDIZER
            or name == SCORE_QUANTILES
            or (part[0] == "detector" and len(part) >= 3 and part[1] in listed)
        )
        if not known:
            raise ValueError(f"unexpected entry {printable(name)[:60]!r}")
    missing = [n for n in (*STANDARDIZER, SCORE_QUANTILES) if n not in tensors]
    if missing:
        raise ValueError(f"{missing[0]} is missing")


def _detectors(
    raw: object, tensors: dict[str, torch.Tensor], channels: int
) -> tuple[tuple[Detector, ...], dict[str, float]]:
    """The stored detectors in fusion order, each rebuilt from its own arrays."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("the detectors are not a non-empty list")
    detectors, references = [], {}
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) != {"name", "reference"}:
            raise ValueError("a detector entry is not {name, reference}")
        name, reference = entry["name"], entry["reference"]
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {printable(name)[:40]!r}")
        if name in references:
            raise ValueError(f"detector {name} is listed twice")
        if type(reference) not in (int, float) or not (np.isfinite(reference) and reference > 0):
            raise ValueError(f"detector {name} reference {reference!r} is not a positive number")
        prefix = f"detector.{name}."
        arrays = {
            k.removeprefix(prefix): v.numpy() for k, v in tensors.items() if k.startswith(prefix)
        }
        detectors.append(DETECTORS[name].from_arrays(arrays, channels))
        references[name] = float(reference)
    return tuple(detectors), references


def _interval(value: object) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not (np.isfinite(value) and value > 0):
        raise ValueError(f"sampling interval {printable(value)[:40]} is not a positive number")
    return float(value)


def _score_quantiles(tensor: torch.Tensor) -> np.ndarray:
    quantiles = tensor.numpy().astype(np.float64)
    if quantiles.shape != (QUANTILES,) or not np.isfinite(quantiles).all():
        raise ValueError(f"the score distribution is not {QUANTILES} finite quantiles")
    if (np.diff(quantiles) < 0).any() or quantiles[0] < 0:
        raise ValueError("the score distribution's quantiles are not ascending from >= 0")
    return quantiles


def _checksum(meta: str, tensors: dict[str, torch.Tensor]) -> str:
    """Over meta and, per tensor, a header (name, dtype, shape, size) then its bytes: the same
    bytes read as another dtype or shape are another model."""
    digest = hashlib.sha256(meta.encode("utf-8", "surrogatepass"))  # any str a file can hold
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        data = tensor.numpy().tobytes()
        header = [name, str(tensor.dtype), list(tensor.shape), len(data)]
        digest.update(json.dumps(header).encode())
        digest.update(data)
    return digest.hexdigest()


def printable(value: object) -> str:
    """A file's text made safe for one line on a terminal (no escape codes, no newlines)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
