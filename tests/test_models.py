"""The model store: a file or a directory of model files, re-read without a restart."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from model import artifact as artifact_io
from model.artifact import Artifact
from model.scoring import Scorer
from tests.synthetic import press_model, tiny_model
from worker.errors import ModelError
from worker.models import ModelStore


def pump(**changes) -> Artifact:
    return dataclasses.replace(tiny_model().artifact, **({"machines": ("pump-*",)} | changes))


def write(path: Path, artifact: Artifact) -> Path:
    """Write and rename, as a deployment should."""
    artifact_io.save(artifact, path.with_name("." + path.name + ".tmp"))
    os.replace(path.with_name("." + path.name + ".tmp"), path)
    return path


@pytest.fixture
def directory(tmp_path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    write(models / "pump.fwm", pump())
    write(models / "press.fwm", press_model().artifact)
    (models / "README.txt").write_text("not a model")  # other files are ignored
    artifact_io.save(pump(machines=("*",)), models / ".hidden.fwm")  # so are hidden ones
    return models


def test_a_directory_routes_each_machine_to_its_model(directory):
    routes = ModelStore(directory).open()
    assert sorted(m.name for m in routes.models) == ["press", "pump"]
    assert routes.served("pump-3").scorer.window == 10
    assert routes.served("press-1").scorer.window == 6
    assert routes.served("compressor-1") is None


def test_a_replaced_file_is_served_after_a_refresh_and_nothing_else_changes(directory):
    store = ModelStore(directory)
    old = store.open().served("pump-1")
    assert store.refresh().routes is None  # nothing changed
    write(directory / "pump.fwm", pump(training={"retrained": True}))
    refresh = store.refresh()
    assert refresh.failures == []
    new = refresh.routes.served("pump-1")
    assert new.version != old.version and new.name == "pump"
    assert refresh.routes.served("press-1") is store.routes.served("press-1")
    shutil.copy(directory / "pump.fwm", directory / "copy")  # the same content, a new inode
    os.replace(directory / "copy", directory / "pump.fwm")
    assert store.refresh().routes is None  # the same model: no swap, its drift goes on


def test_a_file_that_fails_to_load_never_replaces_the_one_in_service(directory):
    store = ModelStore(directory)
    served = store.open().served("pump-1")
    good = (directory / "pump.fwm").read_bytes()
    (directory / "pump.fwm").write_bytes(good[: len(good) // 2])  # written in place, half-way
    refresh = store.refresh()
    assert refresh.routes is None and len(refresh.failures) == 1
    assert "pump.fwm" in refresh.failures[0]
    assert store.routes.served("pump-1") is served
    assert store.refresh().failures == []  # said once, until the file changes
    write(directory / "pump.fwm", pump(training={"retrained": True}))
    assert store.refresh().routes.served("pump-1").version != served.version


def test_an_ambiguous_new_file_is_refused_and_a_removed_file_stops_routing(directory):
    store = ModelStore(directory)
    store.open()
    write(directory / "pumps-too.fwm", pump(training={"copy": 1}))  # pump-* again
    refresh = store.refresh()
    assert refresh.routes is None
    assert "ambiguous" in refresh.failures[0] and "pumps-too.fwm" in refresh.failures[0]
    assert store.refresh().failures == []  # said once
    (directory / "pumps-too.fwm").unlink()
    (directory / "press.fwm").unlink()
    routes = store.refresh().routes
    assert [m.name for m in routes.models] == ["pump"]
    assert routes.served("press-1") is None


def test_a_model_file_alone_serves_every_machine_and_survives_its_removal(tmp_path):
    path = write(tmp_path / "pump.fwm", pump())
    store = ModelStore(path)
    served = store.open().served("press-1")  # its pattern is pump-*, yet a file serves all
    path.unlink()
    refresh = store.refresh()
    assert refresh.routes is None and "no such model file" in refresh.failures[0]
    assert store.routes.served("anything") is served


def test_start_up_refuses_an_empty_directory_an_ambiguous_one_and_a_bad_file(tmp_path):
    with pytest.raises(ModelError, match="no model files"):
        ModelStore(tmp_path).open()
    write(tmp_path / "a.fwm", pump())
    write(tmp_path / "b.fwm", pump(training={"copy": 1}))
    with pytest.raises(ModelError, match=r"a\.fwm.*b\.fwm"):
        ModelStore(tmp_path).open()
    (tmp_path / "b.fwm").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="b.fwm"):
        ModelStore(tmp_path).open()


def test_a_loader_failure_nobody_foresaw_is_a_refusal_not_a_crash(directory):
    def load(path: Path) -> Scorer:
        if (directory / "broken").exists() and path.name == "pump.fwm":
            raise RuntimeError("a check the loader lacks")
        return Scorer.load(path)

    store = ModelStore(directory, load)
    served = store.open().served("pump-1")
    (directory / "broken").touch()
    write(directory / "pump.fwm", pump(training={"retrained": True}))
    refresh = store.refresh()
    assert refresh.routes is None
    assert refresh.failures == [
        f"{directory / 'pump.fwm'}: refused (RuntimeError: a check the loader lacks)"
    ]
    assert store.routes.served("pump-1") is served


def test_emptying_the_directory_is_refused_and_the_models_in_service_keep_serving(directory):
    store = ModelStore(directory)
    served = store.open().served("pump-1")
    for path in directory.glob("*.fwm"):
        path.unlink()  # a bad sync, a wrong mount: every record would be a no_model dead letter
    refresh = store.refresh()
    assert refresh.routes is None and len(refresh.failures) == 1
    assert "no model files (.fwm) left" in refresh.failures[0]
    assert store.routes.served("pump-1") is served
    assert store.refresh().failures == []  # said once
    write(directory / "pump.fwm", pump(training={"retrained": True}))  # a model again: served
    routes = store.refresh().routes
    assert [m.name for m in routes.models] == ["pump"] and routes.served("press-1") is None


def test_a_shadow_directory_may_be_emptied_to_end_a_trial(directory):
    store = ModelStore(directory, may_empty=True)
    store.open()
    for path in directory.glob("*.fwm"):
        path.unlink()
    refresh = store.refresh()
    assert refresh.failures == [] and refresh.routes.models == ()
