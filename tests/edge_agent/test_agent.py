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
from edge_agent.schema import twin_topic

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
    for line in agent.tail(100000).splitlines():          # not a TTY: JSON lines, no key material, no payloads
        record = json.loads(line)
        assert "PRIVATE KEY" not in record["msg"] and '"readings"' not in record["msg"]
