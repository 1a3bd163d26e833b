"""Hostile model files: refused with one line, before they can run code or eat memory."""

# ...or blind the worker. The checksum proves integrity, not origin: anyone can write a file
# whose checksum is right, so everything a file declares is checked against what it holds.

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pickle
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cli import main as cli
from model import artifact as artifact_io
from model.attention import AttentionConfig
from model.autoencoder import AutoencoderConfig
from model.conv import ConvConfig
from model.detectors import (
    DETECTORS,
    Detector,
    Iqr,
    IsolationForest,
    Level,
    PcaQ,
    PcaT2,
    Reconstruction,
    Stuck,
)
from model.errors import ArtifactError
from model.forest import Forest
from model.preprocessing import PreprocessConfig, Standardizer, sliding_windows
from model.scoring import Scorer
from model.vae import VaeConfig
from tests.helpers import worker_env
from tests.synthetic import normal_values, tiny_model

ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this runs a shell command: the classic payload of a malicious model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps({"format": "faultwatch-model", "payload": RunsCode(marker)}, protocol)


def swap_pickle(model: Path, marker: Path, out: Path) -> Path:
    """A real model file whose data.pkl is replaced by the payload: same container, same names."""
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = evil_pickle(marker)
            dst.writestr(info, data)
    return out


def raw_pickle(model: Path, marker: Path, out: Path) -> Path:
    out.write_bytes(evil_pickle(marker))
    return out


def text_pickle(model: Path, marker: Path, out: Path) -> Path:
    out.write_bytes(evil_pickle(marker, protocol=0))
    return out


def legacy_torch_file(model: Path, marker: Path, out: Path) -> Path:
    torch.save({"payload": RunsCode(marker)}, out, _use_new_zipfile_serialization=False)
    return out


def whole_module(model: Path, marker: Path, out: Path) -> Path:
    """The usual mistake: torch.save(model) pickles the class, not just the weights."""
    torch.save(tiny_model().artifact.build(), out)
    return out


PAYLOADS: dict[str, Callable[[Path, Path, Path], Path]] = {
    "swapped-data-pkl": swap_pickle,
    "raw-pickle": raw_pickle,
    "text-pickle": text_pickle,
    "legacy-torch-format": legacy_torch_file,
    "whole-module": whole_module,
}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.fwm"
    artifact_io.save(tiny_model().artifact, path)
    return path


def refused(path: Path) -> str:
    """Loading `path` raises ArtifactError; returns its one line, which names the file."""
    with pytest.raises(ArtifactError) as caught:
        artifact_io.load(path)
    line = str(caught.value)
    assert str(path) in line and "\n" not in line
    return line


@pytest.mark.parametrize("make", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_a_file_that_would_run_code_is_refused_and_the_code_never_runs(make, model, tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(evil_pickle(marker))  # the payload is real: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    path = make(model, marker, tmp_path / "evil.fwm")
    refused(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, -22, -1], ids=str)
def test_a_truncated_file_is_refused(model, keep):
    data = model.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else len(data) + keep
    model.write_bytes(data[:cut])
    refused(model)


def saved(tmp_path: Path, name: str = "altered.fwm", **changes) -> Path:
    """The tiny model with some fields changed, saved normally: its checksum is right."""
    path = tmp_path / name
    artifact_io.save(dataclasses.replace(tiny_model().artifact, **changes), path)
    return path


def state_with(change: Callable[[dict[str, torch.Tensor]], None]) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in tiny_model().artifact.state.items()}
    change(state)
    return state


def _transpose_first(state: dict[str, torch.Tensor]) -> None:
    name = next(iter(state))
    state[name] = state[name].T.contiguous()


def _drop_last(state: dict[str, torch.Tensor]) -> None:
    state.pop(list(state)[-1])


def _add_unknown(state: dict[str, torch.Tensor]) -> None:
    state["backdoor.weight"] = torch.zeros(3)


def _nan_weight(state: dict[str, torch.Tensor]) -> None:
    next(iter(state.values()))[0, 0] = float("nan")


def _inf_bias(state: dict[str, torch.Tensor]) -> None:
    [v for k, v in state.items() if k.endswith("bias")][0][0] = float("inf")


def _standardizer(mean: float = 0.0, scale: float = 1.0) -> Standardizer:
    s = tiny_model().artifact.standardizer
    m, sc = s.mean.copy(), s.scale.copy()
    m[0], sc[0] = m[0] + mean, sc[0] * scale
    return dataclasses.replace(s, mean=m, scale=sc)


