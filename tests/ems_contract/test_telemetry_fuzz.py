"""Property-based tests: whatever bytes arrive, the telemetry decoder answers a Batch or a SchemaError."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ems_contract.telemetry import (MAX_INT64, Batch, Reading, SchemaError, decode_batch, encode_batch,
                                    telemetry_topic, valid_unit)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
reading_fields = st.fixed_dictionaries({}, optional={
    "seq": json_values | st.integers(min_value=-5, max_value=2**64), "ts_ms": json_values | st.integers(),
    "asset": st.sampled_from(["tx1", "", "a/b", "tx1\u0000"]) | json_values,
    "point": st.sampled_from(["oil_temp", "load"]) | json_values,
    "value": json_values | st.floats(), "unit": st.text(max_size=40) | json_values,
    "quality": st.sampled_from(["good", "stale", "device_error", "loop_fault", "great"]) | json_values,
})
documents = st.fixed_dictionaries({}, optional={
    "v": st.sampled_from([1, 1.0, True, "1", 2]) | json_values, "site": st.sampled_from(["sub-07", "x"]) | json_values,
    "seq_first": json_values, "seq_last": json_values, "sent_ms": json_values,
    "readings": st.lists(reading_fields | json_values, max_size=5) | json_values,
})


def _check(payload: bytes) -> None:
    try:
        batch = decode_batch(payload, telemetry_topic("sub-07"))
    except SchemaError as exc:
        assert exc.reason and len(str(exc)) < 1000, str(exc)[:200]
        return
    assert isinstance(batch, Batch) and batch.site == "sub-07"
    for reading in batch.readings:          # what comes out fits what it becomes
        assert 1 <= reading.seq <= MAX_INT64 and 0 <= reading.ts_ms <= MAX_INT64
        assert reading.value is None or (type(reading.value) is float and math.isfinite(reading.value))
        assert valid_unit(reading.unit) and reading.unit.encode("utf-8")


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(payload: bytes) -> None:
    _check(payload)


@FUZZ
@given(documents)
def test_arbitrary_json_documents(doc: dict) -> None:
    _check(json.dumps(doc).encode())


@FUZZ
@given(documents, st.integers(min_value=0, max_value=400), st.sampled_from(["[", "{"]))
def test_documents_with_deep_junk_and_mangled_bytes(doc: dict, depth: int, opener: str) -> None:
    text = json.dumps(doc)
    junk = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "0" + "}" * depth
    _check(text.replace("{", '{"junk": ' + junk + ", ", 1).encode() if text.startswith("{") else text.encode())
    _check(text.encode()[: len(text) // 2])


@FUZZ
@given(st.lists(st.tuples(st.integers(min_value=1, max_value=MAX_INT64), st.integers(min_value=0, max_value=MAX_INT64),
                          st.floats(allow_nan=False, allow_infinity=False),
                          st.text(max_size=32).filter(valid_unit)), min_size=1, max_size=20, unique_by=lambda t: t[0]))
def test_whatever_the_encoder_writes_the_decoder_reads_back(rows: list) -> None:
    readings = sorted((Reading(seq, ts, "tx1", "p1", value, unit) for seq, ts, value, unit in rows), key=lambda r: r.seq)
    batch = decode_batch(encode_batch("sub-07", readings, 1), telemetry_topic("sub-07"))
    assert batch.readings == tuple(readings)
