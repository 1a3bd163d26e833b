"""The input contract: every breach has its stable reason; no input crashes the decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.inputs.windows import REASONS, Decoder, Invalid, Origin

CHANNELS = ["flow", "pressure", "current"]
WINDOW = 4
ROWS = [[1.0, 2.0, 3.0], [1.5, 2.5, 3.5], [2.0, 3.0, 4.0], [2.5, 3.5, 4.5]]


def message(**fields) -> bytes:
    document = {"machine_id": "pump-1", "timestamp": "2020-03-09T10:16:38Z", "values": ROWS}
    return json.dumps({**document, **fields}).encode()


@pytest.fixture
def decoder() -> Decoder:
    return Decoder(WINDOW, CHANNELS, max_bytes=2_000)


def test_a_valid_window_decodes_to_its_values(decoder):
    decoded = decoder.decode_batch([message(channels=CHANNELS, site="plant-2")])  # extra: ignored
    assert decoded.valid == [(0, Origin("pump-1", "2020-03-09T10:16:38Z"))]
    np.testing.assert_array_equal(decoded.windows[0], np.array(ROWS))


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2020-03-09T10:16:38Z", "2020-03-09T10:16:38Z"),
        ("2020-03-09T12:16:38+02:00", "2020-03-09T10:16:38Z"),
        ("2020-03-09 10:16:38", "2020-03-09T10:16:38Z"),  # naive: UTC
        (1583748998, "2020-03-09T10:16:38Z"),
        (1583748998.5, "2020-03-09T10:16:38.500000Z"),
    ],
)
def test_timestamps_become_rfc3339_utc(decoder, timestamp, expected):
    assert decoder.decode_batch([message(timestamp=timestamp)]).valid[0][1].timestamp == expected


@pytest.mark.parametrize(
    ("timestamp", "said"),
    [
        (1583748998000, "epoch milliseconds?"),  # the contract is seconds: said, not guessed
        (1e20, "out of range for epoch seconds"),
        ("1e400", "not a finite number"),
        ("yesterday", "neither RFC 3339 nor epoch seconds"),
        ("0001-01-01T00:00:00+01:00", "out of range in UTC"),
        ("9999-12-31T23:59:59-01:00", "out of range in UTC"),
    ],
)
def test_a_timestamp_that_is_no_moment_is_schema_and_says_why(decoder, timestamp, said):
    (_, invalid), *_ = decoder.decode_batch([message(timestamp=timestamp)]).invalid
    assert invalid.reason == "schema" and said in invalid.message


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "invalid_json"),
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (message().replace(b"pump-1", "pömp".encode("latin-1")), "invalid_json"),
        (message() + b" trailing", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "too_large"),
        (b'{"values":' + b"[" * 900 + b"]" * 900 + b"}", "invalid_json"),  # deep, not a crash
        (b"[]", "schema"),
        (b'"pump-1"', "schema"),
        (json.dumps({"machine_id": "pump-1", "values": ROWS}).encode(), "schema"),
        (message(machine_id=""), "schema"),
        (message(machine_id=7), "schema"),
        (message(timestamp=True), "schema"),
        (message(timestamp="soon"), "schema"),
        (message(timestamp="2020-02-30T10:16:38Z"), "schema"),  # the RFC 3339 form, no such day
        (message(timestamp=1e300), "schema"),
        (message(values=[["1.0", 2.0, 3.0]] * WINDOW), "schema"),
        (message(values=[[True, 2.0, 3.0]] * WINDOW), "schema"),
        (message(values=[[None, 2.0, 3.0]] * WINDOW), "schema"),
        (message(values="1,2,3"), "schema"),
        (message(values=ROWS[:-1]), "shape"),
        (message(values=ROWS + ROWS[:1]), "shape"),
        (message(values=[r[:-1] for r in ROWS]), "shape"),
        (message(values=[r[:1] for r in ROWS]), "shape"),  # numpy would broadcast these two
        (message(values=ROWS[:1]), "shape"),
        (message(values=ROWS[:-1] + [ROWS[-1] + [1.0]]), "shape"),
        (message(values=[[[1.0, 2.0, 3.0]]] * WINDOW), "schema"),
        (message(channels=CHANNELS[::-1]), "channels"),
        (message(channels=CHANNELS[:2]), "channels"),
        (message().replace(b"2.5", b"NaN", 1), "non_finite"),
        (message().replace(b"2.5", b"-Infinity", 1), "non_finite"),
        (message().replace(b"2.5", b"1e999", 1), "non_finite"),
        (message().replace(b"2.5", b"9" * 400, 1), "non_finite"),  # beyond float range
    ],
)
def test_each_contract_breach_has_its_reason(decoder, value, reason):
    result = decoder.decode_batch([value])
    assert [problem.reason for _, problem in result.invalid] == [reason]
    assert result.windows.shape == (0, WINDOW, len(CHANNELS))
    message_ = result.invalid[0][1].message
    assert message_ and "\n" not in message_ and len(message_) <= 300


def test_too_large_is_decided_before_parsing(decoder):
    huge = message(padding="x" * 5_000)
    invalid = decoder.decode_batch([huge]).invalid
    assert invalid == [(0, Invalid("too_large", f"{len(huge)} bytes, the limit is 2000"))]


def test_a_batch_keeps_order_and_one_array_for_the_valid_windows(decoder):
    values = [message(), b"{", message(values=ROWS[::-1]), message().replace(b"2.5", b"NaN", 1)]
    decoded = decoder.decode_batch(values)
    assert [i for i, _ in decoded.valid] == [0, 2]
    assert [(i, p.reason) for i, p in decoded.invalid] == [(1, "invalid_json"), (3, "non_finite")]
    np.testing.assert_array_equal(decoded.windows, np.array([ROWS, ROWS[::-1]]))
    assert decoded.windows.dtype == np.float64


def test_reasons_are_the_documented_codes():
    assert REASONS == (
        "too_large", "invalid_json", "schema", "no_model", "channels", "shape", "non_finite",
        "key_mismatch", "late", "future",
    )  # fmt: skip


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_give_a_window_or_a_reason(value):
    decoded = Decoder(WINDOW, CHANNELS, max_bytes=200).decode_batch([value])
    assert len(decoded.valid) + len(decoded.invalid) == 1
    assert all(p.reason in REASONS for _, p in decoded.invalid)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
        min_size=WINDOW,
        max_size=WINDOW,
    )
)
def test_well_formed_windows_are_valid_exactly_when_finite(rows):
    value = json.dumps({"machine_id": "m", "timestamp": 0, "values": rows}).encode()
    decoded = Decoder(WINDOW, CHANNELS, max_bytes=10_000).decode_batch([value])
    finite = bool(np.isfinite(np.array(rows)).all())
    assert len(decoded.valid) == int(finite)
    if finite:
        np.testing.assert_array_equal(decoded.windows[0], np.array(rows))
