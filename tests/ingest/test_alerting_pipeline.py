"""Alerts end to end: twins → twin metrics → a real Prometheus evaluating the generated rules → a real
Alertmanager (grouping, inhibition, routing) → a webhook this test runs.

The edge's TwinStore turns the relay's register value 4 into the active fault E04; its payload goes
through the twin API's store and collector (``ingest/twin_metrics.py``) onto a ``/metrics`` endpoint
that Prometheus scrapes every second. Site s1 is silent (its last message an hour old): its own
device fault is inhibited while the site alert is delivered. Clearing E04 resolves the alert.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
from prometheus_client import CollectorRegistry, Gauge

from components.alertmanager import alertmanager_config
from components.alerts import AlertReceiver, alert_rules
from devenv.alertmanager import AlertmanagerServer
from devenv.prometheus import PrometheusServer
from edge_agent.faults import FaultCode
from edge_agent.twin import TwinStore as EdgeTwins
from ems_contract.telemetry import Reading
from ems_runtime.status_http import StatusEndpoint
from ingest.twin_api import TwinStore
from ingest.twin_metrics import TwinCollector

pytestmark = pytest.mark.integration

E04 = FaultCode(4, "E04", "critical", "over-voltage")


class Webhook:
    """An HTTP receiver on 127.0.0.1 that keeps every Alertmanager notification (JSON bodies)."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                length = min(int(self.headers.get("Content-Length", "0")), 1 << 20)
                hook.notifications.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def alerts(self) -> list[tuple[str, dict[str, Any]]]:
        """(status, alert) of every alert in every notification so far."""
        return [(a["status"], a) for n in list(self.notifications) for a in n["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def _relay(twins: EdgeTwins, value: float, ts_ms: int) -> None:
    twins.update(Reading(seq=0, ts_ms=ts_ms, asset="relay1", point="fault_code", value=value, unit="", quality="good"))


def test_a_plc_fault_reaches_the_webhook_and_resolves_and_a_silent_site_inhibits_its_device_alerts(tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    cloud = TwinStore()
    edges = {site: EdgeTwins(tmp_path / f"{site}.json", site=site, fault_points={("relay1", "fault_code"): (E04,)})
             for site in ("s1", "s2")}
    for site, twins in edges.items():
        _relay(twins, 4.0, now_ms)                                       # both relays report E04
        assert cloud.update(f"ems/v1/{site}/twin/relay1", twins.payload("relay1"))
    registry = CollectorRegistry()
    registry.register(TwinCollector(cloud.documents, lambda: dict(cloud.rejected)))
    last = Gauge("ems_ingest_site_last_message_timestamp_seconds", "test", ["site"], registry=registry)
    last.labels("s1").set(time.time() - 3600)                            # s1 is silent for an hour
    last.labels("s2").set_function(time.time)                            # s2 keeps talking
    endpoint = StatusEndpoint("127.0.0.1", 0, registry, lambda: (True, {}))
    endpoint.start()
    hook = Webhook()
    rules = tmp_path / "ems-alerts.yml"
    rules.write_text(alert_rules())
    config = alertmanager_config((AlertReceiver("ops"),), {"ops": hook.url}, group_wait="1s", group_interval="1s",
                                 repeat_interval="1h")
    try:
        with AlertmanagerServer(tmp_path / "am", config) as am, \
                PrometheusServer(tmp_path / "prom", scrape_targets=(f"127.0.0.1:{endpoint.port}",),
                                 rule_files=(rules,), alertmanagers=(am.address,)):
            def firing(name: str, site: str) -> list[dict[str, Any]]:
                return [a for status, a in hook.alerts()
                        if status == "firing" and a["labels"]["alertname"] == name and a["labels"].get("site") == site]

            wait_for("E04 of s2 and the silence of s1 at the webhook",
                     lambda: bool(firing("EmsPlcFault", "s2")) and bool(firing("EmsSiteSilent", "s1")))
            [e04] = firing("EmsPlcFault", "s2")[:1]
            assert {k: e04["labels"][k] for k in ("code", "text", "severity", "asset", "point", "scope")} == {
                "code": "E04", "text": "over-voltage", "severity": "critical", "asset": "relay1", "point": "fault_code",
                "scope": "device"}
            assert e04["annotations"]["summary"] == "E04 over-voltage on s2/relay1/fault_code"
            # s1's own E04 reached Alertmanager but is inhibited by its site's silence: never delivered.
            held = [a for a in am.alerts() if a["labels"]["alertname"] == "EmsPlcFault" and a["labels"]["site"] == "s1"]
            assert held and held[0]["status"]["inhibitedBy"], held
            assert not firing("EmsPlcFault", "s1")
            # Grouped by site: s2's fault and s1's silence came in different notifications.
            assert all(len({a["labels"].get("site") for a in n["alerts"]}) == 1 for n in hook.notifications)
            # The watchdog (severity info) is routed to no receiver.
            assert not [a for _, a in hook.alerts() if a["labels"]["alertname"] == "EmsWatchdog"]

            _relay(edges["s2"], 0.0, now_ms + 1000)                      # the PLC clears the fault
            assert cloud.update("ems/v1/s2/twin/relay1", edges["s2"].payload("relay1"))
            wait_for("E04 of s2 resolved at the webhook", lambda: any(
                status == "resolved" and a["labels"]["alertname"] == "EmsPlcFault" and a["labels"]["site"] == "s2"
                for status, a in hook.alerts()), timeout=90)
    finally:
        hook.close()
        endpoint.stop()
    assert not firing("EmsPlcFault", "s1")
