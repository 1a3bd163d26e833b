"""Samples and tags into reading arrays: channels by name, reasons for what cannot be read."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.inputs.readings import ReadingDecoder
from worker.inputs.windows import REASONS

CHANNELS = ["flow", "pressure"]


def sample(machine="pump-1", timestamp="2024-01-01T00:00:01.25Z", **values) -> bytes:
    return json.dumps({"machine_id": machine, "timestamp": timestamp, "values": values}).encode()


def tag(channel="flow", value=1.0, machine="pump-1", timestamp=1704067201.25, **extra) -> bytes:
    doc = {"machine_id": machine, "channel": channel, "timestamp": timestamp, "value": value}
    return json.dumps(doc | extra).encode()


def test_a_sample_gives_one_reading_per_known_channel_with_a_value():
    decoder = ReadingDecoder("samples", [CHANNELS], 10_000)
    decoded = decoder.decode_batch(
        [sample(pressure=2.5, flow=30, temperature=70.0), sample(flow=None, pressure=1.0)]
    )
    r = decoded.readings
    assert decoded.invalid == [] and decoded.extra == 1  # temperature: not the model's
    assert r.record.tolist() == [0, 0, 1]
    assert r.channel.tolist() == [1, 0, 1]  # by name, whatever the order in the record
    assert r.value.tolist() == [2.5, 30.0, 1.0]
    assert r.time.tolist() == [1704067201_250000] * 3
    assert r.machines == ["pump-1"] and r.machine.tolist() == [0, 0, 0]


def test_a_tag_of_another_quality_or_without_value_is_a_missing_reading():
    decoder = ReadingDecoder("tags", [CHANNELS], 10_000)
    values = [tag(), tag(quality="GOOD"), tag(quality="uncertain"), tag(value=None), tag("x")]
    decoded = decoder.decode_batch(values)
    r = decoded.readings
    assert r.good.tolist() == [True, True, False, False]
    assert np.isnan(r.value[2:]).all() and decoded.extra == 1


def test_records_that_cannot_be_read_get_their_reason():
    decoder = ReadingDecoder("samples", [CHANNELS], 300, route=lambda m: 0 if m != "x" else None)
    values = [
        b"",
        b"{",
        b"[1]",
        sample(timestamp=True),
        sample(timestamp="yesterday"),
        sample(timestamp=1.7e12),  # milliseconds
        b'{"machine_id":"a","timestamp":1,"values":{"flow":1e400}}',
        sample(machine="x", flow=1.0),
        b"x" * 301,
        sample(machine="", flow=1.0),
        sample(flow="1.0"),
        sample(flow=1.0),  # keyed by another machine
    ]
    keys = [None] * 11 + [b"pump-2"]
    decoded = decoder.decode_batch(values, keys)
    reasons = [why.reason for _, why in decoded.invalid]
    assert reasons == [
        "invalid_json", "invalid_json", "schema", "schema", "schema", "schema", "non_finite",
        "no_model", "too_large", "schema", "schema", "key_mismatch",
    ]  # fmt: skip
    assert "milliseconds" in decoded.invalid[5][1].message
    assert len(decoded.readings) == 0


def test_each_machine_reads_against_its_own_models_channels():
    route = {"pump-1": 0, "press-1": 1}.get
    decoder = ReadingDecoder("tags", [CHANNELS, ["force", "flow"]], 10_000, route=route)
    decoded = decoder.decode_batch([tag(machine="press-1"), tag(), tag("force", machine="pump-1")])
    r = decoded.readings
    assert r.machines == ["press-1", "pump-1"] and r.slots == [1, 0]
    assert r.channel.tolist() == [1, 0] and decoded.extra == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["samples", "tags"]),
    st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_any_bytes_give_readings_or_a_reason(form, value):
    decoded = ReadingDecoder(form, [CHANNELS], 10_000).decode_batch([value])
    assert all(why.reason in REASONS for _, why in decoded.invalid)
    assert len(decoded.invalid) == 1 or len(decoded.readings) <= len(CHANNELS)
