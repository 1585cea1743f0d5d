"""The whole telemetry path running on 127.0.0.1, for the dashboard and operator-page tests.

    with LivePipeline(workdir) as live:
        live.wait_for_data()                  # readings in the TSDB, metrics scraped
        live.prometheus.client().query(...)   # PromQL over real data
        live.twin_api_url                     # https://127.0.0.1:<port> (the operator page is at /)

Starts a throw-away PKI, Mosquitto, Prometheus, the Modbus simulator, the edge
agent with ``edge_agent/examples/sensors.conf``, one ingest worker and the twin
API. Prometheus stores the readings by remote write and scrapes the edge
agent's, the ingest's and the twin API's ``/metrics`` every second, so every
series a dashboard reads comes from the real processes. ``rule_files`` are passed to
Prometheus as they are (its ``ALERTS`` series exist only with rules), and
``alertmanager_url`` to the twin API. ``stop()`` kills everything it started.
"""

from __future__ import annotations

import time
from pathlib import Path

from devenv.demo_edge import AgentProcess, SimulatorProcess, write_agent_config
from devenv.demo_pipeline import IngestProcess
from devenv.mosquitto import MosquittoBroker, free_port, wait_for_port
from devenv.pki import LocalPki, make_pki
from devenv.prometheus import PrometheusServer

__all__ = ["LivePipeline", "SITE"]

SITE = "sub-07"
"""The site of the example sensors.conf."""


class LivePipeline:
    """Simulator → edge agent → Mosquitto → ingest → Prometheus, plus the twin API; see the module doc."""

    def __init__(self, workdir: Path, *, rule_files: tuple[str, ...] = (), alertmanager_url: str | None = None) -> None:
        self.workdir = workdir
        self.pki: LocalPki = make_pki(workdir / "pki")
        self.broker = MosquittoBroker(workdir / "broker", self.pki)
        self.agent_http_port = free_port()
        self.sim_port = free_port()
        self.twin_port = free_port()
        self.site_config = write_agent_config(workdir / "site", self.pki, broker_port=self.broker.tls_port,
                                              modbus_port=self.sim_port, http_port=self.agent_http_port)
        self.sim = SimulatorProcess(workdir, self.sim_port)
        self.agent = AgentProcess(self.site_config)
        self.prometheus = PrometheusServer(workdir / "prometheus", rule_files=rule_files)
        self.ingest = IngestProcess(workdir / "ingest", broker=self.broker, pki=self.pki, prometheus=self.prometheus)
        self.twin_api = IngestProcess(workdir / "twin-api", broker=self.broker, pki=self.pki,
                                      prometheus=self.prometheus, client_id="twin-api", twin_api_port=self.twin_port,
                                      alertmanager_url=alertmanager_url)
        # Prometheus writes its config at start(): the ports are known by then. The twin API's metrics port is
        # scraped too, for the twin-derived metrics of twin APIs that serve them (it may answer nothing).
        self.required_targets = (f"127.0.0.1:{self.agent_http_port}", f"127.0.0.1:{self.ingest.metrics_port}")
        self.prometheus.scrape_targets = (*self.required_targets, f"127.0.0.1:{self.twin_api.metrics_port}")

    @property
    def twin_api_url(self) -> str:
        return f"https://127.0.0.1:{self.twin_port}"

    def start(self) -> "LivePipeline":
        try:
            self.broker.start()
            self.prometheus.start()
            self.sim.start()
            self.ingest.start()
            self.twin_api.start("twin-api")
            wait_for_port(self.twin_port, 15, self.twin_api.proc)
            self.agent.start()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_data(self, timeout: float = 60.0) -> None:
        """Until the TSDB holds readings of every example asset and the agent's and the ingest's targets are up."""
        client = self.prometheus.client()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assets = {i["metric"]["asset"] for i in client.query(f'count by (asset) (ems_reading{{site="{SITE}"}})')}
            up = {i["metric"]["instance"]: float(i["value"][1]) for i in client.query("up")}
            last = (sorted(assets), up)
            if {"tx1", "tx2", "flow1", "feeder1"} <= assets and all(up.get(t) == 1 for t in self.required_targets):
                return
            time.sleep(0.5)
        raise AssertionError(f"pipeline not delivering after {timeout:.0f}s (assets, up) = {last}\n"
                             f"agent: {self.agent.tail(1500)}\ningest: {self.ingest.tail(1500)}")

    def stop(self) -> None:
        for proc in (self.agent, self.twin_api, self.ingest, self.sim):
            proc.kill()
        self.prometheus.stop(kill=True)
        self.broker.stop(kill=True)

    def __enter__(self) -> "LivePipeline":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
