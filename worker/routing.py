"""Which model serves a machine: the models' machine-id patterns, the most specific one winning.

A pattern's rank is (literal characters, -`*` wildcards, single-character wildcards), where `?`
and a `[...]` set match one character and every other character is a literal; the higher rank
is the more specific. Each key only decides between patterns that can match one same id: one
more literal or one `*` fewer narrows a pattern, and with equal literals and `*`, more
single-character tokens demand a longer id (`p*?` inside `p*`). A machine goes to the model of
the highest-ranked pattern that matches its id: `pump-1?` before `pump-??` before `pump-*`
before `p*` before `*`. Two models whose patterns have equal ranks and can match one same
machine id (`pump-?` and `pump-[0-9]` both match `pump-1`; two `*`) are ambiguous: refused
when the models are loaded, naming both files, never decided record by record. A model file
given alone serves every machine, whatever its patterns.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from model.scoring import Scorer
from worker.drift import ScoreDrift
from worker.errors import ModelError

Rank = tuple[int, int, int]
MAX_CACHED = 100_000  # machine ids remembered; then start over: bounded memory whatever the ids
STAR = None  # a `*` token; any other token is a set of characters (CharSet)


@dataclass(frozen=True)
class Served:
    """One model in service: its name (the file's stem: the `model` label), file and scorer."""

    name: str
    path: Path
    scorer: Scorer
    drift: ScoreDrift = field(compare=False)

    @property
    def version(self) -> str:
        return self.scorer.version

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.scorer.artifact.machines

    def describe(self) -> str:
        return f"{self.name}:{self.version}({','.join(self.patterns)})"


class Routes:
    """The models in service and the machines each one serves; immutable, swapped whole."""

    def __init__(self, models: Sequence[Served], every_machine: bool = False) -> None:
        self.models = tuple(models)
        self.every_machine = every_machine and len(self.models) == 1
        if not self.every_machine:
            check_unambiguous(self.models)
        # (rank, match, model index), best rank first: the first match is the machine's model.
        self._patterns = sorted(
            (
                (rank(pattern), re.compile(fnmatch.translate(pattern), re.DOTALL).match, index)
                for index, served in enumerate(self.models)
                for pattern in served.patterns
            ),
            key=lambda entry: entry[0],
            reverse=True,
        )
        self._cache: dict[str, int | None] = {}

    @classmethod
    def single(cls, scorer: Scorer, name: str = "model", path: Path | None = None) -> Routes:
        """One model for every machine (a model file, not a directory)."""
        drift = ScoreDrift(scorer.artifact.score_quantiles)
        return cls([Served(name, path or Path(f"{name}.fwm"), scorer, drift)], every_machine=True)

    def route(self, machine: str) -> int | None:
        """The index of the model that serves `machine`, or None (a `no_model` dead letter)."""
        if self.every_machine:
            return 0
        found = self._cache.get(machine, -1)
        if found == -1:
            found = next((i for _, match, i in self._patterns if match(machine)), None)
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[machine] = found
        return found

    def served(self, machine: str) -> Served | None:
        index = self.route(machine)
        return None if index is None else self.models[index]

    def router(self) -> Callable[[str], int | None]:
        return (lambda machine: 0) if self.every_machine else self.route

    def describe(self) -> str:
        return " ".join(served.describe() for served in self.models) or "none"


def rank(pattern: str) -> Rank:
    """(literal characters, -`*` wildcards, single-character wildcards): higher, more specific."""
    tokens = parse(pattern)
    stars = sum(1 for t in tokens if t is STAR)
    literals = sum(1 for t in tokens if t is not STAR and t.literal)
    return literals, -stars, len(tokens) - stars - literals


def check_unambiguous(models: Sequence[Served]) -> None:
    """ModelError naming both files when two models could serve one machine id equally."""
    by_rank: dict[Rank, list[tuple[Served, str]]] = {}
    for served in models:
        for pattern in dict.fromkeys(served.patterns):
            by_rank.setdefault(rank(pattern), []).append((served, pattern))
    for (_, stars, singles), entries in by_rank.items():
        if stars == singles == 0:  # plain ids: they meet only when equal (a dictionary, not n^2)
            first: dict[str, Served] = {}
            for served, pattern in entries:
                other = first.setdefault(pattern, served)
                if other is not served:
                    _ambiguous(other, pattern, served, pattern)
            continue
        for (a, pa), (b, pb) in combinations(entries, 2):
            if a is not b and overlap(pa, pb):
                _ambiguous(a, pa, b, pb)


def _ambiguous(a: Served, pa: str, b: Served, pb: str) -> None:
    raise ModelError(
        f"ambiguous models: {a.path} ({pa!r}) and {b.path} ({pb!r}) are equally specific for "
        "some machine ids; make one pattern more specific"
    )


# --- glob patterns as tokens, and whether two of them can match one same string


@dataclass(frozen=True)
class CharSet:
    """The characters one token matches: `ranges`, or everything but them when `negated`."""

    ranges: tuple[tuple[str, str], ...]
    negated: bool = False
    literal: bool = False  # a plain character of the pattern

    def meets(self, other: CharSet) -> bool:
        """Whether some character is in both sets."""
        if self.negated and other.negated:
            return True  # two exclusions leave most of Unicode
        if not self.negated and not other.negated:
            return any(
                lo <= other_hi and other_lo <= hi
                for lo, hi in self.ranges
                for other_lo, other_hi in other.ranges
            )
        included, excluded = (other, self) if self.negated else (self, other)
        return any(_outside(lo, hi, excluded.ranges) for lo, hi in included.ranges)


ANY = CharSet((), negated=True)  # `?`


def parse(pattern: str) -> list[CharSet | None]:
    """fnmatch's reading of a pattern: `*` (STAR), `?`, `[set]`, `[!set]` and literals."""
    tokens: list[CharSet | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1] is not STAR:  # `**` matches what `*` does
                tokens.append(STAR)
        elif c == "?":
            tokens.append(ANY)
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal `[`, as fnmatch reads it
                tokens.append(CharSet(((c, c),), literal=True))
                continue
            body, i = pattern[i:j], j + 1
            negated = body.startswith("!")
            tokens.append(CharSet(_ranges(body[1:] if negated else body), negated))
        else:
            tokens.append(CharSet(((c, c),), literal=True))
    return tokens


def overlap(a: str, b: str) -> bool:
    """Whether some string matches both glob patterns (dynamic programming over tokens)."""
    p, q = parse(a), parse(b)
    n, m = len(p), len(q)
    # meet[i][j]: the pattern tails p[i:] and q[j:] match one same string
    meet = [[False] * (m + 1) for _ in range(n + 1)]
    meet[n][m] = True
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            if i < n and p[i] is STAR:
                meet[i][j] = meet[i + 1][j] or (j < m and meet[i][j + 1])
            elif j < m and q[j] is STAR:
                meet[i][j] = meet[i][j + 1] or (i < n and meet[i + 1][j])
            elif i < n and j < m:
                meet[i][j] = p[i].meets(q[j]) and meet[i + 1][j + 1]
    return meet[0][0]


def _ranges(body: str) -> tuple[tuple[str, str], ...]:
    """`a-z0_` -> (('a', 'z'), ('0', '0'), ('_', '_')); a reversed range is empty."""
    ranges, k = [], 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            if body[k] <= body[k + 2]:
                ranges.append((body[k], body[k + 2]))
            k += 3
        else:
            ranges.append((body[k], body[k]))
            k += 1
    return tuple(ranges)


def _outside(lo: str, hi: str, excluded: tuple[tuple[str, str], ...]) -> bool:
    """Whether some character of lo..hi is in none of the excluded ranges."""
    start = ord(lo)
    for ex_lo, ex_hi in sorted(excluded):
        if ord(ex_lo) > start:
            break
        start = max(start, ord(ex_hi) + 1)
    return start <= ord(hi)
