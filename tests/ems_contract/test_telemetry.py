"""Schema v1: round trip and every rejection reason."""

import json

import pytest

from ems_contract.telemetry import (Reading, SchemaError, check_finite, decode_batch, encode_batch, site_from_topic,
                               telemetry_subscription, telemetry_topic)


def _readings(n: int = 3) -> list[Reading]:
    return [Reading(seq=10 + i, ts_ms=1_764_000_000_000 + i, asset="tx1", point="oil_temp",
                    value=60.0 + i, unit="degC") for i in range(n)]


def test_round_trip_keeps_every_field() -> None:
    payload = encode_batch("sub-07", _readings(), sent_ms=1_764_000_000_500)
    batch = decode_batch(payload, topic=telemetry_topic("sub-07"))
    assert (batch.site, batch.seq_first, batch.seq_last) == ("sub-07", 10, 12)
    assert batch.readings == tuple(_readings())


def test_topics() -> None:
    assert telemetry_topic("sub-07") == "ems/v1/sub-07/telemetry"
    assert site_from_topic("ems/v1/sub-07/telemetry") == "sub-07"
    assert telemetry_subscription("ingest") == "$share/ingest/ems/v1/+/telemetry"
    with pytest.raises(SchemaError) as err:
        telemetry_topic("bad/site")
    assert err.value.reason == "bad_id"


def _mutated(**changes: object) -> bytes:
    body = json.loads(encode_batch("sub-07", _readings(), sent_ms=1))
    for key, value in changes.items():
        if key.startswith("r0_"):
            body["readings"][0][key[3:]] = value
        elif value is ...:
            del body[key]
        else:
            body[key] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"[1, 2]", "bad_field"),
    (_mutated(v=2), "bad_version"),
    (_mutated(seq_first=...), "bad_field"),
    (_mutated(r0_seq=None), "bad_field"),
    (_mutated(r0_value="hot"), "bad_value"),
    (_mutated(r0_value=None), "bad_value"),
    (_mutated(r0_quality="great"), "bad_field"),
    (_mutated(seq_last=99), "bad_seq"),
    (b'{"v": 1, "site": "s", "seq_first": 1, "seq_last": 1, "sent_ms": 1, "readings": [{"seq": 1, "ts_ms": 1, '
     b'"asset": "a", "point": "p", "value": NaN, "unit": "", "quality": "good"}]}', "bad_value"),
    (b"x" * 300_000, "oversized"),
])
def test_rejections_name_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(SchemaError) as err:
        decode_batch(payload)
    assert err.value.reason == reason


def test_site_must_match_topic() -> None:
    with pytest.raises(SchemaError) as err:
        decode_batch(encode_batch("sub-07", _readings(), 1), topic="ems/v1/sub-08/telemetry")
    assert err.value.reason == "site_mismatch"


def test_null_value_allowed_for_device_error() -> None:
    r = Reading(seq=1, ts_ms=1, asset="a", point="p", value=None, unit="", quality="device_error")
    assert decode_batch(encode_batch("s", [r], 1)).readings[0].value is None


@pytest.mark.parametrize("values, bad", [
    ([1.0, None, 2.5], None), ([1e308, 1e308, -5.0], None),      # a None; finite values whose sum overflows
    ([1.0, float("nan")], "nan"), ([None, float("-inf")], "-inf"), ((v for v in [2.0, float("inf")]), "inf"),
])
def test_check_finite_looks_at_each_value_when_the_sum_cannot_tell(values, bad: str | None) -> None:
    if bad is None:
        check_finite(values)
    else:
        with pytest.raises(ValueError, match=f"value {bad} is not a finite number"):
            check_finite(values)
