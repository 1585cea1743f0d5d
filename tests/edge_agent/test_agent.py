"""The whole agent (``ems-edge run``) with the example config: hot calibration, health, metrics, twin, SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devenv.demo_edge import AgentProcess, Observer, SimulatorProcess, write_agent_config
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import LocalPki
from ems_contract.telemetry import twin_topic

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_agent_applies_calibration_live_serves_health_and_keeps_the_twin(
        tmp_path: Path, pki: LocalPki, broker: MosquittoBroker) -> None:
    sim = SimulatorProcess(tmp_path, free_port())
    sim.start()
    observer = Observer(broker.plain_port, client_id="agent-test").start()
    http_port = free_port()
    config = write_agent_config(tmp_path / "site", pki, broker_port=broker.tls_port, modbus_port=sim.port,
                                http_port=http_port)
    agent = AgentProcess(config)
    base = f"http://127.0.0.1:{http_port}"

    def oil_temps() -> list[float]:
        return [r.value for r in observer.readings() if (r.asset, r.point) == ("tx1", "oil_temp") and r.value]

    try:
        agent.start()
        _wait(lambda: len(oil_temps()) >= 1, 20, "the first tx1/oil_temp reading")
        assert max(oil_temps()) < 100                        # ~58 degC from the simulator

        status, body = _get(f"{base}/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok" and health["broker_connected"] is True, health
        _wait(lambda: (_sample(_get(f"{base}/metrics")[1].decode(), "ems_edge_readings_published_total") or 0) > 0,
              10, "published readings in /metrics")
        assert _get(f"{base}/nope")[0] == 404

        result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "calibrate", "--config", str(config),
                                 "--id", "SENSOR_01", "--offset", "1000"], capture_output=True, text=True,
                                cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        _wait(lambda: max(oil_temps()) > 1000, 10, "a reading with the new offset (no restart)")
        metrics = _get(f"{base}/metrics")[1].decode()
        assert _sample(metrics, 'ems_edge_config_reloads_total{outcome="ok"}') == 1
        assert agent.proc is not None and agent.proc.poll() is None      # still the same process
    finally:
        code = agent.stop()
        observer.stop()
        sim.stop()
    assert code == 0, agent.tail()

    cached = json.loads((config.parent / "twin.json").read_text())
    assert cached["assets"]["tx1"]["oil_temp"]["value"] > 1000
    late = Observer(broker.plain_port, topic=twin_topic("sub-07", "tx1"), client_id="late-twin").start()
    try:
        deadline = time.monotonic() + 5
        while not late.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        [(topic, payload, retained)] = late.messages
    finally:
        late.stop()
    twin = json.loads(payload)
    assert retained and twin["asset"] == "tx1" and twin["points"]["oil_temp"]["value"] > 1000
    messages = [json.loads(line)["msg"] for line in agent.tail(100000).splitlines()]  # not a TTY: JSON lines
    for message in messages:                                                           # no key material, no payloads
        assert "PRIVATE KEY" not in message and '"readings"' not in message
    assert any(m.startswith("agent for site sub-07 running on uvloop's event loop") for m in messages)


def test_the_agent_falls_back_to_asyncio_loop_where_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop is installed only where it has wheels (pyproject's marker): without it the agent still runs."""
    import asyncio
    import sys

    from edge_agent.event_loop import new_event_loop

    loop = new_event_loop()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)        # import uvloop → ImportError, as on armv7
    loop = new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio") and loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


def test_health_endpoint_reports_a_stalled_loop_as_503() -> None:
    """/healthz is served from its own thread, so it can say the event loop stopped ticking."""
    from prometheus_client import CollectorRegistry, Counter

    from ems_runtime.status_http import StatusEndpoint

    registry = CollectorRegistry()
    Counter("probe", "A metric to find in the scrape.", registry=registry).inc(3)
    state = {"ok": True}
    endpoint = StatusEndpoint("127.0.0.1", 0, registry, lambda: (state["ok"], {"loop_heartbeat_age_s": 0.1}))
    endpoint.start()
    try:
        base = f"http://127.0.0.1:{endpoint.port}"
        status, body = _get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        state["ok"] = False
        status, body = _get(f"{base}/healthz")
        assert status == 503 and json.loads(body)["status"] == "unhealthy"
        assert _sample(_get(f"{base}/metrics")[1].decode(), "probe_total") == 3
    finally:
        endpoint.stop()


def test_agent_health_follows_the_loop_heartbeat(tmp_path: Path, pki: LocalPki) -> None:
    from edge_agent.agent import Agent
    from edge_agent.config import load_config

    config = load_config(write_agent_config(tmp_path, pki, broker_port=free_port(), modbus_port=free_port()))
    agent = Agent(config)
    ok, details = agent.health()
    assert ok and details["site"] == "sub-07" and details["broker_connected"] is False
    agent._heartbeat -= 10                      # as if the event loop had been stuck for 10 s
    assert agent.health()[0] is False


def test_http_port_in_use_is_a_config_error() -> None:
    import socket

    from prometheus_client import CollectorRegistry

    from edge_agent.errors import ConfigError
    from ems_runtime.status_http import StatusEndpoint

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^http.port: {port} cannot be bound on 127.0.0.1 \(Address already in use\)"):
            StatusEndpoint("127.0.0.1", port, CollectorRegistry(), lambda: (True, {}), config_error=ConfigError).start()
