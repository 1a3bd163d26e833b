"""Routing machines to models: pattern ranks, overlap of two patterns, ambiguity, the cache."""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from pathlib import Path

import pytest

from model.scoring import Scorer
from tests.synthetic import tiny_model
from worker import routing
from worker.drift import ScoreDrift
from worker.errors import ModelError
from worker.routing import Routes, Served, overlap, rank


def served(name: str, *patterns: str) -> Served:
    artifact = dataclasses.replace(tiny_model().artifact, machines=patterns)
    drift = ScoreDrift(artifact.score_quantiles)
    return Served(name, Path(f"/models/{name}.fwm"), Scorer(artifact), drift)


def test_ranks_order_patterns_from_the_most_specific():
    ordered = ["pump-1?", "pump-??", "pump-?*", "pump-*", "p*", "*"]
    assert sorted(ordered, key=rank, reverse=True) == ordered
    assert rank("pump-[12]") == rank("pump-?") == (5, 0, 1)
    assert rank("**") == rank("*") == (0, -1, 0)  # the same language, the same rank
    assert rank("??????") > rank("*")  # six characters exactly, inside anything


@pytest.mark.parametrize(
    ("a", "b", "meet"),
    [
        ("pump-*", "pump-?", True),
        ("pump-?1", "pump-1?", True),  # pump-11
        ("pump-*", "press-*", False),
        ("*-a", "b-*", True),  # b-a
        ("a*", "*b", True),
        ("a?", "a", False),
        ("[ab]x", "[!a]x", True),  # bx
        ("[a]x", "[!a]x", False),
        ("[a-c]", "[d-f]", False),
        ("[a-c]", "[c-f]", True),
        ("x[", "x[", True),  # an unclosed bracket is a literal
        ("*", "*", True),
    ],
)
def test_overlap_tells_whether_one_id_matches_both(a, b, meet):
    assert overlap(a, b) is meet
    assert overlap(b, a) is meet


def test_overlap_agrees_with_fnmatch_on_every_short_string():
    # Brute force over a small alphabet: the dynamic programme and fnmatch must agree.
    patterns = ["a*", "*a", "?b", "a?", "[ab]?", "[!a]*", "*b*", "ab", "??", "a[!b]"]
    strings = ["".join(s) for n in range(4) for s in itertools.product("abc", repeat=n)]
    for a, b in itertools.combinations(patterns, 2):
        both = any(fnmatch.fnmatchcase(s, a) and fnmatch.fnmatchcase(s, b) for s in strings)
        assert overlap(a, b) is both, (a, b)


def test_the_most_specific_pattern_wins_and_no_match_is_none():
    routes = Routes([served("pumps", "pump-*"), served("pump7", "pump-7"), served("all", "p*")])
    assert [routes.served(m).name for m in ("pump-1", "pump-7", "press-1")] == [
        "pumps",
        "pump7",
        "all",
    ]
    assert routes.route("compressor-1") is None
    assert routes.route("compressor-1") is None  # cached as "no model", still none


def test_equal_matches_from_two_files_are_refused_naming_both():
    with pytest.raises(ModelError) as refused:
        Routes([served("a", "pump-[0-9]"), served("b", "pump-?", "press-*")])
    message = str(refused.value)
    assert "/models/a.fwm" in message and "/models/b.fwm" in message and "ambiguous" in message
    Routes([served("a", "pump-*"), served("b", "press-*")])  # equal ranks, no common id: fine
    Routes([served("a", "pump-*"), served("b", "pump-?")])  # pump-? is narrower: it wins
    with pytest.raises(ModelError):
        Routes([served("a", "pump-7", "pump-8"), served("b", "pump-9", "pump-7")])


def test_a_narrower_pattern_wins_over_a_broader_one_of_as_many_literals():
    routes = Routes([served("any", "pump-*"), served("two", "pump-??"), served("all", "*")])
    assert [routes.served(m).name for m in ("pump-12", "pump-1", "pump-123", "x")] == [
        "two",
        "any",
        "any",
        "all",
    ]


def test_plain_ids_are_compared_as_strings_not_pattern_by_pattern(monkeypatch):
    # 1000 ids a model (the most a file holds) against 1000: pairwise overlaps took 85 s.
    compared = []
    monkeypatch.setattr(routing, "overlap", lambda a, b: compared.append((a, b)) or False)
    ids = [f"pump-{i:04d}" for i in range(2000)]  # one length: one rank
    Routes([served("a", *ids[:1000], "pump-*"), served("b", *ids[1000:], "pres-*")])
    assert compared == [("pump-*", "pres-*")]  # only the patterns of one rank with wildcards


def test_a_single_file_serves_every_machine_whatever_its_patterns():
    model = served("pumps", "pump-*")
    routes = Routes([model], every_machine=True)
    assert routes.route("press-1") == 0
    assert Routes([model]).route("press-1") is None  # in a directory, its patterns apply
