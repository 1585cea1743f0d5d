"""A command published while the site is not listening reaches it once it is back — within a bounded time, once.

Real parts: the 2030.5 test server (CCM8 mutual TLS), ``ems-northbound``'s service, Mosquitto with the
generated dynamic-security roles, the edge agent as a process, the pymodbus simulator. The edge's MQTT
sessions start clean, so the broker keeps nothing for a site that is away and answers the north-bound
client's PUBLISH with PUBACK 16 (no matching subscribers); the client re-issues the control under a new
id every ``broker.no_subscriber_retry_max_s`` at most. Nobody else subscribes to the command topic here
(an observer on it would make the broker answer 0 and hide the site's absence).
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path

import pytest

from devenv.demo_edge import AgentProcess, Observer, write_agent_config
from devenv.mosquitto import free_port
from devenv.pki import CertPair, LocalPki
from devenv.sep2_server import Sep2TestServer
from ems_contract.telemetry import status_topic
from northbound import sep2
from northbound.config import load_config
from northbound.metrics import NorthboundMetrics
from northbound.service import NorthboundService
from tests.components.test_broker_config import _start_broker
from tests.edge_agent.command_helpers import SITE, UNIT, SimulatorThread, writable_config, writable_config_text
from tests.northbound.nb_helpers import write_broker_config

pytestmark = pytest.mark.integration

RETRY_MAX_S = 1.0
BOUND_S = 10.0     # retry cap + one tick + subscribe, decode, Modbus write and read-back, on a shared CPU


def test_a_command_published_while_the_site_is_away_is_applied_once_after_it_returns(
        sep2_server: Sep2TestServer, pki: LocalPki, aggregator: CertPair, tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    broker = _start_broker(tmp_path / "broker", pki)
    port = free_port()
    sim = SimulatorThread(writable_config(tmp_path, port), port).start()
    devices = tomllib.loads(writable_config_text(port))["devices"]
    edge_config = write_agent_config(tmp_path / "site", pki, broker_port=broker.tls_port, modbus_port=port,
                                     client=SITE, devices=devices, commands={"state_path": "commands.db"})
    status = Observer(broker.plain_port, topic=status_topic(SITE), client_id="delivery-status").start()
    nb_path = write_broker_config(tmp_path / "nb.toml", pki, aggregator, url=sep2_server.url,
                                  broker_port=broker.tls_port, sites=(SITE,),
                                  broker_extra=f"no_subscriber_retry_max_s = {RETRY_MAX_S}")
    config = load_config(nb_path)
    metrics = NorthboundMetrics()
    service = NorthboundService(config, metrics=metrics)
    now = sep2_server.state.now()
    program = sep2_server.add_program(primacy=1)
    sep2_server.add_control(program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=7, multiplier=3)),
                            start=now - 2, duration=600)
    agent = AgentProcess(edge_config)

    def publishes(outcome: str) -> float:
        return metrics.registry.get_sample_value("ems_northbound_command_publishes_total", {"outcome": outcome}) or 0

    def last_status() -> bytes | None:
        with status.lock:
            found = [p for t, p, _ in status.messages if t == status_topic(SITE)]
        return found[-1] if found else None

    async def until(condition, timeout: float, what: str) -> float:
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout:
                raise AssertionError(f"timed out waiting for {what}\n{agent.tail()}")
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    delays: list[float] = []

    async def go() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        try:
            # 1. the site never connected yet: the broker delivers the command to nobody, again and again
            await until(lambda: publishes("no_subscribers") >= 3, 30, "three publishes answered 'no subscribers'")
            assert sim.sim.write_count(UNIT) == 0 and publishes("ok") == 0
            agent.start()
            await until(lambda: last_status() == b"online", 30, "the edge agent online")
            delays.append(await until(lambda: sim.sim.setpoint(UNIT, "EXPORT_LIMIT") == 7000.0, BOUND_S,
                                      "the export limit at the device after the site came online"))
            # 2. the site goes away; the utility changes the limit meanwhile; the site comes back
            assert agent.stop(timeout=25) == 0
            before = publishes("no_subscribers")
            sep2_server.add_control(program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=4, multiplier=3)),
                                    start=sep2_server.state.now() - 1, duration=600,
                                    creation=sep2_server.state.now() + 1)
            await until(lambda: publishes("no_subscribers") >= before + 3, 30, "the new limit answered 'no subscribers'")
            assert sim.sim.setpoint(UNIT, "EXPORT_LIMIT") == 7000.0
            agent.start()
            await until(lambda: last_status() == b"online", 30, "the edge agent online again")
            delays.append(await until(lambda: sim.sim.setpoint(UNIT, "EXPORT_LIMIT") == 4000.0, BOUND_S,
                                      "the new export limit at the device after the site came back"))
            await asyncio.sleep(3 * RETRY_MAX_S + 1)      # time for any stray re-issue to land
        finally:
            stop.set()
            await asyncio.wait_for(runner, 15)

    try:
        asyncio.run(go())
    finally:
        code = agent.stop(timeout=25)
        status.stop()
        sim.stop()
        broker.proc.kill()
        broker.proc.wait(10)
    assert code == 0, agent.tail()
    print("delays after online:", [f"{d:.2f}" for d in delays], "no_subscribers:", publishes("no_subscribers"),
          "ok:", publishes("ok"), "writes:", sim.sim.write_count(UNIT))
    assert sim.sim.write_count(UNIT) == 2          # each limit written once: no copy of a re-issued command landed
    assert publishes("ok") == 2
    assert metrics.registry.get_sample_value("ems_northbound_command_results_total",
                                             {"site": SITE, "outcome": "applied"}) == 2
