"""Hostile telemetry against a real broker, ingest worker and Prometheus: nothing stops the worker.

Every poison message is dead-lettered with its reason, none of it reaches the TSDB, and readings
of another site sent afterwards are all stored exactly once. The poison is published both while
the worker is away (so it is the first thing the worker reads when it comes back) and while it runs.
"""

from __future__ import annotations

import hashlib
import json
import queue
import time
import urllib.request

import pytest

from ems_contract.telemetry import MAX_PAYLOAD_BYTES, Reading, encode_batch, telemetry_topic
from ingest.worker import MAX_DEADLETTER_BYTES
from ingest_support import Stream, lost_and_duplicated, promql_count

pytestmark = pytest.mark.integration

EVIL = "sub-evil"
NOW_MS = int(time.time() * 1000)


def _reading(**overrides: object) -> dict:
    reading = {"seq": 1, "ts_ms": NOW_MS - 10_000, "asset": "tx1", "point": "oil_temp", "value": 61.5,
               "unit": "degC", "quality": "good"}
    reading.update(overrides)
    return reading


def _batch(*readings: dict, **overrides: object) -> dict:
    readings = readings or (_reading(),)
    seqs = [r["seq"] for r in readings if isinstance(r, dict) and isinstance(r.get("seq"), int)] or [1]
    body = {"v": 1, "site": EVIL, "seq_first": min(seqs), "seq_last": max(seqs), "sent_ms": NOW_MS,
            "readings": list(readings)}
    body.update(overrides)
    return body


def _raw(text: str) -> bytes:
    """A payload written by hand (what json.dumps could not produce: huge literals, lone surrogates)."""
    return text.encode()


def _with_value_literal(literal: str) -> bytes:
    return _raw(json.dumps(_batch()).replace('"value": 61.5', f'"value": {literal}'))