ARTIFACT = tiny_model().artifact
INCONSISTENT = {
    "window-and-channels-disagree": {"window": ARTIFACT.window + 1},
    "extra-channel": {"channels": [*ARTIFACT.channels, "extra"]},
    "transposed-weights": {"state": state_with(_transpose_first)},
    "missing-weights": {"state": state_with(_drop_last)},
    "unknown-weights": {"state": state_with(_add_unknown)},
    "nan-weight": {"state": state_with(_nan_weight)},
    "inf-bias": {"state": state_with(_inf_bias)},
    "nan-mean": {"standardizer": _standardizer(mean=float("nan"))},
    "nan-scale": {"standardizer": _standardizer(scale=float("nan"))},
    "inf-scale": {"standardizer": _standardizer(scale=float("inf"))},
    "nan-threshold": {"threshold": float("nan")},
    "inf-threshold": {"threshold": float("inf")},
    "negative-threshold": {"threshold": -1.0},
    "unknown-denoise": {"preprocess": PreprocessConfig(denoise="fourier")},
    "kernel-as-text": {"preprocess": PreprocessConfig(kernel="5")},
    "kernel-beyond-window": {"preprocess": PreprocessConfig(kernel=100_000_000)},
    "negative-kernel": {"preprocess": PreprocessConfig(kernel=-3)},
    # The architecture and its hyper-parameters are checked against the tensors.
    "attention-declared-dense-tensors": {
        "architecture": "attention",
        "config": AttentionConfig(window=ARTIFACT.window, channels=4),
    },
    "conv-declared-dense-tensors": {
        "architecture": "conv",
        "config": ConvConfig(window=ARTIFACT.window, channels=4),
    },
    "unknown-architecture": {"architecture": "lstm"},
    "dense-config-for-vae": {"architecture": "vae"},
    "heads-do-not-divide": {
        "architecture": "attention",
        "config": AttentionConfig(window=ARTIFACT.window, channels=4, d_model=8, heads=3),
    },
    "even-conv-kernel": {
        "architecture": "conv",
        "config": ConvConfig(window=ARTIFACT.window, channels=4, kernel=4),
    },
    "negative-beta": {"architecture": "vae", "config": VaeConfig(input_dim=40, beta=-1.0)},
    "hidden-as-text": {"config": AutoencoderConfig(40, hidden="32", bottleneck=4)},
    "hidden-as-bool": {"config": AutoencoderConfig(40, hidden=True, bottleneck=4)},
    # Detectors: known, each once, positive references, arrays of the right shape.
    "no-detectors": {"detectors": (), "references": {}},
    "detector-twice": {
        "detectors": (Reconstruction(), Reconstruction()),
        "references": {"autoencoder": 1.0},
    },
    "zero-reference": {"references": {**ARTIFACT.references, "level": 0.0}},
    "nan-reference": {"references": {**ARTIFACT.references, "autoencoder": float("nan")}},
    "level-scale-wrong-shape": {
        "detectors": (Reconstruction(), Level(np.ones(5))),
    },
    "level-scale-negative": {
        "detectors": (Reconstruction(), Level(-np.ones(4))),
    },
    # Machines: a non-empty list of printable patterns.
    "no-machines": {"machines": ()},
    "empty-machine-pattern": {"machines": ("pump-*", "")},
    "machine-pattern-with-escape-codes": {"machines": ("pump-\x1b[2J",)},
    # The score distribution: QUANTILES finite numbers, ascending.
    "descending-quantiles": {"score_quantiles": ARTIFACT.score_quantiles[::-1].copy()},
    "nan-quantile": {"score_quantiles": np.full(101, np.nan)},
    "too-few-quantiles": {"score_quantiles": ARTIFACT.score_quantiles[:10].copy()},
}


@pytest.mark.parametrize("changes", INCONSISTENT.values(), ids=INCONSISTENT.keys())
def test_a_file_whose_checksum_is_right_but_whose_content_is_not_is_refused(changes, tmp_path):
    path = saved(tmp_path, **changes)
    line = refused(path)
    assert "checksum mismatch" not in line  # the checksum is right: the content is not


