"""End to end: edge-format batches → Mosquitto (mTLS) → ems-ingest → Prometheus → PromQL."""

from __future__ import annotations

import time

import pytest

from ingest_support import Stream, lost_and_duplicated, promql_count, stored

pytestmark = pytest.mark.integration


def test_every_reading_is_stored_once_with_its_value_and_timestamp(prometheus, ingest_factory, edge):
    ingest = ingest_factory()
    stream = Stream("sub-01", base_ms=int(time.time() * 1000) - 600_000)
    for batch in stream.batches(1, 400, 25):
        edge.publish(stream.site, batch)
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v >= 400)

    lost, duplicated, wrong = lost_and_duplicated(prometheus, stream, 400)
    assert (lost, duplicated, wrong) == (0, 0, 0)
    assert promql_count(prometheus, stream.site, stream.base_ms + 200_000) == 400
    got = stored(prometheus, stream.site, stream.base_ms - 1, stream.base_ms + 200_000)
    first = stream.reading(1)
    assert got[(first.asset, first.point)][0] == (first.ts_ms, first.value)
    assert ingest.metric("ems_ingest_messages_total") == 16
    assert ingest.metric("ems_ingest_duplicates_total") == 0
