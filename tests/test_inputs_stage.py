"""Samples and tags through the batch logic, without a broker: the windows' scores and
episodes, dead letters, redone batches and restores of the assembly state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.replay import reading_records
from model.episodes import EpisodeConfig
from model.recording import Recording
from model.scoring import Scorer
from tests.helpers import Record
from tests.synthetic import CHANNELS, normal_values
from tests.test_worker_episodes import Changelog
from worker.control import MuteTable
from worker.inputs.assembler import MICROS, Rules
from worker.inputs.family import AssemblyFamily
from worker.inputs.stage import ReadingStage
from worker.pipeline import Episodes, Pipeline, Topics
from worker.state import EpisodeState

CONFIG = EpisodeConfig(
    open_seconds=0, clear_seconds=5, clear_ratio=1.0, update_seconds=3, silent_seconds=60
)
RULES = Rules(grace=2 * MICROS, fill_limit=3, max_future=60 * MICROS, silent=60 * MICROS)
T0 = 1_700_000_000


def make(
    scorer: Scorer, log: Changelog, form: str = "windows", wall: float | None = None
) -> Pipeline:
    """`wall`: the readings stage's wall clock, fixed (None: the real one)."""
    assembly = AssemblyFamily(RULES) if form != "windows" else None
    families = (assembly,) if assembly is not None else ()
    state = EpisodeState(CONFIG, "input", "group", log, families=families)
    episodes = Episodes(state, MuteTable(), assembly)
    clock = {"clock": lambda: wall} if wall is not None else {}
    stage = ReadingStage(form, assembly, 10_000, **clock) if assembly is not None else None
    topics = Topics("events", "dlq", "scores", "state")
    return Pipeline(scorer, topics, 2, episodes, max_record_bytes=10_000, readings=stage)


def pump(rows: int = 120) -> Recording:
    """Normal, then 20 s of a shifted pump (an episode), then normal again."""
    values = normal_values(rows, seed=11)
    values[40:60] += 3.0
    stamps = [str(T0 + i) for i in range(rows)]
    return Recording(Path("pump-1.csv"), stamps, list(CHANNELS), values)


def records_of(recording: Recording, form: str, window: int) -> list[Record]:
    if form == "windows":
        from cli.replay import Stream, encode_window

        stream = Stream.cut("pump-1", recording, window, max_gap=3)
        values = [
            encode_window("pump-1", recording.timestamps[r], CHANNELS, w)
            for r, w in zip(stream.end_rows.tolist(), stream.windows, strict=True)
        ]
    else:
        values = [v for _, v in reading_records("pump-1", recording, form)]
    return [Record(offset, value) for offset, value in enumerate(values)]


def run(pipeline: Pipeline, records: list[Record], size: int, log: Changelog) -> list:
    outputs = []
    for start in range(0, len(records), size):
        batch = pipeline.process(records[start : start + size]).outputs
        log.write(batch)
        outputs += batch
    return outputs


def scores(outputs) -> list[tuple[str, float]]:
    found = [json.loads(o.value) for o in outputs if o.topic == "scores"]
    return [(s["timestamp"], s["score"]) for s in found]


def episodes(outputs) -> list[tuple]:
    found = [json.loads(o.value) for o in outputs if o.topic == "events"]
    return [(e["kind"], e["started_at"], e.get("ended_at"), e["peak_score"]) for e in found]


@pytest.mark.parametrize("form", ["samples", "tags"])
def test_a_recording_as_readings_gives_the_scores_and_episodes_of_its_windows(tiny_scorer, form):
    recording = pump()
    windows = records_of(recording, "windows", 10)
    readings = records_of(recording, form, 10)
    expected = scores(run(make(tiny_scorer, Changelog()), windows, 50, Changelog()))
    outputs = run(make(tiny_scorer, Changelog(), form), readings, 37, Changelog())
    got = scores(outputs)
    assert len(got) == len(expected) - 3  # the last bucket and the 2 s grace stay open
    assert [t for t, _ in got] == [t for t, _ in expected[: len(got)]]
    # Other batches, another batch size in the forward pass: equal to float rounding.
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected[: len(got)]], 1e-6)
    found = episodes(outputs)
    assert [kind for kind, *_ in found][:: len(found) - 1] == ["opened", "closed"]
    assert [e[:3] for e in found] == [
        e[:3] for e in episodes(run(make(tiny_scorer, Changelog()), windows, 50, Changelog()))
    ]


def _dead(outputs) -> list[tuple[int, str, dict]]:
    found = []
    for o in outputs:
        if o.topic == "dlq":
            headers = {k: v.decode() for k, v in o.headers}
            found.append(
                (
                    int(headers["faultwatch.source.offset"]),
                    headers["faultwatch.error.reason"],
                    headers,
                )
            )
    return found


def test_late_and_future_readings_are_dead_letters_with_their_bytes(tiny_scorer):
    records = records_of(pump(40), "samples", 10)
    late, ahead = records[5], json.loads(records[6].value)
    ahead["timestamp"] = T0 + 10_000
    values = [r.value for r in records[:5] + records[6:20]]
    values += [late.value, json.dumps(ahead).encode()] + [r.value for r in records[20:]]
    batch = [Record(offset, value) for offset, value in enumerate(values)]
    result = make(tiny_scorer, Changelog(), "samples").process(batch)
    dead = _dead(result.outputs)
    assert [(offset, reason) for offset, reason, _ in dead] == [(19, "late"), (20, "future")]
    # time 5 came after time 19: buckets up to 16 had closed (a 2 s grace), 17 - 5 = 12 s
    assert dead[0][2]["faultwatch.error.late_seconds"] == "12"
    assert [o.value for o in result.outputs if o.topic == "dlq"] == [late.value, values[20]]
    assert result.readings.late == result.readings.future == len(CHANNELS)
    assert result.dead_letters == {"late": 1, "future": 1}


