"""Payload v2 through the real ingest: v1 and v2 of one site mixed, replayed and duplicated; bad v2 dead-lettered.

Real Mosquitto (mTLS), real Prometheus, ``ems-ingest run`` as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from ems_contract.telemetry import encode_batch, telemetry_topic
from ems_contract.telemetry_v2 import encode_batch_v2
from ingest_support import Stream, lost_and_duplicated, promql_count, stored

pytestmark = pytest.mark.integration


def test_v1_and_v2_mixed_replayed_and_duplicated_count_once(prometheus, ingest_factory, edge):
    ingest = ingest_factory(max_readings=150)
    stream = Stream("sub-mixed", base_ms=int(time.time() * 1000) - 900_000)
    topic = telemetry_topic(stream.site)
    published = 0

    def send(first: int, last: int, size: int, version: str) -> None:
        nonlocal published
        for batch in stream.batches(first, last, size):
            encode = encode_batch_v2 if version == "v2" or (version == "alt" and batch[0].seq % 2) else encode_batch
            edge.publish_raw(topic, encode(stream.site, batch, int(time.time() * 1000)))
            published += len(batch)

    send(1, 400, 25, "alt")          # v1 and v2 messages alternate (odd first seq → v2)
    send(301, 700, 37, "v2")         # a replay of 301..400 after an edge restart, other boundaries, then new
    send(651, 800, 50, "v1")         # the same site switched back to v1 and replays 651..700
    send(1, 800, 100, "v2")          # the whole range once more, as a duplicated delivery
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v >= 800)
    ingest.wait_metric("ems_ingest_duplicates_total", lambda v: v >= published - 800)
    assert ingest.metric('ems_ingest_readings_total{outcome="written"}') == 800
    assert ingest.metric("ems_ingest_duplicates_total") == published - 800

    lost, duplicated, wrong = lost_and_duplicated(prometheus, stream, 800)
    assert (lost, duplicated, wrong) == (0, 0, 0)
    assert promql_count(prometheus, stream.site, stream.base_ms + (800 // 4 + 2) * 1000) == 800
    # each reading is stored at its measurement time (Stream: one round of 4 series per second)
    samples = stored(prometheus, stream.site, stream.base_ms - 1, stream.base_ms + 300_000)
    assert samples[("tx1", "oil_temp")][:2] == [(stream.base_ms, 10.25), (stream.base_ms + 1000, 11.25)]


def _v2(site: str, first: int, n: int, now: int, **changes: object) -> bytes:
    stream = Stream(site, base_ms=now)
    body = json.loads(encode_batch_v2(site, [stream.reading(s) for s in range(first, first + n)], now))
    body.update(changes)
    return json.dumps(body, separators=(",", ":")).encode()


def test_bad_v2_payloads_are_dead_lettered_with_the_reason(ingest_factory, edge, dead_letters):
    ingest = ingest_factory()
    site = "sub-bad-v2"
    topic = telemetry_topic(site)
    now = int(time.time() * 1000) - 60_000
    cases = [
        ("bad_shape", _v2(site, 1, 4, now, val=[1.0, 2.0, 3.0])),                   # mismatched column lengths
        ("bad_version", _v2(site, 5, 4, now, v=7)),                                  # unknown version
        ("bad_seq", _v2(site, 9, 4, now, seq_last=20)),                              # seq range ≠ readings
        ("bad_field", _v2(site, 13, 4, now, p=[0, 1, 2, 99])),                       # an index out of its table
    ]
    for _, payload in cases:
        edge.publish_raw(topic, payload)
    edge.publish_raw(topic, _v2(site, 17, 4, now))                                  # a good one after them

    received = [dead_letters.get(timeout=10) for _ in cases]
    assert [t for t, _ in received] == [f"ems/v1/deadletter/{reason}" for reason, _ in cases]
    for (reason, payload), (_, letter) in zip(cases, received):
        assert letter["reason"] == reason and letter["detail"]
        assert letter["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert "one entry per reading (got 4, 4, 3, 4 entries)" in received[0][1]["detail"]
    assert received[1][1]["detail"] == "v must be 1 or 2 (got 7)"
    assert received[2][1]["detail"] == "seq_first..seq_last 9..20 is 12 readings; the columns hold 4"
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v == 4)
    assert ingest.proc.poll() is None
