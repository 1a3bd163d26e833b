"""Shadow scoring: candidate models score the live batch's windows into a topic of their own.

FAULTWATCH_SHADOW_MODEL_PATH is a file or a directory routed like the live one. A candidate
scores the windows of the machines it serves that the live model scored, from the same decoded
array, so it must read the same window and channels as the live model of those machines (a
record holds the producer's one window); a candidate that does not is named once in the log
and skipped. Its score records go to FAULTWATCH_SHADOW_TOPIC only: no events, no episodes, no
effect on the live outputs. Each window both scored counts in
`faultwatch_shadow_windows_total{model, live, candidate}` (`normal` or `anomaly` each): the
agreement table a team reads before promoting a candidate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from worker.inputs.windows import Decoded
from worker.outputs import Output, json_bytes, source_of, window_ratios
from worker.routing import Routes, Served

if TYPE_CHECKING:
    from worker.pipeline import Record, Scored

log = logging.getLogger(__name__)

LOG_EVERY = 60.0  # seconds between two log lines of the same failing candidate
MAX_MESSAGES = 1000  # distinct messages remembered for LOG_EVERY


class Shadow:
    """The candidate models and where their score records go."""

    def __init__(self, routes: Routes, topic: str) -> None:
        self.routes = routes
        self.topic = topic
        self._said: dict[str, float] = {}  # message -> when it was last logged

    def score(
        self,
        records: Sequence[Record],
        decoded: Decoded,
        live: Scored,
        models: Routes,
        finite: np.ndarray,
    ) -> tuple[list[Output], Counter[tuple[str, bool, bool]]]:
        """The candidates' score records of the batch, and (candidate, live, candidate) counts."""
        outputs: list[Output] = []
        counts: Counter[tuple[str, bool, bool]] = Counter()
        if not self.routes.models:
            return outputs, counts
        for group in decoded.groups:
            served, live_scores = models.models[group.slot], live.by_slot[group.slot]
            for candidate, rows in self._candidates(decoded, group.members, finite).items():
                if not _same_input(candidate, served):
                    self._say(
                        f"shadow model {candidate.name} ({candidate.path}) reads another window "
                        f"or channels than live model {served.name}: not scored"
                    )
                    continue
                scores = candidate.scorer.score(group.windows[rows])
                for n, r in enumerate(rows):
                    if not np.isfinite(scores.score[n]):
                        continue
                    i, origin = decoded.valid[group.members[r]]
                    flagged, live_flagged = bool(scores.anomaly[n]), bool(live_scores.anomaly[r])
                    counts[(candidate.name, live_flagged, flagged)] += 1
                    document = {
                        "machine_id": origin.machine_id,
                        "timestamp": origin.timestamp,
                        "score": float(scores.score[n]),
                        "threshold": candidate.scorer.threshold,
                        "anomaly": flagged,
                        "model_version": candidate.version,
                        "detector": scores.detector(n),
                        "detectors": window_ratios(scores, n),
                        "live": {
                            "model_version": served.version,
                            "score": float(live_scores.score[r]),
                            "threshold": served.scorer.threshold,
                            "anomaly": live_flagged,
                        },
                        "source": source_of(records[i]),
                    }
                    key = origin.machine_id.encode()
                    outputs.append(Output(self.topic, key, json_bytes(document), best_effort=True))
        return outputs, counts

    def failed(self, exc: BaseException) -> None:
        """A candidate raised: said at most once a minute; the live batch goes on."""
        self._say(f"shadow scoring failed, live scoring goes on: {type(exc).__name__}: {exc}")

    def _candidates(
        self, decoded: Decoded, members: np.ndarray, finite: np.ndarray
    ) -> dict[Served, list[int]]:
        """candidate -> the group's rows (finite live scores) of the machines it serves."""
        found: dict[Served, list[int]] = {}
        route, models = self.routes.route, self.routes.models
        for r, j in enumerate(members.tolist()):
            if finite[j]:
                slot = route(decoded.valid[j][1].machine_id)
                if slot is not None:
                    found.setdefault(models[slot], []).append(r)
        return found

    def _say(self, message: str) -> None:
        now = time.monotonic()
        if now - self._said.get(message, -LOG_EVERY) >= LOG_EVERY:
            if len(self._said) >= MAX_MESSAGES:  # messages vary with errors: bounded memory
                self._said.clear()
            self._said[message] = now
            log.warning(message)


def _same_input(candidate: Served, live: Served) -> bool:
    a, b = candidate.scorer, live.scorer
    return a.window == b.window and list(a.channels) == list(b.channels)