def test_readings_ahead_of_the_wall_clock_are_future_and_close_no_episode(tiny_scorer):
    # pump-2's gateway runs an hour ahead: its readings agree with each other, so only the wall
    # clock can tell; taken, its windows would move the partition's clock and close pump-1's
    # open episode `silent`.
    mine = records_of(pump(), "samples", 10)[:56]  # pump-1's episode is open at T0 + 55
    ahead = []
    for r in records_of(pump(), "samples", 10)[:30]:
        sample = json.loads(r.value)
        sample["machine_id"], sample["timestamp"] = "pump-2", T0 + 3600 + r.offset
        ahead.append(json.dumps(sample).encode())
    values = [r.value for r in mine] + ahead
    batch = [Record(offset, value, key=None) for offset, value in enumerate(values)]
    result = make(tiny_scorer, Changelog(), "samples", wall=T0 + 60).process(batch)
    dead = _dead(result.outputs)
    assert [offset for offset, _, _ in dead] == list(range(56, 86))
    assert {reason for _, reason, _ in dead} == {"future"}
    assert "ahead of the wall clock" in dead[0][2]["faultwatch.error.message"]
    kinds = [e[0] for e in episodes(result.outputs)]
    assert kinds[0] == "opened" and "closed" not in kinds  # nothing closed it `silent`


def test_a_redone_batch_gives_the_same_bytes_and_a_restore_carries_on(tiny_scorer):
    records = records_of(pump(), "tags", 10)
    whole = run(make(tiny_scorer, Changelog(), "tags"), records, 40, Changelog())
    log = Changelog()
    first = make(tiny_scorer, log, "tags")
    outputs = run(first, records[:200], 40, log)
    again = first.process(records[160:200]).outputs  # its commit failed: the batch is redone
    assert again == outputs[-len(again) :]
    # A SIGKILL: another worker restores the partition from the changelog and goes on.
    second = make(tiny_scorer, log, "tags")
    outputs += run(second, records[200:], 40, log)
    assert [(o.topic, o.key, o.value) for o in outputs] == [
        (o.topic, o.key, o.value) for o in whole
    ]


def test_a_model_whose_grid_changes_restarts_its_machines_assembly(tiny_scorer, caplog):
    import dataclasses

    from worker.routing import Routes

    records = records_of(pump(60), "samples", 10)
    pipeline = make(tiny_scorer, Changelog(), "samples")
    pipeline.process(records[:30])
    coarser = Scorer(dataclasses.replace(tiny_scorer.artifact, sampling_interval=2.0))
    pipeline.serve(Routes.single(coarser))
    with caplog.at_level("INFO"):
        result = pipeline.process(records[30:])
    assert result.readings.restarts == 1 and "assembly restarted machine=pump-1" in caplog.text
    # Rows of the 1 s grid are gone: 30 s on the 2 s grid close buckets 15-27, 4 windows.
    assert result.readings.assembled == 4


def test_a_model_without_a_sampling_interval_is_refused_for_readings(tiny_model_path, tmp_path):
    import dataclasses

    from model import artifact as artifact_io
    from model.errors import DataError
    from worker.inputs.stage import interval_loader

    old = tmp_path / "old.fwm"
    artifact_io.save(
        dataclasses.replace(artifact_io.load(tiny_model_path), sampling_interval=None), old
    )
    assert interval_loader()(tiny_model_path).artifact.sampling_interval == 1.0
    with pytest.raises(DataError, match="old.fwm stores no sampling interval"):
        interval_loader()(old)


def test_the_worker_refuses_to_assemble_with_a_model_without_interval(tiny_model_path, tmp_path):
    import dataclasses

    from model import artifact as artifact_io
    from tests.helpers import run_worker, worker_env

    old = tmp_path / "old.fwm"
    artifact = dataclasses.replace(artifact_io.load(tiny_model_path), sampling_interval=None)
    artifact_io.save(artifact, old)
    env = worker_env("127.0.0.1:9", old, input_format="samples")
    worker = run_worker(env, tmp_path / "worker.log", timeout=60)
    assert worker.process.returncode == 1
    lines = [line for line in worker.stderr.splitlines() if "stopped" in line]
    assert len(lines) == 1 and "old.fwm stores no sampling interval" in lines[0], worker.stderr


def test_an_unusable_assembly_state_is_counted_and_dropped_never_a_crash():
    from worker.inputs.assembler import Grid, Machine
    from worker.state import Store

    good = Machine(Grid(tuple(CHANNELS), 10, MICROS), latest=5, closed=3).to_dict()
    store = Store()
    store.load("assembly", "pump-1", good)
    store.load("assembly", "pump-2", good | {"rows": "not base64!"})
    store.load("assembly", "pump-3", {"grid": "?"})
    store.load("assembly_clock", "", 5)
    family = AssemblyFamily(RULES)
    assert family.restored(0, store) == 2
    assert set(family.assemblers[0].machines) == {"pump-1"}
    assert store.get("assembly", "pump-2") is None and store.changed() == {}