@pytest.mark.parametrize(
    "name", ["standardizer.slow", "detector.level.scale", "calibration.score_quantiles"]
)
def test_a_file_without_its_detector_statistics_is_refused(model, name):
    # Scored without them, level shifts would be misjudged: nothing to fall back on.
    payload = torch.load(model, weights_only=True)
    del payload["tensors"][name]
    payload["checksum"] = artifact_io._checksum(payload["meta"], payload["tensors"])
    torch.save(payload, model)
    assert name in refused(model)


def resealed(model: Path, change: Callable[[dict], None]) -> Path:
    """The model file with its payload changed and its checksum made right again."""
    payload = torch.load(model, weights_only=True)
    change(payload)
    payload["checksum"] = artifact_io._checksum(payload["meta"], payload["tensors"])
    torch.save(payload, model)
    return model


@pytest.mark.parametrize("name", ["backdoor", "detector.level.extra", "detector.iqr.low"])
def test_an_entry_no_part_of_the_model_claims_is_refused(model, name):
    path = resealed(model, lambda payload: payload["tensors"].__setitem__(name, torch.ones(4)))
    assert f"unexpected entry {name}" in refused(path).replace("'", "")


def test_weights_of_another_dtype_are_refused(model):
    # The same bytes read as integers: a checksum over the bytes alone would not see it.
    def reinterpret(payload: dict) -> None:
        name = "model.encoder.0.weight"
        payload["tensors"][name] = payload["tensors"][name].view(torch.int32)

    assert "do not match the declared dense layers" in refused(resealed(model, reinterpret))


def test_the_unaltered_model_loads(model):
    # The control for the tests above: the same path through `saved` loads.
    loaded = artifact_io.load(model)
    assert loaded.version == ARTIFACT.version


