"""The whole telemetry path: Modbus simulator → ems-edge run → Mosquitto (mTLS) → ems-ingest run → Prometheus.

The agent's audit log lists every reading it accepted (seq, timestamp, asset,
point, value, quality). After the run every audited reading with a value must
be in Prometheus exactly once, at its measurement timestamp, with its value —
also when the agent is SIGKILLed mid-stream and replays its spool on restart.
"""

from __future__ import annotations

import time

import pytest

from devenv.demo_edge import AgentProcess, SimulatorProcess, write_agent_config
from devenv.mosquitto import free_port
from edge_agent.audit import read_audit

pytestmark = pytest.mark.integration


def _compare(prometheus, audited: dict[int, dict], site: str) -> tuple[int, int, int, int]:
    """(expected samples, lost, duplicated, wrong value) between the audit log and the TSDB."""
    expected: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in audited.values():
        if r["value"] is not None:
            expected.setdefault((r["asset"], r["point"], r["q"]), {})[r["ts_ms"]] = float(r["value"])
    times = [r["ts_ms"] for r in audited.values()]
    raw = prometheus.client().raw_samples(f'ems_reading{{site="{site}"}}', min(times) - 1, max(times) + 1)
    got: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for key, samples in raw.items():
        labels = dict(key)
        got.setdefault((labels["asset"], labels["point"], labels["quality"]), []).extend(samples)
    total = sum(len(v) for v in expected.values())
    lost = duplicated = wrong = 0
    for series, points in expected.items():
        stamps = [ts for ts, _ in got.get(series, [])]
        duplicated += len(stamps) - len(set(stamps))
        lost += len(set(points) - set(stamps))
        wrong += sum(1 for ts, value in got.get(series, []) if ts in points and points[ts] != value)
    extra = sum(1 for series, samples in got.items() for ts, _ in samples if ts not in expected.get(series, {}))
    return total, lost, duplicated, wrong + extra


def test_simulator_agent_ingest_prometheus_with_an_agent_crash(tmp_path, pki, broker, prometheus, ingest_factory):
    ingest = ingest_factory()
    sim_port = free_port()
    sim = SimulatorProcess(tmp_path, sim_port)
    config = write_agent_config(tmp_path / "site", pki, broker_port=broker.tls_port, modbus_port=sim_port)
    agent = AgentProcess(config)
    try:
        sim.start()
        agent.start()
        ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v >= 20, timeout=20)
        time.sleep(1.5)
        agent.kill()                                  # SIGKILL: unacknowledged spool rows are replayed
        agent.start()
        time.sleep(3)
        assert agent.stop() == 0                      # SIGTERM: flushes the spool
    finally:
        agent.stop()
        sim.stop()
    audited = read_audit(config.parent / "telemetry-audit.log").readings
    # wait until the ingest has handled every audited reading
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        handled = sum(ingest.metric(f'ems_ingest_readings_total{{outcome="{o}"}}') for o in ("written", "null"))
        if handled >= len(audited) and ingest.metric("ems_ingest_queue_depth") == 0:
            break
        time.sleep(0.2)
    total, lost, duplicated, wrong = _compare(prometheus, audited, "sub-07")
    assert total >= 22, f"only {total} readings flowed"     # at least the first poll of every point
    assert (lost, duplicated, wrong) == (0, 0, 0), f"of {total}: lost={lost} duplicated={duplicated} wrong={wrong}"
    assert ingest.metric("ems_ingest_dead_letters_total{reason=\"tsdb_rejected\"}") == 0
