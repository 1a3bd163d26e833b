import numpy as np
import pytest
import torch

from model import artifact as artifact_io
from model.detectors import DEFAULT_DETECTORS
from model.errors import ArtifactError
from model.preprocessing import sliding_windows
from model.scoring import Scorer
from tests.synthetic import normal_values, tiny_model


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.pt"
    artifact_io.save(tiny_model().artifact, path)
    return path


def test_round_trip_gives_identical_scores_and_version(model_path):
    original = tiny_model().artifact
    loaded = artifact_io.load(model_path)
    windows = sliding_windows(normal_values(80, seed=5), original.window)
    assert np.array_equal(
        Scorer(original).score(windows).score, Scorer(loaded).score(windows).score
    )
    assert loaded.version == original.version
    assert loaded.channels == original.channels and loaded.window == original.window


def test_truncated_file_is_refused(model_path):
    data = model_path.read_bytes()
    model_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        artifact_io.load(model_path)


def test_tampered_weights_are_refused(model_path):
    artifact = tiny_model().artifact
    state = {k: v.clone() for k, v in artifact.state.items()}
    name = next(iter(state))
    state[name][0] += 1.0
    payload = torch.load(model_path, weights_only=True)
    payload["tensors"][f"model.{name}"] = state[name]
    torch.save(payload, model_path)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        artifact_io.load(model_path)


def test_tampered_threshold_is_refused(model_path):
    payload = torch.load(model_path, weights_only=True)
    payload["meta"] = payload["meta"].replace('"threshold": ', '"threshold": 1')
    torch.save(payload, model_path)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        artifact_io.load(model_path)


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="no such model file"):
        artifact_io.load(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(ArtifactError):
        artifact_io.load(junk)


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": "faultwatch-model", "x": Payload()}, evil)
    with pytest.raises(ArtifactError, match="refused"):
        artifact_io.load(evil)
    assert not marker.exists()


def test_the_checksum_covers_each_tensor_s_dtype_and_shape():
    weights = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    meta = "{}"
    digest = artifact_io._checksum(meta, {"w": weights})
    assert artifact_io._checksum(meta, {"w": weights.view(torch.int32)}) != digest
    assert artifact_io._checksum(meta, {"w": weights.reshape(4, 3)}) != digest
    assert artifact_io._checksum(meta, {"w": weights.clone()}) == digest


def test_weights_reinterpreted_as_another_dtype_fail_the_checksum(model_path):
    payload = torch.load(model_path, weights_only=True)
    name = "model.encoder.0.weight"
    payload["tensors"][name] = payload["tensors"][name].view(torch.int32)  # same bytes
    torch.save(payload, model_path)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        artifact_io.load(model_path)


@pytest.mark.parametrize("version", [1, 2, "3", None])
def test_other_format_versions_are_refused_with_one_line(model_path, version):
    payload = torch.load(model_path, weights_only=True)
    payload["format_version"] = version
    torch.save(payload, model_path)
    with pytest.raises(ArtifactError, match=f"model format {version} is not supported") as caught:
        artifact_io.load(model_path)
    assert "\n" not in str(caught.value) and "format 3" in str(caught.value)


def test_machines_and_the_score_distribution_travel_in_the_file(tmp_path):
    from dataclasses import replace

    result = tiny_model()
    artifact = replace(result.artifact, machines=("pump-*", "p-1?"))
    artifact_io.save(artifact, tmp_path / "m.fwm")
    loaded = artifact_io.load(tmp_path / "m.fwm")
    assert loaded.machines == ("pump-*", "p-1?") and loaded.version == artifact.version
    assert loaded.version != result.artifact.version  # the patterns are part of the content
    quantiles = loaded.score_quantiles
    assert quantiles.shape == (artifact_io.QUANTILES,) and (np.diff(quantiles) >= 0).all()
    assert quantiles[0] == result.holdout_scores.min()
    assert quantiles[-1] == result.holdout_scores.max()
    assert np.isclose(quantiles[50], np.median(result.holdout_scores))
    assert tuple(d.name for d in loaded.detectors) == DEFAULT_DETECTORS
    assert loaded.references == result.artifact.references
