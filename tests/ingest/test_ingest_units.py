"""Pure pieces of the ingest: metric names and initial labels, the twin store's validation."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from ems_contract.telemetry import encode_twin
from ingest.metrics import DEAD_LETTER_REASONS, READING_OUTCOMES, IngestMetrics
from ingest.twin_api import TwinStore


def test_metric_names_follow_the_contract_and_labels_start_at_zero() -> None:
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    assert registry.get_sample_value("ems_ingest_messages_total") == 0
    for outcome in READING_OUTCOMES:
        assert registry.get_sample_value("ems_ingest_readings_total", {"outcome": outcome}) == 0
    for reason in DEAD_LETTER_REASONS:
        assert registry.get_sample_value("ems_ingest_dead_letters_total", {"reason": reason}) == 0
    metrics.messages_done(3)
    metrics.write_duration.observe(0.02)
    assert registry.get_sample_value("ems_ingest_messages_total") == 3
    assert registry.get_sample_value("ems_ingest_write_duration_seconds_count") == 1
    assert registry.get_sample_value("ems_ingest_duplicates_total") == 0
    assert registry.get_sample_value("ems_ingest_messages_per_second") > 0


def test_twin_store_keeps_the_latest_valid_document_per_asset() -> None:
    store = TwinStore()
    points = {"oil_temp": {"value": 61.0, "unit": "degC", "quality": "good", "ts_ms": 5}}
    assert store.update("ems/v1/s1/twin/tx1", encode_twin("s1", "tx1", 5, points))
    assert store.get("s1", "tx1")["points"] == points
    # wrong site in the payload, not JSON, wrong version, bad topic: ignored and counted
    assert not store.update("ems/v1/s1/twin/tx1", encode_twin("s2", "tx1", 6, points))
    assert not store.update("ems/v1/s1/twin/tx1", b"{nope")
    assert not store.update("ems/v1/s1/twin/tx1", json.dumps({"v": 2, "site": "s1", "asset": "tx1",
                                                                "points": {}}).encode())
    assert not store.update("ems/v1/s1/telemetry", encode_twin("s1", "tx1", 6, points))
    assert store.rejected_total == 4
    assert store.get("s1", "tx1")["ts_ms"] == 5
    assert store.assets("s1") == ["tx1"]
    assert store.update("ems/v1/s1/twin/tx1", b"")          # retained message cleared: the twin is gone
    assert store.get("s1", "tx1") is None
