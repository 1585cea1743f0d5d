"""Property-based tests of the ingest's own parsers: twins and dead letters stay bounded and never raise."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.mqtt import Incoming
from ingest.twin_api import TwinStore
from ingest.worker import MAX_DEADLETTER_BYTES, _bad_message
from ems_contract.telemetry import SchemaError, encode_twin

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=30)


@FUZZ
@given(st.binary(max_size=3000) | json_values.map(lambda v: json.dumps(v).encode()),
       st.sampled_from(["ems/v1/s1/twin/a1", "ems/v1/s1/twin/a/b", "ems/v1//twin/a", "x", "ems/v1/s1/twin/\u00e9"]))
def test_twin_store_update_never_raises(payload: bytes, topic: str) -> None:
    store = TwinStore()
    assert store.update(topic, payload) in (True, False)


@FUZZ
@given(st.dictionaries(st.sampled_from(["v", "site", "asset", "ts_ms", "points", "thermal"]), json_values))
def test_a_mangled_twin_is_rejected_or_well_formed(changes: dict) -> None:
    doc = json.loads(encode_twin("s1", "a1", 1, {"p": {"value": 1.0, "unit": "A", "quality": "good", "ts_ms": 1}}))
    doc.update(changes)
    store = TwinStore()
    if store.update("ems/v1/s1/twin/a1", json.dumps(doc).encode()):
        twin = store.get("s1", "a1")
        assert twin is not None and isinstance(twin["points"], dict) and twin["v"] == 1
        json.dumps(twin).encode("utf-8")           # what the API serves always encodes


@FUZZ
@given(st.binary(max_size=300_000), st.text(max_size=5000))
def test_dead_letters_are_bounded_whatever_the_payload(payload: bytes, detail: str) -> None:
    letter = _bad_message(Incoming("ems/v1/s1/telemetry", payload, 1, 1, False, 1), SchemaError("not_json", detail))
    assert len(letter.payload) <= MAX_DEADLETTER_BYTES
    body = json.loads(letter.payload)
    assert body["payload_bytes"] == len(payload) and len(body["payload_sha256"]) == 64
