"""The control path end to end on real services: a DERControl at the 2030.5 test server (CCM8 mutual TLS) →
a command on a real Mosquitto (mTLS) → a fake edge per site publishes a result → the Response the server records.

The broker is ``devenv.mosquitto.MosquittoBroker`` (the tests' fixture): mTLS, the certificate's CN as username,
and no ACL, so every certificate of the test CA may publish and subscribe. Who may publish commands on the
platform's broker is the broker component's dynamic-security roles, tested with that config in
tests/components/test_broker_config.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devenv.mosquitto import MosquittoBroker
from devenv.pki import CertPair, LocalPki
from devenv.sep2_server import Sep2TestServer
from ems_contract.command import Command, CommandResult, decode_command, encode_result
from northbound import sep2
from northbound.config import load_config
from northbound.metrics import NorthboundMetrics
from northbound.service import NorthboundService
from tests.northbound.nb_helpers import write_broker_config

SITES = {"sub-07": "applied", "sub-08": "rejected", "sub-09": "expired"}


class FakeEdge:
    """One paho client per site (its own certificate): records commands, answers each with the site's outcome.

    ``hold`` keeps sub-07's answers back until released, so the test sees what the server got before it.
    """

    def __init__(self, broker: MosquittoBroker, pki: LocalPki) -> None:
        self.commands: list[Command] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.stopped = threading.Event()
        self.clients = []
        for site in SITES:
            pair = pki.client(site)
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=site, protocol=mqtt.MQTTv5)
            client.tls_set(ca_certs=str(pki.ca), certfile=str(pair.cert), keyfile=str(pair.key))
            client.user_data_set(site)
            client.on_connect = lambda c, site, *a: c.subscribe(f"ems/v1/{site}/command", qos=1)
            client.on_message = self._on_message
            client.connect("127.0.0.1", broker.tls_port)
            client.loop_start()
            self.clients.append(client)

    def _on_message(self, client: mqtt.Client, site: str, message: mqtt.MQTTMessage) -> None:
        command = decode_command(message.payload, message.topic)
        with self.lock:
            self.commands.append(command)
        threading.Thread(target=self._answer, args=(client, site, command), daemon=True).start()

    def _answer(self, client: mqtt.Client, site: str, command: Command) -> None:
        try:
            self._answer_now(client, site, command)
        except RuntimeError:            # publish failed: only once stop() disconnected (a late command's answer)
            if not self.stopped.is_set():
                raise

    def _answer_now(self, client: mqtt.Client, site: str, command: Command) -> None:
        outcome = SITES[site] if command.event else "applied"      # default controls are applied everywhere
        if site == "sub-07":
            self.release.wait(30)
        if site == "sub-09" and command.event:                       # hostile and stray messages first
            for payload in (b"{not json", b'{"v":1}', encode_result(CommandResult("unknown", site, 1, "applied"))):
                client.publish(f"ems/v1/{site}/command-result", payload, qos=1).wait_for_publish(5)
        result = CommandResult(command.id, site, int(time.time() * 1000), outcome,
                               reason=None if outcome == "applied" else f"{outcome} at the site",
                               readback=command.value if outcome == "applied" else None)
        for _ in range(2 if site == "sub-08" else 1):               # sub-08's result is delivered twice
            client.publish(f"ems/v1/{site}/command-result", encode_result(result), qos=1).wait_for_publish(5)

    def stop(self) -> None:
        self.stopped.set()
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


def _config(tmp_path: Path, pki: LocalPki, aggregator: CertPair, url: str, broker: MosquittoBroker) -> Path:
    return write_broker_config(tmp_path / "nb.toml", pki, aggregator, url=url, broker_port=broker.tls_port,
                               broker_client=pki.client("ems-northbound-mqtt"), sites=tuple(SITES))


def _statuses(server: Sep2TestServer, lfdi: str, mrid: str) -> list[int]:
    with server.state.lock:
        return [r.status for r in server.state.responses if r.endDeviceLFDI == lfdi and r.subject == mrid]


def test_a_der_control_reaches_the_sites_and_their_results_come_back_as_responses(
        sep2_server: Sep2TestServer, broker: MosquittoBroker, pki: LocalPki, aggregator: CertPair,
        tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, pki, aggregator, sep2_server.url, broker))
    lfdi = {s.site: s.lfdi for s in config.sites}
    now = sep2_server.state.now()
    program = sep2_server.add_program(primacy=1, default=sep2.DERControlBase(opModConnect=True))
    limit = sep2_server.add_control(program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=5, multiplier=3)),
                                    start=now - 5, duration=20)
    edge = FakeEdge(broker, pki)
    metrics = NorthboundMetrics()
    service = NorthboundService(config, metrics=metrics)
    seen_before_release: dict[str, list[int]] = {}

    async def go() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        try:
            await _until(lambda: any(c.site == "sub-07" and c.event for c in edge.commands), 30)
            await asyncio.sleep(2.5)                  # a couple of ticks with sub-07's result held back
            seen_before_release["sub-07"] = _statuses(sep2_server, lfdi["sub-07"], limit.mRID)
            edge.release.set()
            await _until(lambda: all(len(_statuses(sep2_server, lfdi[s], limit.mRID)) >= 2 for s in SITES), 30)
            await _until(lambda: 3 in _statuses(sep2_server, lfdi["sub-07"], limit.mRID), 30)   # the event's end
            await asyncio.sleep(1.5)                  # anything posted twice would show up now
        finally:
            stop.set()
            await asyncio.wait_for(runner, 15)

    try:
        asyncio.run(go())
    finally:
        edge.stop()
    assert seen_before_release["sub-07"] == [1]       # received, and not started before the site applied it
    assert _statuses(sep2_server, lfdi["sub-07"], limit.mRID) == [1, 2, 3]    # received, started, completed
    assert _statuses(sep2_server, lfdi["sub-08"], limit.mRID) == [1, 252]
    assert _statuses(sep2_server, lfdi["sub-09"], limit.mRID) == [1, 254]
    by_site = {}
    for c in edge.commands:
        by_site.setdefault((c.site, c.control), []).append(c)
    assert len({c.id for c in edge.commands}) == len(edge.commands)        # no id published twice
    for site in SITES:
        [exp] = by_site[(site, "exp_lim_w")]          # not re-sent: a renewal could not outlast the event's end
        assert exp.value == 5000.0 and exp.event == limit.mRID
        assert exp.expires_ms <= (now + 15 - service.client.offset + 1) * 1000 and exp.expires_ms > exp.issued_ms
        [connect] = by_site[(site, "connect")]
        assert connect.value is True and connect.event is None
    sample = metrics.registry.get_sample_value
    assert sample("ems_northbound_command_publishes_total", {"outcome": "ok"}) == 6
    assert sample("ems_northbound_command_results_total", {"site": "sub-08", "outcome": "rejected"}) == 1
    assert sample("ems_northbound_command_results_total", {"site": "sub-09", "outcome": "expired"}) == 1
    assert sample("ems_northbound_command_results_total", {"site": "sub-07", "outcome": "applied"}) == 2
    ignored = {r: sample("ems_northbound_command_results_ignored_total", {"reason": r})
               for r in ("not_json", "bad_field", "unknown_command", "duplicate")}
    assert ignored == {"not_json": 1, "bad_field": 1, "unknown_command": 1, "duplicate": 2}   # sub-08: 2 results twice
    assert sample("ems_northbound_responses_total", {"status": "rejected_late"}) == 1


async def _until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def test_broker_down_backs_off_then_commands_flow_are_renewed_and_follow_a_changed_control(
        sep2_server: Sep2TestServer, broker: MosquittoBroker, pki: LocalPki, aggregator: CertPair,
        tmp_path: Path) -> None:
    path = _config(tmp_path, pki, aggregator, sep2_server.url, broker)
    path.write_text(path.read_text().replace("max_poll_s = 2", "max_poll_s = 2\ncommand_ttl_s = 10"))
    config = load_config(path)
    now = sep2_server.state.now()
    program = sep2_server.add_program(primacy=1)
    limit = sep2_server.add_control(program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=4, multiplier=3)),
                                    start=now - 5, duration=300)
    broker.stop()
    metrics = NorthboundMetrics()
    service = NorthboundService(config, metrics=metrics)
    sub07 = next(s.lfdi for s in config.sites if s.site == "sub-07")
    edge: list[FakeEdge] = []
    changed: list = []

    async def go() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        try:
            await _until(lambda: (metrics.registry.get_sample_value("ems_northbound_command_publishes_total",
                                                                    {"outcome": "unreachable"}) or 0) >= 2, 30)
            assert any(t.startswith("commands:") for t in service.health()[1]["backing_off"])
            broker.start()
            edge.append(FakeEdge(broker, pki))
            edge[0].release.set()
            await _until(lambda: len([c for c in edge[0].commands if c.site == "sub-07"]) >= 2, 40)
            urgent = sep2_server.add_program(primacy=0)                # the utility tightens the limit
            changed.append(sep2_server.add_control(
                urgent, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=3, multiplier=3)),
                start=sep2_server.state.now() - 1, duration=300))
            await _until(lambda: any(c.value == 3000.0 for c in edge[0].commands if c.site == "sub-07"), 30)
            await _until(lambda: 2 in _statuses(sep2_server, sub07, changed[0].mRID)
                         and 14 in _statuses(sep2_server, sub07, limit.mRID), 30)
        finally:
            stop.set()
            await asyncio.wait_for(runner, 15)

    try:
        asyncio.run(go())
    finally:
        for e in edge:
            e.stop()
    first, second = [c for c in edge[0].commands if c.site == "sub-07"][:2]
    assert first.id != second.id and first.value == second.value == 4000.0 and first.event == second.event == limit.mRID
    assert second.issued_ms < first.expires_ms <= first.issued_ms + 10_000       # renewed before the first expired
    tighter = [c for c in edge[0].commands if c.site == "sub-07" and c.value == 3000.0]
    assert tighter and tighter[0].event == changed[0].mRID and tighter[0].id not in (first.id, second.id)
    # The first event: received, started, then aborted by the other program's event, which started once applied.
    assert _statuses(sep2_server, sub07, limit.mRID) == [1, 2, 14]
    assert _statuses(sep2_server, sub07, changed[0].mRID) == [1, 2]


def test_the_run_command_publishes_commands_and_stops_cleanly_on_sigterm(
        sep2_server: Sep2TestServer, broker: MosquittoBroker, pki: LocalPki, aggregator: CertPair,
        tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    path = _config(tmp_path, pki, aggregator, sep2_server.url, broker)
    program = sep2_server.add_program(primacy=1)
    sep2_server.add_control(program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=2, multiplier=3)),
                            start=sep2_server.state.now() - 1, duration=300)
    edge = FakeEdge(broker, pki)
    edge.release.set()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "northbound.cli", "run", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len({c.site for c in edge.commands}) < len(SITES):
            time.sleep(0.1)
        assert {c.site for c in edge.commands} == set(SITES), "not every site got its command"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        edge.stop()
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"Traceback" not in out and b"PRIVATE KEY" not in out
    assert all(c.value == 2000.0 for c in edge.commands)
