"""Packet loss measured end to end: readings the edge had to drop (spool cap) during a link outage are the
ingest's lost readings, exactly.

Simulator → ``ems-edge run`` (spool capped at 100 readings) → a proxy that refuses every connection for
a while (the lossy link) → Mosquitto → ``ems-ingest run`` with a 3 s loss horizon. The agent drops the
oldest spooled rows beyond its cap and counts them (``ems_edge_spool_dropped_total``); after the link
is back and the horizon has passed, ``ems_ingest_site_readings_lost_total`` must equal that count.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from devenv.demo_edge import AgentProcess, SimulatorProcess, write_agent_config
from devenv.lossy_proxy import LossyProxy, ProxyThread
from devenv.mosquitto import free_port
from edge_agent.audit import read_audit
from tests.edge_agent.delivery_helpers import Subscriber

pytestmark = pytest.mark.integration
SITE = "sub-07"


def _agent_metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # nosec B310 # 127.0.0.1
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def _wait(what: str, check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def test_readings_dropped_beyond_the_spool_cap_are_counted_lost_exactly(tmp_path, pki, broker, ingest_factory) -> None:
    ingest = ingest_factory(loss_horizon_s=3)
    lost = f'ems_ingest_site_readings_lost_total{{site="{SITE}"}}'
    received = f'ems_ingest_site_readings_received_total{{site="{SITE}"}}'
    proxy = LossyProxy("127.0.0.1", broker.tls_port, max_faults=None)
    sim_port, http_port = free_port(), free_port()
    sim = SimulatorProcess(tmp_path, sim_port)
    proxy_thread = ProxyThread(proxy)
    # Sees what reached the broker: a message can reach it while its PUBACK is cut with the link, and the
    # agent then drops those readings with the rest. They were delivered, so the ingest rightly does not
    # count them lost: lost = the dropped seqs that never reached the broker.
    observer = Subscriber(broker.plain_port, topic=f"ems/v1/{SITE}/telemetry", client_id="loss-observer").start()
    with proxy_thread as link:
        config = write_agent_config(tmp_path / "site", pki, broker_port=link.port, modbus_port=sim_port,
                                    http_port=http_port, spool={"max_readings": 100})
        agent = AgentProcess(config)
        try:
            sim.start()
            agent.start()
            ingest.wait_metric(received, lambda v: v >= 30, timeout=30)
            # The link goes down: every connection refused; the spool fills past its cap and drops.
            proxy_thread.call(setattr, proxy, "refuse_probability", 1.0)
            proxy_thread.call(proxy.cut_all)
            _wait("the spool to drop readings", lambda: _agent_metric(http_port, "ems_edge_spool_dropped_total") >= 60, 90)
            proxy_thread.call(setattr, proxy, "refuse_probability", 0.0)
            _wait("the spool to drain", lambda: _agent_metric(http_port, "ems_edge_spool_depth") < 50, 90)
            dropped = _agent_metric(http_port, "ems_edge_spool_dropped_total")
            assert dropped >= 60
            dropped_seqs = read_audit(tmp_path / "site" / "telemetry-audit.log").dropped
            assert len(dropped_seqs) == dropped
            never_arrived = len(dropped_seqs - observer.received.unique_seqs())
            assert never_arrived >= dropped - 1000          # at most the messages in flight at the cut
            _wait(f"the ingest to count {never_arrived} lost readings (agent dropped {dropped:.0f})",
                  lambda: ingest.metric(lost) >= never_arrived, 60)
            time.sleep(5)                                  # more than the horizon again: nothing else is counted
            assert ingest.metric(lost) == never_arrived
            assert _agent_metric(http_port, "ems_edge_spool_dropped_total") == dropped
        finally:
            agent.stop()
            sim.stop()
            observer.stop()
