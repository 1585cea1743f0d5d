"""Twin-derived metrics (ingest/twin_metrics.py) and certificate expiry metrics (ems_runtime/cert_expiry.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from devenv.pki import LocalPki
from edge_agent.faults import FaultCode
from edge_agent.thermal import ThermalParams
from edge_agent.config import ThermalAssetConfig
from edge_agent.twin import TwinStore as EdgeTwins
from ems_contract.telemetry import Reading
from ems_runtime.cert_expiry import not_after, register_certificates
from ingest.twin_api import TwinStore
from ingest.twin_metrics import TwinCollector

TX1 = ThermalAssetConfig(asset="tx1", kind="transformer", rated_load=2.0, load_point="load",
                         ambient_point="ambient_temp", top_oil_point="oil_temp", params=ThermalParams())


def _registry(store: TwinStore) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(TwinCollector(store.documents, lambda: dict(store.rejected)))
    return registry


def test_edge_twins_become_fault_quality_and_thermal_metrics(tmp_path: Path) -> None:
    edge = EdgeTwins(tmp_path / "twin.json", site="s1", thermal_assets=[TX1],
                     fault_points={("tx1", "relay_fault"): (FaultCode(4, "E04", "critical", "over-voltage"),)})
    for seq, (point, value, quality) in enumerate([("oil_temp", 70.0, "good"), ("load", 3.0, "good"),
                                                   ("ambient_temp", 30.0, "good"), ("relay_fault", 4.0, "good"),
                                                   ("winding_temp", None, "device_error")]):
        edge.update(Reading(seq=seq, ts_ms=1000, asset="tx1", point=point, value=value, unit="", quality=quality))
    cloud = TwinStore()
    assert cloud.update("ems/v1/s1/twin/tx1", edge.payload("tx1"))
    registry = _registry(cloud)
    get = registry.get_sample_value
    assert get("ems_twin_fault_active", {"site": "s1", "asset": "tx1", "point": "relay_fault", "code": "E04",
                                         "severity": "critical", "text": "over-voltage"}) == 1.0
    assert get("ems_twin_point_quality", {"site": "s1", "asset": "tx1", "point": "winding_temp",
                                          "quality": "device_error"}) == 1.0
    thermal = json.loads(edge.payload("tx1"))["thermal"]
    assert get("ems_twin_thermal_hot_spot_celsius", {"site": "s1", "asset": "tx1"}) == thermal["hot_spot_degC"]
    assert get("ems_twin_thermal_hot_spot_limit_celsius", {"site": "s1", "asset": "tx1"}) == 120.0
    assert get("ems_twin_thermal_top_oil_residual_kelvin", {"site": "s1", "asset": "tx1"}) == thermal["top_oil_residual_K"]
    seconds = get("ems_twin_thermal_time_to_hot_spot_limit_seconds", {"site": "s1", "asset": "tx1"})
    assert seconds == thermal["time_to_hot_spot_limit_s"] and 0 < seconds < math.inf       # K = 1.5 at 30 °C from 70 °C oil
    # Cleared: the fault series is gone (the alert resolves).
    edge.update(Reading(seq=9, ts_ms=2000, asset="tx1", point="relay_fault", value=0.0, unit="", quality="good"))
    cloud.update("ems/v1/s1/twin/tx1", edge.payload("tx1"))
    assert b"ems_twin_fault_active{" not in generate_latest(registry)


def test_a_twin_that_never_reaches_its_limit_exports_inf(tmp_path: Path) -> None:
    edge = EdgeTwins(tmp_path / "twin.json", site="s1", thermal_assets=[TX1])
    for seq, (point, value) in enumerate([("load", 1.0), ("ambient_temp", 20.0)]):
        edge.update(Reading(seq=seq, ts_ms=1000, asset="tx1", point=point, value=value, unit="", quality="good"))
    cloud = TwinStore()
    cloud.update("ems/v1/s1/twin/tx1", edge.payload("tx1"))
    assert _registry(cloud).get_sample_value("ems_twin_thermal_time_to_hot_spot_limit_seconds",
                                             {"site": "s1", "asset": "tx1"}) == math.inf


_value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=100),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=10), st.integers(), max_size=3))


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(fault=st.dictionaries(st.sampled_from(["code", "text", "severity", "since_ms", "x"]), _value, max_size=5),
       thermal=st.dictionaries(st.sampled_from(["hot_spot_degC", "ageing_rate", "time_to_hot_spot_limit_s", "y"]),
                               _value, max_size=4),
       quality=_value)
def test_any_twin_the_store_accepts_gives_a_scrape_with_safe_labels(fault: dict[str, Any], thermal: dict[str, Any],
                                                                     quality: Any) -> None:
    doc = {"v": 1, "site": "s1", "asset": "a1", "ts_ms": 1,
           "points": {"p": {"value": 1, "unit": "", "quality": quality, "ts_ms": 1, "fault": fault}},
           "thermal": thermal}
    cloud = TwinStore()
    try:
        payload = json.dumps(doc, allow_nan=False).encode()
    except ValueError:
        return
    cloud.update("ems/v1/s1/twin/a1", payload)
    text = generate_latest(_registry(cloud)).decode()                 # never raises
    for line in text.splitlines():
        if line.startswith("ems_twin_fault_active{"):
            assert fault["severity"] in ("critical", "warning", "info") and '\\"' not in line and "\\n" not in line


def test_certificate_expiry_is_read_at_every_scrape(tmp_path: Path, pki: LocalPki) -> None:
    registry = CollectorRegistry()
    cert = tmp_path / "tls.crt"
    cert.write_bytes(pki.ca.read_bytes())
    register_certificates(registry, "ingest", {"broker-client": cert, "unused": None})
    assert registry.get_sample_value("ems_ingest_certificate_expiry_timestamp_seconds",
                                     {"certificate": "broker-client"}) == not_after(pki.ca)
    cert.write_text("not a certificate")                               # a broken file is left out, not raised
    assert registry.get_sample_value("ems_ingest_certificate_expiry_timestamp_seconds",
                                     {"certificate": "broker-client"}) is None
