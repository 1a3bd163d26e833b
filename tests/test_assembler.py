"""The assembler: readings in, the windows `score` sees out; late, future, gaps, undo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli.replay import Disorder, arrange, reading_records
from model.errors import DataError
from model.recording import Recording
from tests.synthetic import CHANNELS, normal_values, recording
from worker.inputs.assembler import MICROS, Assembler, Grid, Machine, Rules, bucket_time
from worker.inputs.readings import ReadingDecoder

WINDOW = 10
GRID = Grid(tuple(CHANNELS), WINDOW, MICROS)  # 1 s buckets
RULES = Rules(grace=2 * MICROS, fill_limit=3, max_future=60 * MICROS, silent=30 * MICROS)


def assemble(assembler, values, form, batch=64, grid=GRID):
    """Every record through the decoder and assembler in batches; what came out, in order."""
    decoder = ReadingDecoder(form, [grid.channels], 1_000_000)
    times, windows, refused, counts = [], [], [], []
    for start in range(0, len(values), batch):
        chunk = values[start : start + batch]
        decoded = decoder.decode_batch(chunk)
        assert decoded.invalid == []
        assembler.begin()
        out = assembler.assemble(decoded.readings, [grid], decoded.readings.slots)
        for built in out.built:
            times += built.timestamps()
            windows.append(built.windows)
        refused += [(start + i, why.reason) for i, why in sorted(out.refused.items())]
        counts.append(out.counts)
    stacked = np.concatenate(windows) if windows else np.empty((0, WINDOW, len(CHANNELS)))
    return times, stacked, refused, counts


def with_gaps(rows=200, seed=3):
    values = normal_values(rows, seed)
    values[20:22, 1] = np.nan  # a short gap: carried
    values[60:70, 2] = np.nan  # a long one: windows over its tail are skipped
    values[0:4, 3] = np.nan  # a channel that starts late: never filled before its first value
    return values


@pytest.mark.parametrize("form", ["samples", "tags"])
def test_a_recording_as_readings_gives_the_windows_score_builds(form):
    rec = recording(with_gaps())
    end_rows, expected, _ = rec.windows(WINDOW, max_gap=RULES.fill_limit, fill="carry")
    values = [v for _, v in reading_records("pump-1", rec, form)]
    times, windows, refused, _ = assemble(Assembler(RULES), values, form)
    # The last bucket and the `grace` seconds before it stay open: nothing newer closed them.
    closed = len(end_rows) - RULES.grace // MICROS - 1
    assert refused == []
    np.testing.assert_array_equal(windows, expected[:closed])
    assert times == [bucket_time(int(rec.timestamps[r]), MICROS) for r in end_rows[:closed]]


def test_windows_from_readings_score_as_score_scores_them(tiny_scorer):
    values = normal_values(120, seed=7)
    values[30, 0] = np.nan
    rec = recording(values)
    _, expected, _ = rec.windows(tiny_scorer.window, max_gap=3, fill="carry")
    grid = Grid.of(tiny_scorer.channels, tiny_scorer.window, 1.0)
    records = [v for _, v in reading_records("pump-1", rec, "tags")]
    _, windows, _, _ = assemble(Assembler(RULES), records, "tags", grid=grid)
    offline, online = tiny_scorer.score(expected[: len(windows)]), tiny_scorer.score(windows)
    np.testing.assert_array_equal(online.score, offline.score)


def test_without_gaps_carry_and_interpolate_agree_so_score_and_the_worker_agree():
    rec = recording(normal_values(60))
    a = rec.windows(WINDOW, max_gap=3)[1]
    b = rec.windows(WINDOW, max_gap=3, fill="carry")[1]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("form", ["samples", "tags"])
def test_disorder_within_the_grace_changes_nothing(form):
    rec = recording(with_gaps())
    records = reading_records("pump-1", rec, form)
    ordered = assemble(Assembler(RULES), [v for _, v in records], form)
    shuffled = arrange(records, Disorder(jitter=1.5, shuffle_within=1.0, seed=4))
    assert [v for _, v in shuffled] != [v for _, v in records]
    mixed = assemble(Assembler(RULES), [v for _, v in shuffled], form, batch=17)
    assert mixed[0] == ordered[0]
    np.testing.assert_array_equal(mixed[1], ordered[1])
    assert mixed[2] == []


def test_a_reading_for_a_closed_bucket_is_late_with_how_late():
    rec = recording(normal_values(40))
    records = [v for _, v in reading_records("pump-1", rec, "samples")]
    late = records.pop(5)  # time 5, sent after time 20: its bucket closed at watermark 6
    records.insert(20, late)
    assembler = Assembler(RULES)
    decoder = ReadingDecoder("samples", [GRID.channels], 1_000_000)
    decoded = decoder.decode_batch(records)
    out = assembler.assemble(decoded.readings, [GRID], decoded.readings.slots)
    assert {i: (w.reason, w.seconds) for i, w in out.refused.items()} == {20: ("late", 13.0)}
    assert out.counts.late == len(CHANNELS) and out.counts.future == 0  # readings
    # Its bucket had no reading: the channel values carried forward fill it.
    assert out.counts.filled == len(CHANNELS)


def test_a_jumping_clock_is_future_and_closes_nothing():
    rec = recording(normal_values(40))
    records = [v for _, v in reading_records("pump-1", rec, "samples")]
    jump = json.loads(records[10])
    jump["timestamp"] = 10_000
    records.insert(11, json.dumps(jump).encode())
    assembler = Assembler(RULES)
    decoder = ReadingDecoder("samples", [GRID.channels], 1_000_000)
    decoded = decoder.decode_batch(records)
    out = assembler.assemble(decoded.readings, [GRID], decoded.readings.slots)
    assert [(i, w.reason) for i, w in out.refused.items()] == [(11, "future")]
    # the last bucket and the two of the grace before it are open
    assert out.counts.assembled == 40 - WINDOW + 1 - 3
    assert out.counts.late == 0


def test_two_readings_agreeing_on_a_later_time_are_a_machine_back_from_a_pause():
    rules = Rules(grace=0, fill_limit=3, max_future=60 * MICROS, silent=0)
    first = recording(normal_values(20))
    later = recording(normal_values(20))
    later = Recording(later.path, [str(1000 + i) for i in range(20)], CHANNELS, later.values)
    records = [v for _, v in reading_records("m", first, "samples")]
    records += [v for _, v in reading_records("m", later, "samples")]
    _, windows, refused, counts = assemble(Assembler(rules), records, "samples")
    assert refused == [(20, "future")]  # the first of the new times; the second confirms it
    # 20 rows before, 3 carried into the pause, then a fresh start: 18 closed rows after it
    assert len(windows) == (20 + 3 - WINDOW + 1) + (18 - WINDOW + 1)


def test_a_silent_machine_has_its_open_buckets_closed_by_its_partitions_time():
    rules = Rules(grace=5 * MICROS, fill_limit=3, max_future=600 * MICROS, silent=30 * MICROS)
    quiet = [v for _, v in reading_records("quiet", recording(normal_values(20)), "samples")]
    busy = [v for _, v in reading_records("busy", recording(normal_values(60)), "samples")]
    assembler = Assembler(rules)
    decoder = ReadingDecoder("samples", [GRID.channels], 1_000_000)
    decoded = decoder.decode_batch(quiet + busy)
    out = assembler.assemble(decoded.readings, [GRID, GRID], decoded.readings.slots)
    by_machine = {b.machine: b for b in out.built}
    # quiet's last reading is at 19: all 20 of its buckets close once busy reaches 49
    assert by_machine["quiet"].buckets.tolist() == list(range(WINDOW - 1, 20))
    # its own readings closed buckets up to 13; busy's reading at 49 closed the rest
    assert by_machine["quiet"].records.tolist()[-6:] == [20 + 49] * 6
    assert by_machine["quiet"].records.tolist()[:5] == [15, 16, 17, 18, 19]  # grace 5 s
    assert assembler.machines["quiet"].open == {}


def test_a_gap_longer_than_the_fill_limit_skips_the_windows_over_it_and_counts_them():
    values = normal_values(60)
    values[30:36, 0] = np.nan  # 6 buckets, the limit is 3
    rec = recording(values)
    records = [v for _, v in reading_records("m", rec, "tags")]
    _, windows, _, counts = assemble(Assembler(RULES), records, "tags")
    end_rows, expected, skipped = rec.windows(WINDOW, max_gap=3, fill="carry")
    np.testing.assert_array_equal(windows, expected[: len(windows)])
    assert sum(c.skipped for c in counts) == skipped
    assert sum(c.filled for c in counts) == 3


def test_bad_quality_is_missing_and_the_last_reading_of_a_bucket_wins():
    decoder = ReadingDecoder("tags", [["a"]], 10_000)
    grid = Grid(("a",), 2, MICROS)
    tag = '{{"machine_id":"m","channel":"a","timestamp":{t},"value":{v}{q}}}'
    values = [
        tag.format(t=0.2, v=1.0, q=""),
        tag.format(t=0.9, v=2.0, q=""),
        tag.format(t=0.5, v=3.0, q=""),  # earlier in its bucket than 0.9: not the last
        tag.format(t=1.5, v=4.0, q=',"quality":"Bad"'),  # missing: bucket 1 carries 2.0
        tag.format(t=2.0, v=5.0, q=""),
        tag.format(t=5.0, v=6.0, q=""),  # closes 3 (carried) and 4 (past the limit)
    ]
    decoded = decoder.decode_batch([v.encode() for v in values])
    assert decoded.readings.good.tolist() == [True, True, True, False, True, True]
    rules = Rules(grace=0, fill_limit=1, silent=0)
    out = Assembler(rules).assemble(decoded.readings, [grid], decoded.readings.slots)
    (built,) = out.built
    assert built.buckets.tolist() == [1, 2, 3]
    assert built.windows[..., 0].tolist() == [[2.0, 2.0], [2.0, 5.0], [5.0, 5.0]]
    assert out.counts.filled == 2


def test_a_model_without_a_sampling_interval_is_refused_clearly():
    with pytest.raises(DataError, match="no sampling interval"):
        Grid.of(CHANNELS, WINDOW, None)


def test_state_is_plain_json_and_a_restore_carries_on_identically():
    rec = recording(with_gaps(120))
    values = [v for _, v in reading_records("m", rec, "tags")]
    whole = assemble(Assembler(RULES), values, "tags", batch=50)
    first = Assembler(RULES)
    part = assemble(first, values[:230], "tags", batch=50)
    assert first.open_buckets() == sum(len(m.open) for m in first.machines.values()) == 3
    saved = {n: json.loads(json.dumps(m.to_dict())) for n, m in first.machines.items()}
    second = Assembler(RULES)
    second.restore(saved, first.clock)
    assert second.open_buckets() == 3
    rest = assemble(second, values[230:], "tags", batch=50)
    assert part[0] + rest[0] == whole[0]
    np.testing.assert_array_equal(np.concatenate([part[1], rest[1]]), whole[1])


@pytest.mark.parametrize("first, last", [(30, 60), (30, 31)])  # a batch of one record too
def test_a_rolled_back_batch_redone_gives_the_same_windows(first, last):
    rec = recording(with_gaps(80))
    values = [v for _, v in reading_records("m", rec, "samples")]
    decoder = ReadingDecoder("samples", [GRID.channels], 1_000_000)
    assembler = Assembler(RULES)
    assembler.assemble(*_args(decoder, values[:first]))
    assembler.begin()
    once = assembler.assemble(*_args(decoder, values[first:last]))
    changed = assembler.changed()
    assert set(changed) == {"m"} and changed["m"][0] != changed["m"][1]
    assembler.rollback()
    again = assembler.assemble(*_args(decoder, values[first:last]))
    assert [b.buckets.tolist() for b in once.built] == [b.buckets.tolist() for b in again.built]
    # the same record closes each bucket: the same source, the same event ids
    assert [b.records.tolist() for b in once.built] == [b.records.tolist() for b in again.built]
    np.testing.assert_array_equal(once.built[0].windows, again.built[0].windows)


def test_a_model_change_that_alters_the_grid_restarts_the_machine(caplog):
    rec = recording(normal_values(40))
    values = [v for _, v in reading_records("m", rec, "samples")]
    assembler = Assembler(RULES)
    assemble(assembler, values[:20], "samples")
    coarser = Grid(GRID.channels, WINDOW, 2 * MICROS)
    decoder = ReadingDecoder("samples", [GRID.channels], 1_000_000)
    decoded = decoder.decode_batch(values[20:])
    with caplog.at_level("INFO"):
        out = assembler.assemble(decoded.readings, [coarser], decoded.readings.slots)
    assert out.counts.restarts == 1
    assert "assembly restarted machine=m" in caplog.text
    assert assembler.machines["m"].grid == coarser
    assert out.built == []  # 20 rows of 2 s: the first window needs 10 closed buckets


def test_machine_state_round_trips_through_json():
    machine = Machine(GRID, latest=5, closed=3, open={4: ([1.0, np.nan, 2.0, 3.0], [4, 0, 4, 4])})
    doc = json.loads(json.dumps(machine.to_dict(), allow_nan=False))
    again = Machine.from_dict(doc)
    assert again.to_dict() == machine.to_dict()


def _args(decoder, values):
    decoded = decoder.decode_batch(values)
    return decoded.readings, [GRID], decoded.readings.slots


def test_a_saved_state_is_not_changed_by_later_readings():
    rec = recording(normal_values(40))
    values = [v for _, v in reading_records("m", rec, "samples")]
    assembler = Assembler(RULES)
    assemble(assembler, values[:20], "samples")
    saved = assembler.machines["m"].to_dict()
    frozen = json.dumps(saved)
    assemble(assembler, values[20:], "samples")
    assert json.dumps(saved) == frozen


def test_readings_that_only_fill_an_open_bucket_are_a_change_of_the_batch():
    rec = recording(normal_values(40))
    values = [v for _, v in reading_records("m", rec, "tags")]  # one tag per channel and second
    decoder = ReadingDecoder("tags", [GRID.channels], 1_000_000)
    assembler = Assembler(RULES)
    assembler.assemble(*_args(decoder, values[:41]))  # the first tag of second 10 closes
    before = assembler.machines["m"].to_dict()
    assembler.begin()
    assembler.assemble(*_args(decoder, values[41:43]))  # two more channels of second 10
    before_batch, now = assembler.changed()["m"]
    assert before_batch == before and now != before


def test_on_an_hourly_grid_a_machine_read_every_20_minutes_is_not_silent():
    hour = 3600
    rules = Rules(
        grace=60 * MICROS, fill_limit=3, max_future=2 * hour * MICROS, silent=600 * MICROS
    )
    grid = Grid(("a",), 2, hour * MICROS)
    decoder = ReadingDecoder("tags", [grid.channels], 10_000)
    tag = '{{"machine_id":"{m}","channel":"a","timestamp":{t},"value":{v}}}'
    values = []
    for k in range(18):  # six hours, the two machines 10 minutes apart (more than `silent`)
        values.append(tag.format(m="early", t=k * 1200, v=k).encode())
        values.append(tag.format(m="later", t=k * 1200 + 600, v=k).encode())
    decoded = decoder.decode_batch(values)
    out = Assembler(rules).assemble(decoded.readings, [grid], decoded.readings.slots)
    assert out.refused == {}  # none late: their hour's bucket was still theirs
    assert {b.machine: b.buckets.tolist() for b in out.built} == {
        "early": [1, 2, 3, 4],
        "later": [1, 2, 3, 4],
    }
    # each bucket holds its last reading: 40 minutes past the hour, the third of three
    early = next(b for b in out.built if b.machine == "early")
    assert early.windows[:, -1, 0].tolist() == [5.0, 8.0, 11.0, 14.0]


def test_machines_quiet_for_an_hour_are_forgotten_as_the_partition_s_clock_moves_on():
    decoder = ReadingDecoder("samples", [GRID.channels], 1_000_000)
    values = dict.fromkeys(GRID.channels, 1.0)

    def samples(machine, times):
        docs = [{"machine_id": machine, "timestamp": t, "values": values} for t in times]
        return [json.dumps(d).encode() for d in docs]

    once = [s for n in range(100) for s in samples(f"seq-{n}", [10.0])]  # an id per record
    assembler = Assembler(RULES)
    assembler.assemble(*_args(decoder, once + samples("busy", range(21))))
    assembler.begin()
    assembler.assemble(*_args(decoder, samples("busy", range(3500, 3590))))
    assert len(assembler.machines) == 101  # closed as silent, not yet quiet for an hour
    assembler.begin()
    assembler.assemble(*_args(decoder, samples("busy", range(3590, 3700))))
    assert set(assembler.machines) == {"busy"}
    changed = assembler.changed()
    assert changed["seq-7"][0] is not None and changed["seq-7"][1] is None  # deleted in the store
    back = assembler.assemble(*_args(decoder, samples("seq-7", [3700.5])))
    assert back.refused == {} and "seq-7" in assembler.machines  # afresh, not late
