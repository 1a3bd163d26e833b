"""Hostile input records: near-valid JSON, bad encodings, huge and deep documents."""

# Whatever the bytes, the decoder returns a window or one of the documented reasons, within
# bounded time, memory and stack; and whatever finite numbers a window holds, the pipeline
# publishes finite scores (RFC 8259 JSON) or a dead letter, never NaN or infinity.

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from model.scoring import Scorer
from worker.inputs.windows import REASONS, Decoder
from worker.pipeline import Pipeline, Topics, event_id

CHANNELS = ["flow", "pressure", "current"]
WINDOW = 4
MAX_BYTES = 4_000
ROWS = [[1.0, 2.0, 3.0], [1.5, 2.5, 3.5], [2.0, 3.0, 4.0], [2.5, 3.5, 4.5]]
ROOT = Path(__file__).resolve().parents[1]


def decode(value: bytes | None, max_bytes: int = MAX_BYTES) -> str | None:
    """The reason a record is refused, or None when it is a scoreable window."""
    decoded = Decoder(WINDOW, CHANNELS, max_bytes).decode_batch([value])
    assert len(decoded.valid) + len(decoded.invalid) == 1
    if decoded.valid:
        assert decoded.windows.shape == (1, WINDOW, len(CHANNELS))
        assert decoded.windows.dtype == np.float64 and np.isfinite(decoded.windows).all()
        assert decoded.valid[0][1].timestamp.endswith("Z")  # RFC 3339, UTC
        return None
    assert decoded.windows.shape == (0, WINDOW, len(CHANNELS))
    problem = decoded.invalid[0][1]
    assert problem.reason in REASONS
    assert problem.message and "\n" not in problem.message and len(problem.message) <= 300
    return problem.reason


def document(**fields: object) -> dict:
    return {"machine_id": "pump-1", "timestamp": "2020-03-09T10:16:38Z", "values": ROWS} | fields


def encode(doc: dict) -> bytes:
    return json.dumps(doc).encode()


# Near-valid documents: one field, row or cell wrong in one way.
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
finite = st.floats(allow_nan=False, allow_infinity=False)
good_rows = st.lists(
    st.lists(finite, min_size=len(CHANNELS), max_size=len(CHANNELS)),
    min_size=WINDOW,
    max_size=WINDOW,
)
not_a_number = json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, int | float))


@settings(max_examples=150, deadline=None)
@given(rows=good_rows, machine_id=st.text(min_size=1, max_size=40), stamp=st.integers(0, 2**32))
def test_documents_within_the_contract_are_windows(rows, machine_id, stamp):
    assert decode(encode(document(values=rows, machine_id=machine_id, timestamp=stamp))) is None


@settings(max_examples=150, deadline=None)
@given(
    field=st.sampled_from(["machine_id", "timestamp", "values", "cell"]),
    wrong=not_a_number,
    row=st.integers(0, WINDOW - 1),
    column=st.integers(0, len(CHANNELS) - 1),
)
def test_a_value_of_the_wrong_type_is_schema(field, wrong, row, column):
    assume(not (field in ("machine_id", "timestamp") and isinstance(wrong, str)))  # right type
    if field == "values" and isinstance(wrong, list):
        wrong = {"rows": wrong}  # a list of rows could be a shape problem instead
    if field == "cell":
        rows = [list(r) for r in ROWS]
        rows[row][column] = wrong
        doc = document(values=rows)
    else:
        doc = document(**{field: wrong})
    assert decode(encode(doc)) == "schema"


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=0, max_size=9),
    cell=finite,
)
def test_rows_and_columns_other_than_the_model_s_are_shape(lengths, cell):
    rows = [[cell] * n for n in lengths]
    expected = None if lengths == [len(CHANNELS)] * WINDOW else "shape"
    assert decode(encode(document(values=rows))) == expected


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e309", "1e400", "-1e400", "9" * 400, "1e308e1"]
NOT_JSON_NUMBERS = ["0x10", "+1", ".5", "1.", "1e", "--1", "1_000", "∞", "nan", "inf"]


@settings(max_examples=150, deadline=None)
@given(
    token=st.sampled_from(NON_FINITE + NOT_JSON_NUMBERS),
    row=st.integers(0, WINDOW - 1),
    column=st.integers(0, len(CHANNELS) - 1),
)
def test_numbers_beyond_float_range_and_non_json_numbers_are_never_scored(token, row, column):
    rows = [list(r) for r in ROWS]
    rows[row][column] = "@CELL@"
    value = encode(document(values=rows)).replace(b'"@CELL@"', token.encode())
    reason = decode(value)
    if token in NOT_JSON_NUMBERS or token == "1e308e1":
        assert reason == "invalid_json"
    else:  # NaN and Infinity tokens, or numbers that overflow a float64
        assert reason in ("non_finite", "invalid_json")


