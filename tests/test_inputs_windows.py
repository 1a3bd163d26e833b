"""The fast decode path against the pydantic model: the same windows, reasons and messages."""

# The decoder parses fields with msgspec and a poll's numbers with simdjson, and hands any
# record it cannot vouch for to the pydantic model (the contract's reference). These
# properties compare the two on generated records, valid and invalid, alone and in batches.

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.inputs.windows import Decoded, Decoder

CHANNELS = ["flow", "pressure", "current"]
WINDOW = 4
OTHER = (2, ["a", "b"])  # a second model's shape, for the routed decoder


class CheckedOnly(Decoder):
    """The reference: every record through the pydantic model."""

    def _fast(self, value):
        return None


def outcome(decoded: Decoded) -> tuple:
    """Everything a batch's decoding decides, numbers bit for bit (-0.0 is not 0.0)."""
    arrays = [
        (g.slot, g.windows.shape, g.windows.tobytes(), g.members.tolist()) for g in decoded.groups
    ]
    return decoded.valid, decoded.invalid, arrays


def route(machine: str) -> int | None:
    return None if machine.startswith("x") else (1 if machine.startswith("b") else 0)


def decoders(max_bytes: int = 20_000) -> list[tuple[Decoder, Decoder]]:
    shapes = [(WINDOW, CHANNELS), OTHER]
    return [
        (Decoder(WINDOW, CHANNELS, max_bytes), CheckedOnly(WINDOW, CHANNELS, max_bytes)),
        (Decoder.routed(shapes, route, max_bytes), CheckedOnly.routed(shapes, route, max_bytes)),
    ]


def same(values: list[bytes | None], max_bytes: int = 20_000) -> None:
    for fast, checked in decoders(max_bytes):
        assert outcome(fast.decode_batch(values)) == outcome(checked.decode_batch(values)), values


# Numbers as producers write them: repr floats (17 digits), short decimals, integers of any
# size, exponents at the edges of the double range, negative zero.
numbers = (
    st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.6g}")
    | st.integers().map(str)
    | st.integers(-(2**70), 2**70).map(str)
    | st.sampled_from(
        [
            "-0",
            "-0.0",
            "0e0",
            "1E5",
            "1e+5",
            "1e-400",
            "1e308",
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "4.9e-324",
            "1e309",
            "-1e999",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "1" + "0" * 40,
            "0.1e1",
            "123456789012345678901234567890e-20",
        ]
    )  # fmt: skip
)
# What else a cell may hold: a near-number or another JSON value (invalid records).
others = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "true", "null", '"1.0"', "[]", "[1.0]", "{}", "01", "1.",
     ".5", "+1", "1e", "--1", "0x10", '"e"', "1 2"]
)  # fmt: skip
machine_ids = st.text(min_size=0, max_size=260) | st.sampled_from(
    ["pump-1", "b-2", "x-3", "é" * 255]
)
timestamps = (
    st.sampled_from(
        [
            '"2020-03-09T10:16:38Z"',
            '"2020-03-09T12:16:38+02:00"',
            '"2020-03-09 10:16:38"',
            "1583748998",
            "1583748998.5",
            "1583748998000",
            "1e20",
            "-1",
            "1e400",
            "true",
            "null",
            '"soon"',
            '"' + "2" * 65 + '"',
            "1180591620717411303424",
            "[1]",
        ]
    )  # fmt: skip
    | st.integers(0, 2**34).map(str)
    | st.floats(allow_nan=False).map(repr)
    | st.text(max_size=70).map(json.dumps)
)
spaces = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])


@st.composite
def records(draw) -> bytes:
    """A window document written by hand, so every token and space is the test's choice;
    about half are windows of a model's shape, the rest broken in one or more ways."""
    broken = draw(st.booleans())
    shapes = [(WINDOW, len(CHANNELS)), (2, 2)] + ([(WINDOW, 2), (1, 3)] if broken else [])
    window, width = draw(st.sampled_from(shapes))
    sp = draw(spaces)
    cells = numbers | others if broken and draw(st.booleans()) else numbers
    more = st.sampled_from([0, 0, 0, -1, 1]) if broken else st.just(0)
    rows = []
    for _ in range(window + draw(more)):
        row = [draw(cells) for _ in range(width + draw(more))]
        rows.append("[" + sp + ("," + sp).join(row) + sp + "]")
    values = "[" + ("," + sp).join(rows) + "]"
    if broken:
        values = draw(st.sampled_from([values, values, values, '"1,2,3"', "null", "[]"]))
    prefix = "b" if width == 2 else ""  # the routed decoder's second model serves b*
    fields = {
        "machine_id": json.dumps(prefix + draw(machine_ids)),
        "timestamp": draw(timestamps),
        "values": values,
    }
    channels = draw(
        st.sampled_from(
            [None, CHANNELS, ["a", "b"], CHANNELS[::-1], "null", 7] if broken else [None]
        )
    )
    if channels is not None:
        fields["channels"] = channels if isinstance(channels, str) else json.dumps(channels)
    if draw(st.booleans()):
        fields["site"] = draw(st.sampled_from(['"plant-2"', "NaN", "[[[1]]]", '{"a": [1, {}]}']))
    names = draw(st.permutations(list(fields)))
    if broken and draw(st.integers(0, 4)) == 0:
        names = names[:-1]  # a field missing
    body = ("," + sp).join(f'"{name}":{sp}{fields[name]}' for name in names)
    if draw(st.integers(0, 9)) == 0:
        body += f',"values":{values}'  # a duplicate key: the last one stands
    return ("{" + sp + body + sp + "}").encode()


@settings(max_examples=300, deadline=None)
@given(records())
def test_the_fast_path_decides_every_record_as_the_pydantic_model(value):
    same([value])


@settings(max_examples=50, deadline=None)
@given(st.lists(records(), min_size=1, max_size=12))
def test_a_batch_decodes_as_its_records_do_one_by_one(values):
    same(values)
    fast, _ = decoders()[1]
    decoded = fast.decode_batch(values)
    alone = [fast.decode_batch([value]) for value in values]
    assert [i for i, _ in decoded.valid] == [k for k, one in enumerate(alone) if one.valid]
    assert [p for _, p in decoded.invalid] == [p for one in alone for _, p in one.invalid]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_any_bytes_are_decided_alike(value):
    same([value, None, b""], max_bytes=150)


def test_nesting_the_pydantic_parser_refuses_is_refused_on_the_fast_path_too():
    for depth in (150, 240, 260, 400, 2_000):
        site = "[" * depth + "]" * depth
        value = b'{"machine_id":"p","timestamp":1,"values":[[1,2,3],[1,2,3],[1,2,3],[1,2,3]],'
        same([value + f'"site":{site}}}'.encode()], max_bytes=10_000)


def test_plain_windows_take_the_fast_path():
    # Not the reference's decision (the properties above check that): its speed. A window
    # of plain numbers must not need the pydantic model.
    value = json.dumps({"machine_id": "m", "timestamp": 1, "values": np.ones((WINDOW, 3)).tolist()})
    decoder = Decoder(WINDOW, CHANNELS, 10_000)
    assert decoder._fast(value.encode()) is not None
