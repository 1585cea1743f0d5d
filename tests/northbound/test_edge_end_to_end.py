"""The whole control path on real parts: a DERControl at the 2030.5 test server (CCM8 mutual TLS) → ems-northbound
→ the platform's broker config (Mosquitto with the generated dynamic-security roles) → the edge agent (a process)
→ a Modbus write at the pymodbus simulator, read back → command-result → the Response the server records; and
at the event's end, the edge's fail-safe writes the safe value.
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
from ems_contract.command import command_result_topic, decode_result
from ems_contract.telemetry import status_topic
from northbound import sep2
from northbound.config import load_config
from northbound.metrics import NorthboundMetrics
from northbound.service import NorthboundService
from tests.components.test_broker_config import NORTHBOUND, _start_broker
from tests.edge_agent.command_helpers import SITE, UNIT, SimulatorThread, writable_config, writable_config_text
from tests.northbound.nb_helpers import write_broker_config

pytestmark = pytest.mark.integration


def test_a_der_control_is_written_at_the_site_read_back_and_answered(
        sep2_server: Sep2TestServer, pki: LocalPki, aggregator: CertPair, tmp_path: Path) -> None:
    assert aggregator.cert.exists() and NORTHBOUND == "ems-northbound"      # one certificate for 2030.5 and MQTT
    (tmp_path / "broker").mkdir()
    broker = _start_broker(tmp_path / "broker", pki)
    port = free_port()
    sim = SimulatorThread(writable_config(tmp_path, port), port).start()
    devices = tomllib.loads(writable_config_text(port))["devices"]
    edge_config = write_agent_config(tmp_path / "site", pki, broker_port=broker.tls_port, modbus_port=port,
                                     client=SITE, devices=devices, commands={"state_path": "commands.db"})
    observer = Observer(broker.plain_port, topic=f"ems/v1/{SITE}/#", client_id="e2e-results").start()
    agent = AgentProcess(edge_config)
    nb_path = write_broker_config(tmp_path / "nb.toml", pki, aggregator, url=sep2_server.url,
                                  broker_port=broker.tls_port, sites=(SITE,))
    config = load_config(nb_path)
    lfdi = config.sites[0].lfdi
    now = sep2_server.state.now()
    program = sep2_server.add_program(primacy=1)
    limit = sep2_server.add_control(program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=7, multiplier=3)),
                                    start=now - 2, duration=25)
    service = NorthboundService(config, metrics=NorthboundMetrics())

    def statuses() -> list[int]:
        with sep2_server.state.lock:
            return [r.status for r in sep2_server.state.responses if r.endDeviceLFDI == lfdi and r.subject == limit.mRID]

    def results():
        with observer.lock:
            return [decode_result(p, t) for t, p, _ in observer.messages if t == command_result_topic(SITE)]

    def online() -> bool:
        with observer.lock:
            return (status_topic(SITE), b"online", False) in observer.messages

    async def until(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{agent.tail()}")
            await asyncio.sleep(0.1)

    async def go() -> None:
        # The agent's sessions start clean: a command published before it subscribed would not reach it, and
        # the observer on ems/v1/<site>/# counts as a subscriber, so the broker would not answer PUBACK 16 and
        # the client would re-issue only at half the command's lifetime (test_command_delivery has no observer).
        await until(online, 30, "the edge agent online (subscribed)")
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        try:
            await until(lambda: sim.sim.setpoint(UNIT, "EXPORT_LIMIT") == 7000.0, 40, "the export limit at the device")
            await until(lambda: 2 in statuses(), 30, "the Response 'started' after the site applied it")
            await until(lambda: sim.sim.setpoint(UNIT, "EXPORT_LIMIT") == 0.0, 60, "the safe value after the event")
            await until(lambda: any(r.id.startswith("failsafe-") for r in results()), 20, "the fail-safe's result")
        finally:
            stop.set()
            await asyncio.wait_for(runner, 15)

    agent.start()
    try:
        asyncio.run(go())
    finally:
        code = agent.stop(timeout=25)
        observer.stop()
        sim.stop()
        broker.proc.kill()
        broker.proc.wait(10)
    assert code == 0, agent.tail()
    applied = [r for r in results() if r.outcome == "applied" and not r.id.startswith("failsafe-")]
    assert applied and all(r.readback == 7000.0 for r in applied)
    assert not [r for r in results() if r.outcome != "applied"], results()
    writes = sim.sim.write_count(UNIT)
    print("statuses:", statuses(), "writes:", writes, "results:", [(r.id[:12], r.outcome) for r in results()])
    assert writes == len(applied) + 1              # each command once, and the export limit's fail-safe at the end
    assert statuses()[:2] == [1, 2]
