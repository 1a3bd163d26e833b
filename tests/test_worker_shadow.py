"""Shadow scoring in the batch logic: candidates' score records, agreement counts, isolation."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from model.scoring import Scorer
from tests.helpers import Record, synthetic_values
from tests.synthetic import press_model
from worker.pipeline import Pipeline, Topics
from worker.routing import Routes
from worker.shadow import Shadow


@pytest.fixture(scope="module")
def scorer(tiny_scorer: Scorer) -> Scorer:
    return tiny_scorer


class Broken(Scorer):
    """A candidate whose scoring raises (a bug, a resource problem)."""

    def score(self, windows):
        raise RuntimeError("candidate exploded")


def records(scorer: Scorer) -> list[Record]:
    normal = synthetic_values(6, scorer.window)
    shifted = synthetic_values(4, scorer.window, shift=25.0, seed=1)
    return [Record(i, v) for i, v in enumerate(normal + [b"{"] + shifted)]


def pipeline(scorer: Scorer, candidate: Scorer | None) -> Pipeline:
    shadow = Shadow(Routes.single(candidate, "candidate"), "shadow") if candidate else None
    return Pipeline(scorer, Topics("events", "dlq", "scores"), shadow=shadow)


def live(outputs) -> list:
    return [o for o in outputs if o.topic != "shadow"]


def test_a_candidate_scores_every_window_into_its_topic_only(scorer):
    candidate = Scorer(dataclasses.replace(scorer.artifact, threshold=1e12))
    batch = records(scorer)
    alone = pipeline(scorer, None).process(batch)
    result = pipeline(scorer, candidate).process(batch)
    assert live(result.outputs) == alone.outputs  # the live outputs are untouched
    shadow = [o for o in result.outputs if o.topic == "shadow"]
    assert all(o.best_effort for o in shadow) and not any(o.best_effort for o in alone.outputs)
    documents = [json.loads(o.value) for o in shadow]
    assert [d["source"]["offset"] for d in documents] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert {d["model_version"] for d in documents} == {candidate.version}
    assert all(d["live"]["model_version"] == scorer.version for d in documents)
    flagged = sum(d["live"]["anomaly"] for d in documents)
    assert flagged >= 4 and not any(d["anomaly"] for d in documents)  # a lenient candidate
    assert result.shadow == Counter(
        {("candidate", False, False): 10 - flagged, ("candidate", True, False): flagged}
    )


def test_a_failing_candidate_changes_nothing_live(scorer):
    batch = records(scorer)
    alone = pipeline(scorer, None).process(batch)
    result = pipeline(scorer, Broken(scorer.artifact)).process(batch)
    assert result.outputs == alone.outputs and result.shadow_failures == 1
    assert result.models[0].scores.tolist() == alone.models[0].scores.tolist()


def test_a_candidate_of_another_window_is_skipped(scorer):
    result = pipeline(scorer, Scorer(press_model().artifact)).process(records(scorer))
    assert not [o for o in result.outputs if o.topic == "shadow"]
    assert result.shadow_failures == 0 and not result.shadow
