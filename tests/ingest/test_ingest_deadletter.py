"""Bad payloads and TSDB rejections are dead-lettered with their reason; the worker keeps going."""

from __future__ import annotations

import json
import queue
import time

import pytest

from ems_contract.telemetry import MAX_PAYLOAD_BYTES, Reading, encode_batch, telemetry_topic
from ingest_support import Stream, stored

pytestmark = pytest.mark.integration


def _good(site: str, seq: int, ts_ms: int, **overrides: object) -> dict:
    body = json.loads(encode_batch(site, [Reading(seq, ts_ms, "tx1", "oil_temp", 50.0 + seq, "degC")], ts_ms))
    body.update(overrides)
    return body


def test_bad_payloads_are_dead_lettered_with_reasons_and_the_worker_keeps_going(ingest_factory, edge, dead_letters,
                                                                                 prometheus):
    ingest = ingest_factory()
    site = "sub-bad"
    topic = telemetry_topic(site)
    now = int(time.time() * 1000) - 60_000
    missing_seq = _good(site, 1, now)
    del missing_seq["readings"][0]["seq"]
    nan = json.dumps(_good(site, 2, now)).replace("52.0", "NaN").encode()
    cases = [
        ("bad_version", json.dumps(_good(site, 3, now, v=3)).encode()),
        ("bad_field", json.dumps(missing_seq).encode()),
        ("bad_value", nan),
        ("oversized", b"{" + b" " * (MAX_PAYLOAD_BYTES + 10) + b"}"),
        ("not_json", b"\xff\xfe definitely not json"),
        ("site_mismatch", json.dumps(_good("other-site", 4, now)).encode()),
    ]
    for _, payload in cases:
        edge.publish_raw(topic, payload)
    edge.publish(site, [Reading(10, now + 1000, "tx1", "oil_temp", 61.5, "degC")])   # a good one after them

    received = [dead_letters.get(timeout=10) for _ in cases]
    assert [t for t, _ in received] == [f"ems/v1/deadletter/{reason}" for reason, _ in cases]
    for (reason, payload), (_, letter) in zip(cases, received):
        assert letter["reason"] == reason
        assert letter["topic"] == topic
        assert letter["payload_bytes"] == len(payload)
        assert letter["detail"]
    assert received[3][1]["truncated"] is True
    assert "payload_b64" in received[4][1]
    assert json.loads(received[0][1]["payload"])["v"] == 3

    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v == 1)
    assert stored(prometheus, site, now - 1, now + 5000) == {("tx1", "oil_temp"): [(now + 1000, 61.5)]}
    metrics = ingest.metrics()
    for reason, _ in cases:
        assert metrics[f'ems_ingest_dead_letters_total{{reason="{reason}"}}'] == 1
    assert metrics["ems_ingest_messages_total"] == len(cases) + 1
    assert ingest.proc.poll() is None


# The ingest's own time window would dead-letter 40-day-old readings as too_old before the TSDB saw
# them; these tests widen it beyond the test TSDB's 30d out-of-order window to exercise the TSDB's refusal.
BEYOND_TSDB_WINDOW_S = 60 * 86400


def test_samples_the_tsdb_refuses_are_dead_lettered_and_the_rest_written(ingest_factory, edge, dead_letters,
                                                                         prometheus):
    ingest = ingest_factory(max_age_s=BEYOND_TSDB_WINDOW_S)
    site = "sub-old"
    now = int(time.time() * 1000)
    too_old = now - 40 * 24 * 3600 * 1000            # beyond the 30d out-of-order window
    # an empty TSDB accepts any first sample; once it holds recent data, 40 days ago is too old
    edge.publish(site, [Reading(100, now - 1000, "tx2", "load", 1.0, "A")])
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v == 1)
    readings = [Reading(1, now - 5000, "tx1", "oil_temp", 40.0, "degC"),
                Reading(2, too_old, "tx1", "oil_temp", 41.0, "degC"),
                Reading(3, now - 4000, "tx1", "load", 12.0, "A"),
                Reading(4, now - 3000, "tx1", "load", None, "A", "device_error")]
    edge.publish(site, readings)
    topic, letter = dead_letters.get(timeout=15)
    assert topic == "ems/v1/deadletter/tsdb_rejected"
    assert letter["topic"] == telemetry_topic(site)
    assert [(r["seq"], r["ts_ms"], r["value"]) for r in letter["readings"]] == [(2, too_old, 41.0)]
    assert "too old" in letter["detail"]
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v == 3)
    assert ingest.metric('ems_ingest_readings_total{outcome="rejected"}') == 1
    assert ingest.metric('ems_ingest_readings_total{outcome="null"}') == 1
    assert stored(prometheus, site, now - 60_000, now) == {("tx1", "oil_temp"): [(now - 5000, 40.0)],
                                                           ("tx1", "load"): [(now - 4000, 12.0)],
                                                           ("tx2", "load"): [(now - 1000, 1.0)]}
    # a replay of the same message is recognised: nothing is written or dead-lettered again
    edge.publish(site, readings)
    ingest.wait_metric("ems_ingest_duplicates_total", lambda v: v == 4)
    with pytest.raises(queue.Empty):
        dead_letters.get(timeout=0.5)


def test_null_values_are_counted_not_written(ingest_factory, edge, prometheus):
    ingest = ingest_factory()
    stream = Stream("sub-null", base_ms=int(time.time() * 1000) - 60_000)
    readings = [stream.reading(1), Reading(2, stream.base_ms, "tx9", "load", None, "A", "stale")]
    edge.publish(stream.site, readings)
    ingest.wait_metric('ems_ingest_readings_total{outcome="null"}', lambda v: v == 1)
    assert ingest.metric('ems_ingest_readings_total{outcome="written"}') == 1
    assert set(stored(prometheus, stream.site, stream.base_ms - 1, stream.base_ms + 5000)) == {("tx1", "oil_temp")}


def test_bisection_isolates_every_refused_sample_in_a_large_batch(ingest_factory, edge, dead_letters, prometheus):
    ingest = ingest_factory(max_age_s=BEYOND_TSDB_WINDOW_S)
    site = "sub-bisect"
    now = int(time.time() * 1000)
    edge.publish(site, [Reading(1000, now - 100, "tx1", "load", 1.0, "A")])
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v == 1)
    too_old = now - 40 * 24 * 3600 * 1000
    readings = [Reading(seq, now - 60_000 + seq * 10, "tx1", "oil_temp", float(seq), "degC") for seq in range(1, 101)]
    readings[6] = Reading(7, too_old, "tx1", "oil_temp", 7.0, "degC")
    readings[32] = Reading(33, too_old + 1, "tx2", "oil_temp", 33.0, "degC")
    # same series and timestamp as seq 1000 but another value: Prometheus refuses it (400)
    readings[90] = Reading(91, now - 100, "tx1", "load", 2.0, "A")
    edge.publish(site, readings)
    letters = [dead_letters.get(timeout=15) for _ in range(2)]
    rejected = sorted((r["seq"], r["ts_ms"]) for _, letter in letters for r in letter["readings"])
    assert rejected == [(7, too_old), (33, too_old + 1), (91, now - 100)]
    details = sorted(letter["detail"] for _, letter in letters)
    assert "duplicate sample for timestamp" in details[0] and "too old sample" in details[1]
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v == 98)
    assert ingest.metric('ems_ingest_readings_total{outcome="rejected"}') == 3
    got = stored(prometheus, site, now - 120_000, now)
    assert len(got[("tx1", "oil_temp")]) == 97 and got[("tx1", "load")] == [(now - 100, 1.0)]
