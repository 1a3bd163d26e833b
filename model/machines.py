"""The machine ids a model serves: glob patterns (`pump-*`, `p-1?`), `*` for every machine."""

from __future__ import annotations

ALL = ("*",)
MAX_PATTERNS = 1000
MAX_LENGTH = 256


def parse(text: str) -> tuple[str, ...]:
    """'pump-*, p-1?' -> ('pump-*', 'p-1?'); ValueError for an empty or unprintable list."""
    return check([part.strip() for part in text.split(",")])


def check(patterns: object) -> tuple[str, ...]:
    """The patterns as a tuple; ValueError unless a non-empty list of printable patterns."""
    if not isinstance(patterns, list | tuple) or not patterns:
        raise ValueError("machine patterns must be a non-empty list")
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"{len(patterns)} machine patterns, at most {MAX_PATTERNS}")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("a machine pattern is empty")
        if len(pattern) > MAX_LENGTH or not pattern.isprintable() or pattern != pattern.strip():
            raise ValueError(f"machine pattern {pattern[:40]!r} is not printable text")
    return tuple(patterns)
