"""Progress of long commands on stderr: redrawn in place on a terminal, a line now and then
in a log (CI, `docker logs`), nothing with --quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """`with Progress(200, "training", "epoch") as bar: bar.update(1, loss="0.01")`."""

    def __init__(
        self,
        total: int | None,
        what: str,
        unit: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.what, self.unit = total, what, unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.clock = clock
        self.count = 0
        self.figures: dict[str, object] = {}
        self._started = clock()
        self._drawn = -1.0
        self._live = enabled and self.stream.isatty()
        # A terminal is redrawn up to 10 times a second; a log gets a line every 10 s.
        self._every = 0.1 if self._live else 10.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, **figures: object) -> None:
        self.count += n
        self.figures.update(figures)
        now = self.clock()
        if self.enabled and now - self._drawn >= self._every:
            self._draw(now)

    def close(self) -> None:
        if self.enabled:
            self._draw(self.clock())
            if self._live:
                self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def _draw(self, now: float) -> None:
        self._drawn = now
        done = f"{self.count}/{self.total}" if self.total else str(self.count)
        extra = " ".join(f"{k}={v}" for k, v in self.figures.items())
        line = f"{self.what}: {done} {self.unit}s {now - self._started:.0f} s {extra}".rstrip()
        self.stream.write(f"\r{line}\x1b[K" if self._live else line + "\n")
        self.stream.flush()