def peak_growth_mib(action: Callable[[], object]) -> tuple[float, float]:
    """(MiB the process's peak memory grew, CPU seconds) while running `action` (Linux only)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("measuring peak memory needs Linux's /proc/self/clear_refs")

    def memory(field: str) -> int:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith(field)).split()[1])

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) restarts from the current size
    # CPU seconds, not wall seconds: the work done, whatever else the machine is running.
    before, started = memory("VmRSS"), time.process_time()
    action()
    return (memory("VmHWM") - before) / 1024, time.process_time() - started


HUGE = {
    "dense": AutoencoderConfig(ARTIFACT.config.input_dim, hidden=2_000_000, bottleneck=4),
    "vae": VaeConfig(ARTIFACT.config.input_dim, hidden=2_000_000, bottleneck=4),
    "conv": ConvConfig(ARTIFACT.window, 4, filters=100_000, bottleneck=4),
    "attention": AttentionConfig(ARTIFACT.window, 4, d_model=2_000_000, bottleneck=4),
}


@pytest.mark.parametrize("architecture", HUGE)
def test_huge_declared_layer_sizes_are_refused_before_anything_is_allocated(architecture, tmp_path):
    # Millions of units: gigabytes of weights the file does not hold, were they built.
    path = saved(tmp_path, architecture=architecture, config=HUGE[architecture])
    grew, seconds = peak_growth_mib(lambda: refused(path))
    assert grew < 100 and seconds < 2, (grew, seconds)


def test_a_zip_bomb_is_refused_before_it_is_inflated(model, tmp_path):
    # 256 MiB of zeros deflate to ~250 KiB: torch would inflate the entry into memory.
    bomb = tmp_path / "bomb.fwm"
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info.filename))
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=True) as out:
                zeros = bytes(2**20)
                for _ in range(256):
                    out.write(zeros)
    assert bomb.stat().st_size < 2**20
    grew, seconds = peak_growth_mib(lambda: refused(bomb))
    assert grew < 50 and seconds < 2, (grew, seconds)


def test_an_entry_larger_than_the_file_is_refused(model):
    # A stored entry whose size in the central directory is a lie: 2 GiB in a 14 KB file.
    data = bytearray(model.read_bytes())
    record = data.find(b"PK\x01\x02")  # the central directory's first record: data.pkl
    assert record > 0
    data[record + 24 : record + 28] = (2**31).to_bytes(4, "little")  # its uncompressed size
    model.write_bytes(bytes(data))
    grew, seconds = peak_growth_mib(lambda: refused(model))
    assert grew < 50 and seconds < 2, (grew, seconds)


def with_tensor(model: Path, name: str, tensor: object) -> Path:
    """The model file with one entry of its tensors replaced (its checksum now wrong)."""
    payload = torch.load(model, weights_only=True)
    payload["tensors"][name] = tensor
    torch.save(payload, model)
    return model


TENSOR_TRICKS = {
    # One stored number viewed as 128 Mi of them (stride 0): checksumming it copies 1 GiB.
    "stride-0-view": torch.zeros(1).expand(2**27),
    "bfloat16": torch.zeros(32, 40, dtype=torch.bfloat16),  # numpy cannot read it
    "sparse": torch.zeros(32, 40).to_sparse(),
    "not-a-tensor": [1.0, 2.0],
}


@pytest.mark.parametrize("tensor", TENSOR_TRICKS.values(), ids=TENSOR_TRICKS.keys())
def test_a_tensor_that_is_not_plain_data_is_refused_cheaply(model, tensor):
    path = with_tensor(model, "model.encoder.0.weight", tensor)
    grew, seconds = peak_growth_mib(lambda: refused(path))
    assert grew < 50 and seconds < 2, (grew, seconds)


# The commands: `inspect` and `run` refuse the same files with one line and exit 1.


@pytest.fixture
def in_process(monkeypatch, capsys):
    """`faultwatch ARGS` in this process with a clean FAULTWATCH_* environment."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level

    def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
        for name in [n for n in os.environ if n.startswith("FAULTWATCH_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    root.handlers[:], root.level = saved_handlers, saved_level


HOSTILE = {
    "payload": lambda model, tmp, marker: swap_pickle(model, marker, tmp / "evil.fwm"),
    "truncated": lambda model, tmp, marker: _truncated(model),
    "nan-weights": lambda model, tmp, marker: saved(tmp, state=state_with(_nan_weight)),
    "transposed": lambda model, tmp, marker: saved(tmp, state=state_with(_transpose_first)),
}


def _truncated(model: Path) -> Path:
    model.write_bytes(model.read_bytes()[:-100])
    return model


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_inspect_and_run_refuse_a_hostile_model_with_one_line(make, model, tmp_path, in_process):
    marker = tmp_path / "pwned"
    path = make(model, tmp_path, marker)
    code, out, err = in_process({}, "inspect", str(path), "--json")
    assert (code, out) == (1, "")
    assert len(err.strip().splitlines()) == 1 and str(path) in err
    env = {"FAULTWATCH_MODEL_PATH": str(path), "FAULTWATCH_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    code, _, err = in_process(env, "run")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and str(path) in lines[0], err
    assert "Traceback" not in err and not marker.exists()


def test_the_worker_process_refuses_a_payload_model_and_never_runs_it(model, tmp_path):
    marker = tmp_path / "pwned"
    path = swap_pickle(model, marker, tmp_path / "evil.fwm")
    env = worker_env("127.0.0.1:9", path)
    run = subprocess.run(
        [sys.executable, "-m", "cli", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "ERROR" in lines[0] and str(path) in lines[0], run.stderr
    assert not marker.exists()


# The fused detectors' arrays: every shape, number and tree link is checked before use.


@functools.cache
def fitted() -> dict[str, Detector]:
    """Each detector fitted on the tiny model's normal windows."""
    scorer = Scorer(ARTIFACT)
    windows = sliding_windows(normal_values(300, seed=4), ARTIFACT.window)
    batch = scorer.batch(windows, error=True)
    return {name: DETECTORS[name].fit(batch) for name in DETECTORS}


def with_detector(tmp_path: Path, detector: Detector) -> Path:
    """The tiny model with `detector` fused last (reference 1), saved with a right checksum."""
    kept = tuple(d for d in ARTIFACT.detectors if d.name != detector.name)
    references = {d.name: ARTIFACT.references[d.name] for d in kept} | {detector.name: 1.0}
    return saved(tmp_path, detectors=(*kept, detector), references=references)


def forest_with(**changes: object) -> IsolationForest:
    """The fitted isolation forest with some of its tree arrays changed (not re-checked)."""
    original = fitted()["iforest"]
    trees = {k: v for k, v in vars(original.forest).items()}
    for name, change in changes.items():
        trees[name] = change(trees[name].copy()) if callable(change) else change
    return IsolationForest(Forest(**trees), original.center, original.spread)


def _set(index: tuple, value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(array: np.ndarray) -> np.ndarray:
        array[index] = value
        return array

    return change


def _first_inner() -> int:
    return int(np.flatnonzero(fitted()["iforest"].forest.feature[0] >= 0)[1])


def _chain(nodes: int) -> dict[str, np.ndarray]:
    """One tree that is a chain of `nodes` - 1 splits, each with a shared leaf on its right."""
    feature = np.zeros((1, nodes), np.int32)
    feature[0, -1] = -1
    left = np.arange(1, nodes + 1, dtype=np.int32)[None, :]
    left[0, -1] = -1
    right = np.full((1, nodes), nodes - 1, np.int32)
    right[0, -1] = -1
    zeros = np.zeros((1, nodes))
    return {"feature": feature, "left": left, "right": right, "threshold": zeros, "depth": zeros}


HOSTILE_DETECTORS = {
    "iqr-zero-range": lambda: Iqr(np.zeros(4), np.zeros(4)),
    "iqr-wrong-shape": lambda: Iqr(np.zeros(5), np.ones(5)),
    "iqr-nan-median": lambda: Iqr(np.full(4, np.nan), np.ones(4)),
    "pca-nan-loadings": lambda: PcaQ(np.full((4, 2), np.nan), np.ones(2)),
    "pca-more-components-than-channels": lambda: PcaQ(np.ones((4, 5)), np.ones(5)),
    "pca-variances-of-another-length": lambda: PcaT2(np.ones((4, 2)), np.ones(3)),
    "pca-negative-variance": lambda: PcaT2(np.ones((4, 2)), -np.ones(2)),
    "stuck-negative-spread": lambda: Stuck(-np.ones(4)),
    "stuck-infinite-spread": lambda: Stuck(np.full(4, np.inf)),
    "forest-child-outside-the-tree": lambda: forest_with(left=_set((0, 0), 1_000_000)),
    "forest-child-negative": lambda: forest_with(right=_set((0, 0), -7)),
    "forest-node-is-its-own-child": lambda: forest_with(left=_set((0, 0), 0)),
    "forest-cycle-back-to-the-root": lambda: forest_with(left=_set((0, _first_inner()), 0)),
    "forest-leaf-with-children": lambda: forest_with(
        left=_set((0, int(np.flatnonzero(fitted()["iforest"].forest.feature[0] < 0)[0])), 1)
    ),
    "forest-feature-out-of-range": lambda: forest_with(feature=_set((0, 0), 8)),
    "forest-nan-threshold": lambda: forest_with(threshold=_set((0, 0), np.nan)),
    "forest-negative-path": lambda: forest_with(depth=_set((0, -1), -1.0)),
    "forest-non-integer-children": lambda: forest_with(left=lambda a: a.astype(np.float64) + 0.5),
    "forest-shapes-disagree": lambda: forest_with(threshold=np.zeros((3, 3))),
    "forest-deeper-than-allowed": lambda: forest_with(**_chain(100)),
    "forest-too-many-trees": lambda: forest_with(
        **{k: np.repeat(v[:, :1], 2000, axis=0) for k, v in _chain(1).items()}
    ),
    "forest-sample-not-a-count": lambda: forest_with(sample=10**9),
}


@pytest.mark.parametrize("make", HOSTILE_DETECTORS.values(), ids=HOSTILE_DETECTORS.keys())
def test_a_detector_whose_arrays_are_inconsistent_is_refused_before_use(make, tmp_path):
    path = with_detector(tmp_path, make())
    grew, seconds = peak_growth_mib(lambda: refused(path))
    assert "checksum mismatch" not in refused(path)
    assert grew < 50 and seconds < 2, (grew, seconds)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_fitted_detector_travels_in_the_file(name, tmp_path):
    # The control: the same route with the untouched detector loads and scores the same.
    path = with_detector(tmp_path, fitted()[name])
    loaded = Scorer.load(path)
    windows = sliding_windows(normal_values(60, seed=8), ARTIFACT.window)
    expected = Scorer(artifact_io.load(path)).detector_scores(windows)[name]
    np.testing.assert_array_equal(loaded.detector_scores(windows)[name], expected)
    assert [d.name for d in loaded.detectors][-1] == name


def _unnamed_tensor(payload: dict) -> None:
    payload["tensors"][7] = torch.zeros(1)  # names are sorted for the checksum: 7 < "a" fails


def _lone_surrogate(payload: dict) -> None:
    payload["meta"] += "\ud800"  # a str pickle holds but UTF-8 cannot encode


@pytest.mark.parametrize("change", [_unnamed_tensor, _lone_surrogate], ids=lambda f: f.__name__)
def test_a_payload_the_checksum_cannot_read_is_refused_not_raised(model, change):
    payload = torch.load(model, weights_only=True)
    change(payload)
    torch.save(payload, model)
    refused(model)
