"""The models in service: the files at a model path, loaded, checked and re-read between batches.

A path is a model file (it serves every machine) or a directory of `*.fwm` files, each serving
the machine patterns it was trained with (worker/routing.py); names starting with `.` are
ignored, so a writer can copy to `.pump.fwm.tmp` and rename it to `pump.fwm` (a rename is
atomic: a reader sees the old file or the new one, never half of one). A file is read again
when its signature (device, inode, size, modification time; a symlink is followed) changes.

What never happens: a file that does not load, or that fails its checks, or whose patterns
would make the routes ambiguous, replacing what is in service. Each such failure is one log
line and one count in `faultwatch_model_reload_failures_total`, and is not retried until a
file changes. In a directory, a file that is removed leaves service (its machines become
`no_model` dead letters unless another pattern serves them), except the last one: a directory
emptied (a bad sync, a wrong mount) is a failure and the models in service keep serving, as
start-up refuses an empty directory. A model file given alone that vanishes is a failure, and
its model keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from model.artifact import printable
from model.errors import FaultwatchError
from model.scoring import Scorer
from worker.drift import ScoreDrift
from worker.errors import ModelError
from worker.routing import Routes, Served

log = logging.getLogger(__name__)

Signature = tuple[int, int, int, int]
MISSING: Signature = (-1, -1, -1, -1)  # the file is not there
SUFFIX = ".fwm"


@dataclass(frozen=True)
class Loaded:
    signature: Signature
    served: Served


@dataclass
class Refresh:
    """What one re-read found: new routes (None: nothing changed) and why files were refused."""

    routes: Routes | None
    failures: list[str] = field(default_factory=list)


class ModelStore:
    """The model files at one path and the routes they give."""

    def __init__(
        self, path: Path, load: Callable[[Path], Scorer] = Scorer.load, may_empty: bool = False
    ) -> None:
        self.path = Path(path)
        self.may_empty = may_empty  # shadow candidates: emptying the directory ends the trial
        self.directory = self.path.is_dir()  # decided once: a file path stays a file path
        self._load = load
        self.routes: Routes | None = None
        self._serving: dict[Path, Loaded] = {}
        self._loaded: dict[Path, Loaded] = {}  # the latest good load of each file
        self._bad: dict[Path, Signature] = {}  # files that failed, as they were
        self._refused: dict[Path, Signature] | None = None  # the last ambiguous set of files

    def open(self) -> Routes:
        """At start-up every file must load and the routes must be unambiguous: ModelError."""
        refresh = self.refresh()
        if refresh.failures:
            raise ModelError(refresh.failures[0])
        if self.routes is None or not self.routes.models:
            raise ModelError(f"{self.path}: no model files ({SUFFIX}) in this directory")
        return self.routes

    def refresh(self) -> Refresh:
        """Read the path again; routes only when what is in service changes."""
        failures: list[str] = []
        found = self._scan(failures)
        if found is None:
            return Refresh(None, failures)
        candidate: dict[Path, Loaded] = {}
        for path, signature in found.items():
            loaded = self._loaded.get(path)
            if loaded is None or loaded.signature != signature:
                loaded = self._try_load(path, signature, failures)
            if loaded is None:
                loaded = self._serving.get(path)  # refused: what served keeps serving
            if loaded is not None:
                candidate[path] = loaded
        for gone in set(self._loaded) - set(found):
            del self._loaded[gone]
        key = {path: loaded.signature for path, loaded in candidate.items()}
        if self.routes is not None and key == self._refused:
            return Refresh(None, failures)
        if self.routes is not None and not candidate and not self.may_empty:  # all no_model
            self._refused = key
            failures.append(
                f"{self.path}: no model files ({SUFFIX}) left in this directory; the models "
                "in service keep serving until one is there"
            )
            return Refresh(None, failures)
        if self.routes is not None and _models(candidate) == _models(self._serving):
            self._serving = candidate  # the same models (a file touched, copied again)
            return Refresh(None, failures)
        models = [candidate[path].served for path in sorted(candidate)]
        try:
            routes = Routes(models, every_machine=not self.directory)
        except ModelError as exc:
            self._refused = key
            failures.append(str(exc))
            return Refresh(None, failures)
        self._serving, self.routes, self._refused = candidate, routes, None
        return Refresh(routes, failures)

    def _scan(self, failures: list[str]) -> dict[Path, Signature] | None:
        """path -> signature of the files to serve; None when the directory cannot be read."""
        if not self.directory:
            return {self.path: _signature(self.path)}
        try:
            names = sorted(os.listdir(self.path))
        except OSError as exc:
            if self._bad.get(self.path) != MISSING:
                self._bad[self.path] = MISSING
                failures.append(f"{self.path}: cannot read the model directory ({exc.strerror})")
            return None
        self._bad.pop(self.path, None)
        found = {}
        for name in names:
            path = self.path / name
            if name.endswith(SUFFIX) and not name.startswith("."):
                signature = _signature(path)
                if signature != MISSING:
                    found[path] = signature
        return found

    def _try_load(self, path: Path, signature: Signature, failures: list[str]) -> Loaded | None:
        if self._bad.get(path) == signature:
            return None  # refused already, unchanged since: said once
        if signature == MISSING:
            self._bad[path] = signature
            failures.append(f"{path}: no such model file")
            return None
        try:
            scorer = self._load(path)
        except Exception as exc:  # a check the loader lacks must not end the worker either
            self._bad[path] = signature
            failures.append(_refusal(path, exc))
            return None
        self._bad.pop(path, None)
        previous = self._serving.get(path)
        if previous is not None and previous.served.version == scorer.version:
            served = previous.served  # the same model again (touched, copied): same drift
        else:
            drift = ScoreDrift(scorer.artifact.score_quantiles)
            served = Served(path.stem, path, scorer, drift)
        self._loaded[path] = Loaded(signature, served)
        return self._loaded[path]


def _refusal(path: Path, exc: Exception) -> str:
    if isinstance(exc, FaultwatchError):  # ArtifactError: truncated, corrupt, another format...
        return str(exc)
    return f"{path}: refused ({type(exc).__name__}: {printable(exc)[:200]})"


def _models(files: dict[Path, Loaded]) -> dict[Path, Served]:
    return {path: loaded.served for path, loaded in files.items()}


def _signature(path: Path) -> Signature:
    try:
        stat = path.stat()  # follows a symlink: a swapped target is a new file
    except OSError:
        return MISSING
    if not path.is_file():
        return MISSING
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


Apply = Callable[[Routes | None, Routes | None], None]  # (live, shadow); None: unchanged


class Lifecycle:
    """Re-reads the live and shadow model paths between batches: on a timer and on request."""

    def __init__(
        self,
        live: ModelStore,
        shadow: ModelStore | None,
        interval: float,
        apply: Apply,
        failed: Callable[[], None],
        requested: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.live = live
        self.shadow = shadow
        self.interval = interval  # seconds; 0: only on request
        self.apply = apply
        self.failed = failed
        self.requested = requested or threading.Event()  # set by SIGHUP's handler
        self.clock = clock
        self._next = clock() + interval

    def open_shadow(self) -> Routes:
        """The shadow models at start-up; a failure is logged and counted, never fatal."""
        if self.shadow is None:
            return Routes([])
        routes = self._refresh(self.shadow, "shadow")
        return routes or Routes([])

    def between_batches(self) -> None:
        """Re-read both paths if asked to or if it is time; apply what changed."""
        asked = self.requested.is_set()
        now = self.clock()
        if not asked and not (self.interval > 0 and now >= self._next):
            return
        self.requested.clear()
        self._next = now + self.interval
        if asked:
            log.info("models re-read on request path=%s", self.live.path)
        live = self._refresh(self.live, "live")
        shadow = self._refresh(self.shadow, "shadow") if self.shadow is not None else None
        if live is not None or shadow is not None:
            self.apply(live, shadow)

    def _refresh(self, store: ModelStore, role: str) -> Routes | None:
        refresh = store.refresh()
        for failure in refresh.failures:
            log.error("model refused, those in service keep serving role=%s: %s", role, failure)
            self.failed()
        if refresh.routes is not None:
            log.info("models in service role=%s models=%s", role, refresh.routes.describe())
        return refresh.routes