@settings(max_examples=100, deadline=None)
@given(stamp=st.text(max_size=64) | st.floats() | st.integers() | st.just(1e308 * 10))
def test_any_timestamp_is_a_moment_or_schema(stamp):
    value = encode(document(timestamp=stamp)) if isinstance(stamp, str) else None
    if value is None:  # NaN and infinity as their JavaScript tokens, as a careless producer would
        value = encode(document(timestamp="@T@")).replace(b'"@T@"', json.dumps(stamp).encode())
    assert decode(value) in (None, "schema", "invalid_json")


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(0, 10_000),
    insert=st.binary(min_size=0, max_size=3),
    fields=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
)
def test_damaged_documents_give_a_window_or_a_reason(cut, insert, fields):
    value = encode(document(**fields))
    cut %= len(value) + 1
    decode(value[:cut] + insert + value[cut:])  # its assertions: one outcome, a known reason
    decode(value[:cut])


TEXT = json.dumps(document(machine_id="pömpe-1 ✓"), ensure_ascii=False)  # not ASCII


@pytest.mark.parametrize(
    "value",
    [
        TEXT.encode("utf-16"),
        TEXT.encode("utf-16-le"),
        TEXT.encode("utf-16-be"),
        TEXT.encode("utf-32"),
        TEXT.encode("latin-1", errors="replace"),
        TEXT.encode("cp1252", errors="replace"),
        TEXT.replace("✓", "\ud800").encode("utf-8", errors="surrogatepass"),  # CESU-style
        TEXT.replace("✓", "\\ud800").encode(),  # a lone surrogate escape
        TEXT.replace("✓", "\\udc00\\ud800").encode(),  # a pair in the wrong order
        TEXT.encode().replace("ö".encode(), b"\xc0\xb6"),  # overlong UTF-8
        TEXT.encode().replace("ö".encode(), b"\xf4\x90\x80\x80"),  # beyond U+10FFFF
        TEXT.encode().replace("✓".encode(), b"\xe2\x9c"),  # a character cut short
    ],
    ids=lambda v: v[:12].hex(),
)
def test_text_that_is_not_utf_8_json_is_invalid_json(value):
    assert decode(TEXT.encode()) is None  # the same document in UTF-8 is a window
    assert decode(value) == "invalid_json"


def test_a_byte_order_mark_is_refused_or_ignored_never_a_crash():
    # RFC 8259 lets a parser ignore a UTF-8 BOM or refuse it; either way, no crash.
    assert decode(b"\xef\xbb\xbf" + TEXT.encode()) in (None, "invalid_json")


@pytest.mark.parametrize(
    "value",
    [
        b'{"machine_id":"p","timestamp":1,"values":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"machine_id":"p","timestamp":1,"channels":' + b"[" * 50_000 + b"}",
    ],
    ids=["deep-values", "unclosed", "deep-objects", "deep-channels"],
)
def test_deep_nesting_is_invalid_json_without_exhausting_the_stack(value):
    started = time.process_time()  # CPU seconds: work done, whatever the neighbours do
    assert decode(value, max_bytes=10 * len(value)) == "invalid_json"
    assert time.process_time() - started < 1.0


PROBE = textwrap.dedent(
    """
    import json, sys, time
    from worker.inputs.windows import Decoder

    HEAD = b'{"machine_id":"p","timestamp":1,"values":['
    HUGE = {  # up to 1 MB (the default FAULTWATCH_MAX_RECORD_BYTES), and one far over it
        "far over the limit": lambda: b"[" + b"0," * 25_000_000 + b"0]",
        "many short rows": lambda: HEAD + b"[0]," * 249_000 + b"[0]]}",
        "many empty rows": lambda: HEAD + b"[]," * 332_000 + b"[]]}",
        "many keys": lambda: b"{" + b",".join(b'"k%d":0' % i for i in range(90_000)) + b"}",
        # A quarter of the limit tells one error per item from the first error only.
        "numbers, not rows": lambda: HEAD + b"0," * 124_000 + b"0]}",
        "strings, not numbers": lambda: HEAD + b'["' + b'a","' * 62_000 + b'a"]]}',
    }
    def memory(field):  # kB; writing 5 to clear_refs resets the peak (VmHWM) to now
        return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])

    decoder = Decoder(4, ["a", "b", "c"], max_bytes=1_000_000)
    report = {}
    for name in sys.argv[1:]:
        value = HUGE[name]()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, started = memory("VmRSS"), time.process_time()  # CPU, not wall, seconds
        reasons = [p.reason for _, p in decoder.decode_batch([value] * 2).invalid]
        report[name] = {
            "bytes": len(value),
            "reasons": reasons,
            "seconds": time.process_time() - started,
            "grew_mib": (memory("VmHWM") - before) / 1024,
        }
        del value
    print(json.dumps(report))
    """
)


