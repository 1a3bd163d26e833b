"""Retraining from labelled history: which episodes' windows are normal, how a model does on
the labelled episodes, and the rule that promotes a candidate only when it is better.

History is the episodes the workers published (their spans in data time) with the last label
an operator gave each. A model is judged by replaying a machine's windows through it with the
worker's own episode rules (model/episodes.py): an episode of the replay that overlaps a
confirmed fault catches it; any other is a false episode, counted by the label of the
history episode it overlaps (`false-alarm`, `new-normal`) or as `unlabelled`.
A candidate is promoted only when it catches every confirmed fault the live model caught and
opens fewer false episodes. No Kafka here: the CLI reads the topics.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from model.episodes import EpisodeConfig, LabelKind, parse_seconds, scored_episodes
from model.scoring import Scorer

NORMAL_LABELS = ("false-alarm", "new-normal")  # their windows are normal training data
UNLABELLED = "unlabelled"
Span = tuple[float, float]  # (start, end) in epoch seconds of data time, both included


@dataclass(frozen=True)
class HistoryEpisode:
    """An episode the workers published, with its operator's last word on it."""

    episode_id: str
    machine_id: str
    start: float  # started_at, epoch seconds
    end: float  # ended_at; math.inf while it is open
    label: LabelKind | None = None
    code: str | None = None

    @property
    def open(self) -> bool:
        return math.isinf(self.end)

    @property
    def normal(self) -> bool:
        """Whether its windows may train the next model: closed and dismissed or re-based."""
        return not self.open and self.label in NORMAL_LABELS

    def meets(self, span: Span) -> bool:
        return span[0] <= self.end and self.start <= span[1]


@dataclass
class Replayed:
    """What replaying history through one model gave, over the machines it serves."""

    episodes: int = 0
    caught: set[str] = field(default_factory=set)  # ids of the confirmed faults it caught
    false: Counter[str] = field(default_factory=Counter)  # label or `unlabelled` -> episodes

    @property
    def false_total(self) -> int:
        return sum(self.false.values())

    def add(self, spans: Sequence[Span], history: Sequence[HistoryEpisode]) -> None:
        """One machine's replayed episodes, judged against that machine's history."""
        confirmed = [h for h in history if h.label == "fault"]
        for span in spans:
            self.episodes += 1
            hits = [h.episode_id for h in confirmed if h.meets(span)]
            if hits:
                self.caught.update(hits)
                continue
            labels = [h.label for h in history if h.label and h.meets(span)]
            self.false[labels[0] if labels else UNLABELLED] += 1

    def to_dict(self) -> dict:
        return {
            "episodes": self.episodes,
            "confirmed_caught": len(self.caught),
            "caught": sorted(self.caught),
            "false_episodes": self.false_total,
            "false_by_label": {k: self.false.get(k, 0) for k in (*NORMAL_LABELS, UNLABELLED)},
        }


@dataclass(frozen=True)
class Verdict:
    better: bool
    reasons: list[str]  # why not (empty when better), or what makes it better


def verdict(live: Replayed, candidate: Replayed, confirmed: int) -> Verdict:
    """Better: every confirmed fault the live model caught still caught, fewer false episodes."""
    reasons = []
    missed = sorted(live.caught - candidate.caught)
    if missed:
        reasons.append(
            f"misses {len(missed)} confirmed fault(s) the live model caught ({', '.join(missed)})"
        )
    if candidate.false_total >= live.false_total:
        reasons.append(
            f"opens {candidate.false_total} false episodes, not fewer than the live model's "
            f"{live.false_total}"
        )
    if reasons:
        return Verdict(False, reasons)
    return Verdict(
        True,
        [
            f"catches {len(candidate.caught)} of {confirmed} confirmed faults (live "
            f"{len(live.caught)}) and opens {candidate.false_total} false episodes instead of "
            f"{live.false_total}"
        ],
    )


def replay_spans(
    scorer: Scorer,
    machine: str,
    times: np.ndarray,
    windows: np.ndarray,
    config: EpisodeConfig,
) -> list[Span]:
    """The episodes the worker would open for a machine's (B, W, C) windows ending at `times`
    (epoch seconds, ascending), as data-time spans; an episode open at the end runs to the
    last window."""
    if not len(windows):
        return []
    scores = scorer.score(windows)
    stamps = [_stamp(t) for t in times]
    rows = scored_episodes(scorer, machine, range(len(windows)), stamps, scores, config)
    scored = np.asarray(times, dtype=np.float64)[np.isfinite(scores.score)]
    spans = []
    for row in rows:
        start = parse_seconds(row.started_at)
        end = parse_seconds(row.ended_at) if row.ended_at else float(scored[-1])
        spans.append((start, max(start, end)))
    return spans


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(float(seconds), UTC).isoformat()
