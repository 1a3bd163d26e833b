"""Putting a candidate model in service and taking it back, by renames inside the model directory.

A worker re-reads its model directory and serves `NAME.fwm` files whose names do not start
with `.` (worker/models.py). Promoting NAME keeps the file in service as `.previous/NAME.fwm`
first, then renames the candidate onto `NAME.fwm`: a rename is atomic, so a worker reads the
old model or the new one, never half of one. Rolling back swaps the two, so a second rollback
undoes the first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from model import artifact as artifact_io
from model.errors import FaultwatchError

PREVIOUS = ".previous"  # hidden from the workers: a kept model is not served


def previous_of(live: Path) -> Path:
    """Where the model that `live` replaced is kept."""
    return live.parent / PREVIOUS / live.name


def promote(candidate: Path, live: Path) -> Path:
    """`candidate` (a file in the same file system) becomes `live`; returns where the model it
    replaced is kept."""
    kept = previous_of(live)
    if live.exists():
        _copy_atomically(live, kept)
    os.replace(candidate, live)
    return kept


def rollback(live: Path) -> Path:
    """Serve the kept model again; the one it replaces is kept in its place. Returns `live`."""
    kept = previous_of(live)
    if not kept.is_file():
        raise FaultwatchError(f"{live}: no previous model kept at {kept}: nothing to roll back to")
    artifact_io.load(kept)  # a damaged file never goes into service
    swap = kept.with_name(f".{kept.name}.swap")
    if live.exists():
        shutil.copy2(live, swap)
    os.replace(kept, live)
    if swap.exists():
        os.replace(swap, kept)
    return live


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copy2(source, tmp)
    os.replace(tmp, target)