def probe(*names: str) -> dict:
    """Decode two copies of each case in a fresh process: reasons, CPU seconds, peak growth."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("measuring peak memory needs Linux's /proc/self/clear_refs")
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *names], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_huge_records_neither_exhaust_memory_nor_take_long():
    cases = probe("far over the limit", "many short rows", "many empty rows", "many keys")
    assert cases["far over the limit"]["reasons"] == ["too_large"] * 2  # before any parsing
    assert cases["far over the limit"]["seconds"] < 0.1
    assert cases["far over the limit"]["grew_mib"] < 5  # not even copied
    assert cases["many short rows"]["reasons"] == ["shape"] * 2
    assert cases["many empty rows"]["reasons"] == ["shape"] * 2
    assert cases["many keys"]["reasons"] == ["schema"] * 2
    for name, case in cases.items():
        assert name == "far over the limit" or case["bytes"] <= 1_000_000  # within the limit
        assert case["seconds"] < 3, (name, case)
        # Two 1 MB records one after the other: a small multiple of one record, released.
        assert case["grew_mib"] < 100, (name, case)


def test_a_record_of_wrong_items_is_refused_at_its_first_wrong_item():
    cases = probe("numbers, not rows", "strings, not numbers")
    for name, case in cases.items():
        assert case["reasons"] == ["schema"] * 2, name
        assert case["seconds"] < 0.5, (name, case)
        assert case["grew_mib"] < 25, (name, case)  # what parsing the record alone takes


# The pipeline: finite JSON numbers of any size must not become NaN or infinite scores.


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes
    key: bytes | None = None
    topic: str = "windows"
    partition: int = 0


@pytest.fixture(scope="module")
def scorer(tiny_model_path) -> Scorer:
    return Scorer.load(tiny_model_path)


def strict_json(value: bytes) -> dict:
    """RFC 8259 only: NaN, Infinity and -Infinity are not JSON."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} published in {value[:200]!r}")

    return json.loads(value, parse_constant=refuse)


magnitudes = st.sampled_from([0.0, 1e-300, 1e-5, 1.0, 1e5, 1e15, 1e19, 1e38, 3.5e38, 1e154, 1e300])
cells = finite | magnitudes | magnitudes.map(lambda m: -m) | st.just(1.7976931348623157e308)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_finite_window_is_scored_finitely_or_dead_lettered(scorer, data):
    shape = (scorer.window, len(scorer.channels))
    base = np.array([32.0, 1.2, 2.0, 70.0])  # a pump's normal levels
    windows = []
    for _ in range(data.draw(st.integers(1, 4), label="windows")):
        rows = np.tile(base, (scorer.window, 1))
        for _ in range(data.draw(st.integers(0, 6), label="cells changed")):
            i, j = data.draw(st.tuples(st.integers(0, shape[0] - 1), st.integers(0, shape[1] - 1)))
            rows[i, j] = data.draw(cells)
        if data.draw(st.booleans(), label="scale all"):
            with np.errstate(over="ignore"):  # 1e300 x 70 is infinite: decoded as non_finite
                rows = rows * data.draw(magnitudes, label="scale")
        windows.append(rows)
    records = [
        Record(
            offset, json.dumps({"machine_id": "m", "timestamp": 0, "values": w.tolist()}).encode()
        )
        for offset, w in enumerate(windows)
    ]
    pipeline = Pipeline(scorer, Topics("events", "dlq", "scores"), max_record_bytes=100_000)
    with np.errstate(all="ignore"):
        result = pipeline.process(records)

    assert np.isfinite(result.scores).all()
    outcome: dict[int, str] = {}
    for output in result.outputs:
        if output.topic == "dlq":
            h = dict(output.headers)
            assert h["faultwatch.error.reason"] == b"non_finite"
            outcome[int(h["faultwatch.source.offset"])] = "dlq"
            continue
        doc = strict_json(output.value)
        assert math.isfinite(doc["score"]) and doc["score"] >= 0
        offset = doc["source"]["offset"]
        if output.topic == "scores":
            assert outcome.setdefault(offset, "scores") == "scores"
            assert doc["anomaly"] == (doc["score"] > scorer.threshold)
        else:
            assert doc["event_id"] == event_id("windows", 0, offset)
            assert doc["score"] > scorer.threshold
            shares = [c["share"] for c in doc["top_channels"]]
            assert all(math.isfinite(s) and 0 <= s <= 1 for s in shares)
    assert sorted(outcome) == list(range(len(records)))  # each record: a score or a dead letter
