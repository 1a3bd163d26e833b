"""Data time against the wall clock: windows from the future, and an idle partition's clock.

Data time is only as good as a machine's clock. The wall clock of the worker bounds it: a window
stamped more than FAULTWATCH_INPUT_MAX_FUTURE_SECONDS ahead of now is a dead letter (`future`),
so neither a partition's clock nor the state topic ever holds a time from the future. The
partition's own clock cannot be the bound: a site back from an outage rightly jumps ahead of it.

An idle partition (no input at all) has its clock moved on by processing time, as Kafka Streams'
wall-clock punctuation and Flink's idle sources do: from the clock and the wall time after the
partition's last batch, each wall second is one second of data time (never past the bound
above). So a machine alone in its partition, or a whole site gone quiet, closes `silent` after
FAULTWATCH_EPISODE_SILENT_SECONDS of wall time. A restart starts that count afresh from the
restored clock: downtime is not silence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from model.episodes import parse_seconds
from worker.inputs.windows import Decoded, Invalid

DEFAULT_MAX_FUTURE = 120.0  # seconds (the setting's default): NTP-synced clocks are within a
# second; a gateway's buffering and some drift pass, a wrong time zone (3600 s or more) does not


@dataclass(frozen=True)
class WallClock:
    """The worker's wall clock and how far ahead of it a window may be."""

    max_future: float = DEFAULT_MAX_FUTURE  # 0: no bound
    now: Callable[[], float] = field(default=time.time)

    def limit(self) -> float:
        """The latest data time accepted now."""
        return math.inf if self.max_future <= 0 else self.now() + self.max_future

    def future(self, decoded: Decoded) -> dict[int, Invalid]:
        """The valid windows (by position) stamped past the limit, each as a `future` reason."""
        limit = self.limit()
        if math.isinf(limit):
            return {}
        found, stamp, seconds = {}, "", 0.0
        for j, (_, origin) in enumerate(decoded.valid):
            if origin.timestamp != stamp:  # machines often share a timestamp
                stamp, seconds = origin.timestamp, parse_seconds(origin.timestamp)
            if seconds > limit:
                ahead = seconds - (limit - self.max_future)
                found[j] = Invalid(
                    "future",
                    f"timestamp {stamp} is {ahead:.0f} s ahead of the wall clock "
                    f"(FAULTWATCH_INPUT_MAX_FUTURE_SECONDS={self.max_future:g})",
                )
        return found
