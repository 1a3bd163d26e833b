"""The records a batch publishes, as the pipeline makes them and the publisher sends them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pydantic_core

Header = tuple[str, bytes]


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
