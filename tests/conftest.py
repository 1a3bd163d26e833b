"""Shared fixtures: one Kafka broker per session, small trained models, the SKAB recordings."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo.broker import EmbeddedBroker, create_topics
from model import artifact as artifact_io
from model.recording import read_recording
from model.scoring import Scorer
from model.training import TrainConfig, train
from tests.helpers import unique
from tests.synthetic import tiny_model

ROOT = Path(__file__).resolve().parents[1]
SKAB_FILE = "valve1/1.csv"


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """FAULTWATCH_TEST_BOOTSTRAP, else Kafka in Docker when a daemon answers, else Tansu."""
    if address := os.environ.get("FAULTWATCH_TEST_BOOTSTRAP"):
        yield address
    elif _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap


def _docker_answers() -> bool:
    """Without a daemon, testcontainers fails in its constructor: ask Docker first."""
    try:
        import docker

        return bool(docker.from_env(timeout=2).ping())
    except Exception:  # no docker package, no socket, no permission: no Docker
        return False


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client_name(request: pytest.FixtureRequest) -> str:
    """Each client library behind the seam (FAULTWATCH_KAFKA_CLIENT): a test runs with both."""
    return request.param


@pytest.fixture
def make_topic(bootstrap: str) -> Callable[..., str]:
    """Create a uniquely named topic: make_topic("in", partitions=2) -> "in-1a2b3c4d"."""

    def make(prefix: str, partitions: int = 1) -> str:
        name = unique(prefix)
        create_topics(bootstrap, {name: partitions})
        return name

    return make


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lead's tiny synthetic model (window 10, 4 channels) as a model file."""
    path = tmp_path_factory.mktemp("models") / "tiny.fwm"
    artifact_io.save(tiny_model().artifact, path)
    return path


@pytest.fixture(scope="session")
def tiny_scorer(tiny_model_path: Path) -> Scorer:
    """That model loaded, as the worker loads it (shared: scoring does not change it)."""
    return Scorer.load(tiny_model_path)


@pytest.fixture(scope="session")
def skab_dir() -> Path:
    path = Path(os.environ.get("FAULTWATCH_SKAB_DIR", ROOT.parent / "shared" / "data" / "skab"))
    if not (path / "valve1").is_dir():
        pytest.skip(
            f"SKAB data not found at {path}: get SKAB v0.9 (Kaggle, DOI "
            "10.34740/KAGGLE/DSV/1693952) and set FAULTWATCH_SKAB_DIR"
        )
    return path


@pytest.fixture(scope="session")
def skab_model_path(skab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model on the first 400 rows of one valve1 file (the benchmark's protocol)."""
    config = TrainConfig(
        window=20, train_rows=400, epochs=30, seed=0, hidden=64, bottleneck=8, patience=5
    )
    result = train([read_recording(skab_dir / SKAB_FILE)], config)
    path = tmp_path_factory.mktemp("models") / "valve1.fwm"
    artifact_io.save(result.artifact, path)
    return path
