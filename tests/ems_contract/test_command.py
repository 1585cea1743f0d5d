"""The command contract: round trips, every refusal named, hostile payloads never crash the decoder."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from ems_contract.command import (
    MAX_PAYLOAD_BYTES, MAX_VALIDITY_MS, Command, CommandResult, command_result_topic, command_topic, decode_command,
    decode_result, encode_command, encode_result,
)
from ems_contract.telemetry import SchemaError

GOOD = Command(id="c-0001", site="sub-07", issued_ms=1_764_000_000_000, expires_ms=1_764_000_060_000,
               event="C0000001", control="exp_lim_w", value=5000.0)


def _payload(**change: object) -> bytes:
    body = json.loads(encode_command(GOOD))
    body.update(change)
    return json.dumps(body).encode()


def test_round_trip_and_topics() -> None:
    assert decode_command(encode_command(GOOD), "ems/v1/sub-07/command") == GOOD
    assert command_topic("sub-07") == "ems/v1/sub-07/command"
    assert command_result_topic("sub-07") == "ems/v1/sub-07/command-result"
    result = CommandResult(id="c-0001", site="sub-07", ts_ms=5, outcome="applied", readback=4999.5)
    assert decode_result(encode_result(result), "ems/v1/sub-07/command-result") == result
    connect = Command(id="c2", site="s", issued_ms=1, expires_ms=2, event=None, control="connect", value=False)
    assert decode_command(encode_command(connect)) == connect


@pytest.mark.parametrize(("change", "reason", "text"), [
    ({"v": 2}, "bad_version", "v must be 1"),
    ({"id": "has space"}, "bad_id", "id 'has space' must match"),
    ({"site": "../x"}, "bad_id", "site '../x' is not a valid id"),
    ({"expires_ms": 1_764_000_000_000}, "bad_field", "expires_ms must be after issued_ms"),
    ({"expires_ms": 1_764_000_000_000 + MAX_VALIDITY_MS + 1}, "bad_field", "at most 86400000 ms later"),
    ({"event": "xyz"}, "bad_field", "event must be null or an mRID"),
    ({"control": "opModFixedW"}, "bad_field", "control must be one of"),
    ({"value": True}, "bad_value", "must be a finite number of watts"),
    ({"value": 1e12}, "bad_value", "must be a finite number of watts"),
    ({"control": "connect", "value": 1}, "bad_value", "connect must be true or false"),
    ({"extra": 1}, "bad_field", "unknown keys ['extra']"),
    ({"issued_ms": -1}, "bad_field", "issued_ms must be an integer"),
    # A trailing newline passed the old "$"-anchored match; ids, mRIDs and issuers are matched whole.
    ({"id": "c-0001\n"}, "bad_id", "id 'c-0001\\n' must match"),
    ({"site": "sub-07\n"}, "bad_id", "site 'sub-07\\n' is not a valid id"),
    ({"event": "C0000001\n"}, "bad_field", "event must be null or an mRID"),
    ({"issuer": "alice\n"}, "bad_field", "issuer must match"),
    ({"issuer": "a" * 129}, "bad_field", "issuer must match"),
])
def test_refusals_name_field_and_value(change: dict, reason: str, text: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode_command(_payload(**change))
    assert info.value.reason == reason and text in str(info.value)


def test_refusals_of_form() -> None:
    for payload, reason in [(b"[]", "bad_field"), (b"{", "not_json"), (b"\xff", "not_json"),
                            (b'{"v":1,"value":NaN}', "bad_value"), (b" " * (MAX_PAYLOAD_BYTES + 1), "oversized"),
                            (b"[" * 4000, "not_json")]:
        with pytest.raises(SchemaError) as info:
            decode_command(payload)
        assert info.value.reason == reason
    with pytest.raises(SchemaError, match="site_mismatch"):
        decode_command(encode_command(GOOD), "ems/v1/other/command")
    with pytest.raises(SchemaError, match="reason is required when outcome is 'rejected'"):
        decode_result(b'{"v":1,"id":"a","site":"s","ts_ms":1,"outcome":"rejected","reason":null,"readback":null}')


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_schema_error(data: bytes) -> None:
    for decode in (decode_command, decode_result):
        try:
            decode(data)
        except SchemaError:
            pass


@given(st.dictionaries(st.sampled_from(["v", "id", "site", "issued_ms", "expires_ms", "event", "control", "value",
                                        "ts_ms", "outcome", "reason", "readback"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                 st.text(max_size=20)), min_size=6))
def test_random_objects_raise_only_schema_error(body: dict) -> None:
    payload = json.dumps(body).encode()
    for decode in (decode_command, decode_result):
        try:
            decode(payload)
        except SchemaError:
            pass


def test_a_manual_command_carries_its_issuer_and_a_control_decided_command_none() -> None:
    manual = Command(id="m-1", site="sub-07", issued_ms=1, expires_ms=2, event=None, control="exp_lim_w", value=1.0,
                     issuer="cert:otto")
    assert json.loads(encode_command(manual))["issuer"] == "cert:otto"
    assert decode_command(encode_command(manual)) == manual
    assert "issuer" not in json.loads(encode_command(GOOD))          # the 2030.5 path's payload is unchanged
    for bad in ("", "mallory\nadmin", "a" * 129, 7, None.__class__.__name__ + " x"):
        with pytest.raises(SchemaError, match="issuer must match") as info:
            decode_command(_payload(issuer=bad))
        assert info.value.reason == "bad_field"
    with pytest.raises(SchemaError, match="issuer must match"):
        encode_command(Command(**{**{f: getattr(manual, f) for f in Command.__slots__}, "issuer": "a b"}))
