import numpy as np
import pytest
import torch

from model import artifact as artifact_io
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