def _nested(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    inner = opener * depth + closer * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth
    return _raw(json.dumps(_batch()).replace('"readings": [', f'"junk": {inner}, "readings": ['))


# (case id, payload, the dead-letter reason expected)
CASES: list[tuple[str, bytes, str]] = [
    ("array nested 10,000 deep", _raw("[" * 10_000 + "]" * 10_000), "too_deep"),
    ("object nested 10,000 deep", _raw('{"a":' * 10_000 + "1" + "}" * 10_000), "too_deep"),
    ("junk nested 10,000 deep beside valid fields", _nested(10_000), "too_deep"),
    ("value 1 followed by 400 zeros", _with_value_literal("1" + "0" * 400), "bad_value"),
    ("value -1 followed by 400 zeros", _with_value_literal("-1" + "0" * 400), "bad_value"),
    ("value with 5,000 digits", _with_value_literal("9" * 5_000), "bad_value"),
    ("value 1e400 (overflows float64)", _with_value_literal("1e400"), "bad_value"),
    ("value -1e400", _with_value_literal("-1e400"), "bad_value"),
    ("value NaN", _with_value_literal("NaN"), "bad_value"),
    ("value true", json.dumps(_batch(_reading(value=True))).encode(), "bad_value"),
    ("value a list", json.dumps(_batch(_reading(value=[1.0]))).encode(), "bad_value"),
    ("value a string", json.dumps(_batch(_reading(value="61.5"))).encode(), "bad_value"),
    ("ts_ms 2^63", json.dumps(_batch(_reading(ts_ms=2**63))).encode(), "bad_field"),
    ("ts_ms -1", json.dumps(_batch(_reading(ts_ms=-1))).encode(), "bad_field"),
    ("ts_ms a float", json.dumps(_batch(_reading(ts_ms=1.5e12))).encode(), "bad_field"),
    ("seq 2^63", json.dumps(_batch(_reading(seq=2**63), seq_first=2**63, seq_last=2**63)).encode(), "bad_field"),
    ("seq 2^64 + 1", json.dumps(_batch(_reading(seq=2**64 + 1), seq_first=2**64 + 1, seq_last=2**64 + 1)).encode(),
     "bad_field"),
    ("seq 0", json.dumps(_batch(_reading(seq=0), seq_first=0, seq_last=0)).encode(), "bad_field"),
    ("seq -5", json.dumps(_batch(_reading(seq=-5), seq_first=-5, seq_last=-5)).encode(), "bad_field"),
    ("sent_ms 2^63", json.dumps(_batch(sent_ms=2**63)).encode(), "bad_field"),
    ("unit with a lone surrogate", _raw(json.dumps(_batch()).replace('"degC"', '"\\ud800"')), "bad_field"),
    ("unit with a low surrogate and text", _raw(json.dumps(_batch()).replace('"degC"', '"deg\\udfffC"')),
     "bad_field"),
    ("unit with a newline", json.dumps(_batch(_reading(unit="deg\nC"))).encode(), "bad_field"),
    ("unit with a NUL", json.dumps(_batch(_reading(unit="deg\x00C"))).encode(), "bad_field"),
    ("unit with an escape sequence", json.dumps(_batch(_reading(unit="\x1b[31mC"))).encode(), "bad_field"),
    ("unit with quotes", json.dumps(_batch(_reading(unit='de"g}C'))).encode(), "bad_field"),
    ("unit with a backslash", json.dumps(_batch(_reading(unit="deg\\C"))).encode(), "bad_field"),
    ("unit with an RTL override", json.dumps(_batch(_reading(unit="\u202eCged"))).encode(), "bad_field"),
    ("unit with a zero-width joiner", json.dumps(_batch(_reading(unit="deg\u200dC"))).encode(), "bad_field"),
    ("unit of 33 characters", json.dumps(_batch(_reading(unit="x" * 33))).encode(), "bad_field"),
    ('"v": true', json.dumps(_batch(v=True)).encode(), "bad_version"),
    ('"v": 1.0', json.dumps(_batch(v=1.0)).encode(), "bad_version"),
    ('"v": "1"', json.dumps(_batch(v="1")).encode(), "bad_version"),
    ("asset with a slash", json.dumps(_batch(_reading(asset="tx1/../x"))).encode(), "bad_id"),
    ("asset with a Cyrillic letter", json.dumps(_batch(_reading(asset="tх1"))).encode(), "bad_id"),
    ("site of another topic", json.dumps(_batch(site="sub-other")).encode(), "site_mismatch"),
    ("250,000 bytes of 0x01", b"\x01" * 250_000, "not_json"),
    ("invalid UTF-8", b'{"v": 1, "site": "\xc3\x28"}', "not_json"),
    ("UTF-8 byte order mark", b"\xef\xbb\xbf" + json.dumps(_batch()).encode(), "not_json"),
    ("empty payload", b"", "not_json"),
    ("JSON null", b"null", "bad_field"),
    ("a bare string of 200,000 characters", json.dumps("y" * 200_000).encode(), "bad_field"),
    ("over the size limit", b'{"v":1,"pad":"' + b"z" * MAX_PAYLOAD_BYTES + b'"}', "oversized"),
    ("1,001 readings", json.dumps(_batch(*[_reading(seq=i) for i in range(1, 1002)])).encode(), "oversized"),
    ("a reading that is a list", json.dumps(_batch([1, 2, 3])).encode(), "bad_field"),
    ("quality an object", json.dumps(_batch(_reading(quality={"x": 1}))).encode(), "bad_field"),
    ("seq range lies", json.dumps(_batch(seq_last=99)).encode(), "bad_seq"),
    ("measured in the year 2100", json.dumps(_batch(_reading(ts_ms=4_102_444_800_000))).encode(),
     "future_timestamp"),
    ("measured in 1970", json.dumps(_batch(_reading(seq=2, ts_ms=0))).encode(), "too_old"),
]


def _letters_by_hash(dead_letters: queue.Queue, count: int, timeout: float) -> dict[str, list[dict]]:
    """Collect ``count`` dead letters; keyed by the original payload's sha256 (clock rejections: by topic)."""
    got: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    for _ in range(count):
        topic, letter = dead_letters.get(timeout=max(0.1, deadline - time.monotonic()))
        assert topic == f"ems/v1/deadletter/{letter['reason']}"
        got.setdefault(letter.get("payload_sha256", letter["reason"]), []).append(letter)
    return got


def _send_valid_readings(edge, stream: Stream, total: int) -> None:
    for batch in stream.batches(1, total, 100):
        edge.publish(stream.site, batch)


def test_poison_before_and_during_the_worker_run_dead_letters_everything_and_loses_nothing(
        ingest_factory, edge, dead_letters, prometheus, broker):
    ingest = ingest_factory(max_readings=500)
    ingest.kill()                                     # the session exists: the broker queues for it meanwhile
    topic = telemetry_topic(EVIL)
    for _, payload, _ in CASES:                       # the first thing the worker reads when it comes back
        edge.publish_raw(topic, payload)
    ingest.start()
    for _, payload, _ in CASES:                       # and again while it runs
        edge.publish_raw(topic, payload)
    good = Stream("sub-good", base_ms=NOW_MS - 600_000)
    _send_valid_readings(edge, good, 1000)

    # The two valid messages with a bad measurement time are dead-lettered once: their second copy
    # carries the same (site, seq) and is recognised as a duplicate.
    letters = _letters_by_hash(dead_letters, 2 * len(CASES) - 2, timeout=60)
    for case, payload, reason in CASES:
        if reason in ("future_timestamp", "too_old"):   # a valid message: its reading is dead-lettered
            found = letters.get(reason, [])
            assert len(found) == 1, f"{case}: {len(found)} dead letters"
            assert found[0]["topic"] == topic and len(found[0]["readings"]) == 1
            continue
        found = letters.get(hashlib.sha256(payload).hexdigest(), [])
        assert [letter["reason"] for letter in found] == [reason, reason], f"{case}: {found and found[0]}"
        assert all(letter["payload_bytes"] == len(payload) for letter in found)
        assert all(len(json.dumps(letter)) < MAX_DEADLETTER_BYTES for letter in found)
        assert all(len(letter["detail"]) < 1100 for letter in found), case

    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v >= 1000, timeout=30)
    assert ingest.proc.poll() is None, "the worker exited"
    assert lost_and_duplicated(prometheus, good, 1000) == (0, 0, 0)
    assert promql_count(prometheus, good.site, NOW_MS + 60_000) == 1000
    # no series of the site at any time from 1970 to 2200: nothing of the poison reached the TSDB
    # (the same query finds the good site's series, so it is not vacuous)
    assert prometheus.client().series(f'ems_reading{{site="{EVIL}"}}', 0, 7_258_118_400) == []
    assert len(prometheus.client().series(f'ems_reading{{site="{good.site}"}}', 0, 7_258_118_400)) == 4
    metrics = ingest.metrics()
    assert metrics['ems_ingest_clock_rejected_readings_total{reason="future_timestamp",site="sub-evil"}'] == 1
    assert metrics['ems_ingest_clock_rejected_readings_total{reason="too_old",site="sub-evil"}'] == 1
    assert metrics['ems_ingest_readings_total{outcome="duplicate"}'] == 2
    assert metrics["ems_ingest_dead_letters_undelivered_total"] == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{ingest.metrics_port}/healthz", timeout=5) as resp:
        assert resp.status == 200


