"""The contract every architecture keeps, parametrised: an architecture joins by being listed
once in tests/synthetic.py's FAMILY.

Each trains on a small synthetic set, reproducibly, round-trips through the model file,
scores the same before and after (batch and one by one), refuses a tampered file, and its
network alone separates an injected fault from normal windows.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from cli.main import main
from model import artifact as artifact_io
from model.errors import ArtifactError
from model.networks import ARCHITECTURES
from model.preprocessing import sliding_windows
from model.scoring import Scorer
from model.training import train
from tests.synthetic import FAMILY, family_model, normal_values, recording


def test_every_architecture_is_in_the_contract_suite():
    assert list(FAMILY) == list(ARCHITECTURES)


@pytest.fixture(params=list(FAMILY), scope="module")
def architecture(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def saved(architecture, tmp_path_factory):
    path = tmp_path_factory.mktemp(architecture) / "model.fwm"
    artifact_io.save(family_model(architecture).artifact, path)
    return path


def test_it_trains_to_the_declared_architecture(architecture):
    artifact = family_model(architecture).artifact
    assert artifact.architecture == architecture
    net = artifact.build()
    assert isinstance(net, ARCHITECTURES[architecture][1])
    assert sum(p.numel() for p in net.parameters()) == artifact.summary()["parameters"]


def test_the_same_seed_gives_the_same_model(architecture):
    again = train([recording(normal_values(600))], FAMILY[architecture]).artifact
    first = family_model(architecture).artifact
    assert again.version == first.version
    assert all(torch.equal(t, again.state[k]) for k, t in first.state.items())


def test_round_trip_scores_identically_batch_and_one_by_one(architecture, saved):
    original = Scorer(family_model(architecture).artifact)
    loaded = Scorer.load(saved)
    assert loaded.version == original.version and loaded.architecture == architecture
    windows = sliding_windows(normal_values(80, seed=5), original.window)
    before, after = original.score(windows), loaded.score(windows)
    assert np.array_equal(before.score, after.score)
    assert np.array_equal(before.channel_share, after.channel_share)
    assert np.isfinite(after.score).all()
    single = np.array([loaded.score(w[None]).score[0] for w in windows])
    np.testing.assert_allclose(after.score, single, rtol=1e-5, atol=1e-9)


def test_a_tampered_file_is_refused(architecture, saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    name = next(k for k in payload["tensors"] if k.startswith("model."))
    payload["tensors"][name] = payload["tensors"][name] + 1e-3
    torch.save(payload, tmp_path / "tampered.fwm")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        artifact_io.load(tmp_path / "tampered.fwm")


def test_its_network_alone_separates_an_injected_fault(architecture):
    config = dataclasses.replace(FAMILY[architecture], detectors=("autoencoder",))
    scorer = Scorer(train([recording(normal_values(600))], config).artifact)
    values = normal_values(100, seed=6)
    faulty = values.copy()
    faulty[:, 1] += 1.0  # pressure jumps by 20 normal amplitudes
    normal = scorer.score(sliding_windows(values, scorer.window))
    fault = scorer.score(sliding_windows(faulty, scorer.window))
    assert fault.score.min() > max(normal.score.max(), scorer.threshold)
    assert fault.top_channels(0, scorer.channels, n=1)[0]["channel"] == "pressure"
    assert set(fault.detector(i) for i in range(len(fault.score))) == {"autoencoder"}


def test_inspect_reports_the_architecture_and_its_layers(architecture, saved, capsys):
    assert main(["inspect", str(saved), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == architecture
    assert sum(layer["parameters"] for layer in info["layers"]) == info["parameters"] > 0
    assert info["network"] == family_model(architecture).artifact.config.to_dict()
    assert main(["inspect", str(saved)]) == 0
    text = capsys.readouterr().out
    assert architecture in text and info["layers"][0]["name"] in text
