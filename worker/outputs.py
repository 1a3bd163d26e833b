"""The records a batch publishes, as the pipeline makes them and the publisher sends them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pydantic_core

from model.scoring import Scores

Header = tuple[str, bytes]


class Consumed(Protocol):
    """Where a record was read: what events, score and shadow records name as their source."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Output:
    """One record to publish (to `partition`, else where its key's hash puts it).

    `best_effort` (shadow score records): counted when the broker refuses it, never a reason to
    retry the batch, so a candidate's topic cannot hold live scoring back.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[Header] = field(default_factory=list)
    partition: int | None = None
    best_effort: bool = False


def json_bytes(document: dict) -> bytes:
    """Compact JSON, 5x faster than json.dumps; RFC 8259 (non-finite scores never get here)."""
    return pydantic_core.to_json(document, inf_nan_mode="null")


def source_of(record: Consumed) -> dict:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def window_ratios(scores: Scores, j: int) -> dict[str, float]:
    """Each detector's ratio to its reference for window j (Scores.detector_ratios, faster)."""
    assert scores.ratios is not None
    return dict(zip(scores.detectors, scores.ratios[j].tolist(), strict=True))