def test_a_reading_from_2100_does_not_move_the_tsdbs_now(ingest_factory, edge, dead_letters, prometheus):
    """Prometheus' head would move to 2100 and refuse every current sample as too old; the ingest stops it first."""
    ingest = ingest_factory()
    edge.publish_raw(telemetry_topic(EVIL), json.dumps(_batch(_reading(ts_ms=4_102_444_800_000))).encode())
    assert dead_letters.get(timeout=15)[0] == "ems/v1/deadletter/future_timestamp"
    stream = Stream("sub-current", base_ms=int(time.time() * 1000) - 30_000)
    _send_valid_readings(edge, stream, 100)
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v == 100)
    assert ingest.metric('ems_ingest_readings_total{outcome="rejected"}') == 0
    assert lost_and_duplicated(prometheus, stream, 100) == (0, 0, 0)


def test_two_workers_both_survive_a_poison_stream(ingest_factory, edge, dead_letters, prometheus):
    workers = [ingest_factory("ingest-a", max_readings=200), ingest_factory("ingest-b", max_readings=200)]
    for _, payload, _ in CASES[:12]:
        edge.publish_raw(telemetry_topic(EVIL), payload)
    good = Stream("sub-shared-good", base_ms=NOW_MS - 300_000)
    _send_valid_readings(edge, good, 1000)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and promql_count(prometheus, good.site, NOW_MS + 60_000) < 1000:
        time.sleep(0.2)
    assert all(worker.proc.poll() is None for worker in workers)
    assert lost_and_duplicated(prometheus, good, 1000) == (0, 0, 0)
    assert sum(w.metric('ems_ingest_messages_total') for w in workers) >= 12 + 10


def test_dead_letters_of_many_refused_readings_stay_under_the_bound(ingest_factory, edge, dead_letters):
    """1,000 readings from the future in one message: listed over several bounded dead letters, none lost."""
    ingest_factory()
    future = NOW_MS + 86_400_000
    readings = [Reading(seq, future + seq, "tx1", "oil_temp", float(seq), "degC") for seq in range(1, 1001)]
    edge.publish_raw(telemetry_topic(EVIL), encode_batch(EVIL, readings, NOW_MS))
    listed: list[int] = []
    while len(listed) < 1000:
        topic, letter = dead_letters.get(timeout=15)
        assert topic == "ems/v1/deadletter/future_timestamp"
        assert len(json.dumps(letter)) < MAX_DEADLETTER_BYTES
        listed += [r["seq"] for r in letter["readings"]]
    assert sorted(listed) == list(range(1, 1001))
