"""The control path with counts: the agent as a subprocess, real Mosquitto (mTLS for the agent), the real
pymodbus simulator in this process (its request log counts every write), commands published as the
north-bound client would (QoS 1 on ``ems/v1/<site>/command``) and results read from
``ems/v1/<site>/command-result``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devenv.demo_edge import AgentProcess, Observer, write_agent_config
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import LocalPki
from edge_agent.simulator import Behaviour
from ems_contract.command import Command, CommandResult, command_result_topic, command_topic, decode_result, encode_command
from ems_contract.telemetry import status_topic

from tests.edge_agent.command_helpers import SITE, UNIT, SimulatorThread, writable_config, writable_config_text

pytestmark = pytest.mark.integration


class Northbound:
    """Publishes commands with QoS 1 on the broker's plain listener (the test broker has no ACLs there)."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"northbound-{uuid.uuid4().hex[:6]}",
                                  protocol=paho.MQTTv311)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def send(self, data: bytes) -> None:
        info = self.client.publish(command_topic(SITE), data, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def command(self, value: float, *, ttl_s: float = 600.0, expired: bool = False, command_id: str | None = None) -> Command:
        now = int(time.time() * 1000)
        issued = now - 120_000 if expired else now
        cmd = Command(id=command_id or uuid.uuid4().hex, site=SITE, issued_ms=issued,
                      expires_ms=issued + (60_000 if expired else int(ttl_s * 1000)), event="C0000001",
                      control="exp_lim_w", value=value)
        self.send(encode_command(cmd))
        return cmd

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Control:
    workdir: Path
    broker: MosquittoBroker
    sim: SimulatorThread
    observer: Observer
    northbound: Northbound
    config: Path

    def results(self, command_id: str | None = None) -> list[CommandResult]:
        with self.observer.lock:
            messages = list(self.observer.messages)
        out = [decode_result(p, t) for t, p, _ in messages if t == command_result_topic(SITE)]
        return [r for r in out if command_id is None or r.id == command_id]

    def online_count(self) -> int:
        with self.observer.lock:
            return sum(1 for t, p, r in self.observer.messages if t == status_topic(SITE) and p == b"online" and not r)

    def start_agent(self) -> AgentProcess:
        seen = self.online_count()
        agent = AgentProcess(self.config)
        agent.start()
        # The agent subscribes right after CONNACK, before its birth message: once "online" arrives, commands reach it.
        _wait_for(lambda: self.online_count() > seen, 30, lambda: f"the agent online\n{agent.tail()}")
        return agent


def _wait_for(predicate, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.05)


def _control(tmp_path: Path, pki: LocalPki, broker: MosquittoBroker, *, silence_s: float = 600.0,
             behaviours: dict[int, Behaviour] | None = None) -> Control:
    port = free_port()
    sim = SimulatorThread(writable_config(tmp_path, port), port, behaviours).start()
    devices = tomllib.loads(writable_config_text(port, silence_s=silence_s))["devices"]
    config = write_agent_config(tmp_path / "site", pki, broker_port=broker.tls_port, modbus_port=port,
                                client=SITE, devices=devices, commands={"state_path": "commands.db"})
    observer = Observer(broker.plain_port, topic=f"ems/v1/{SITE}/#", client_id=f"results-{tmp_path.name}").start()
    return Control(tmp_path, broker, sim, observer, Northbound(broker.plain_port), config)


@pytest.fixture
def control(tmp_path: Path, pki: LocalPki, broker: MosquittoBroker) -> Iterator[Control]:
    c = _control(tmp_path, pki, broker)
    try:
        yield c
    finally:
        c.northbound.stop()
        c.observer.stop()
        c.sim.stop()


def _audit_verify(config: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "audit", "verify", "--path",
                             str(config.parent / "telemetry-audit.log")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_commands_in_bounds_are_applied_and_the_rest_never_written(control: Control) -> None:
    sim = control.sim.sim
    agent = control.start_agent()
    try:
        applied = control.northbound.command(12_000.0)
        _wait_for(lambda: control.results(applied.id), 20, lambda: f"a result\n{agent.tail()}")
        writes = sim.write_count(UNIT)
        assert writes == 1 and sim.setpoint(UNIT, "EXPORT_LIMIT") == 12_000.0
        out_of_bounds = control.northbound.command(75_000.0)
        expired = control.northbound.command(10_000.0, expired=True)
        control.northbound.send(encode_command(applied))                            # the same id again
        control.northbound.send(b'{"v":1,"id":"bad-1","site":"sub-07","control":"exp_lim_w"}')
        control.northbound.send(b"\x00\x01 not json at all")
        wrong_site = json.loads(encode_command(applied))
        wrong_site.update(id="other-site", site="sub-08")
        control.northbound.send(json.dumps(wrong_site).encode())
        for command_id in (out_of_bounds.id, expired.id, "bad-1", "other-site"):
            _wait_for(lambda c=command_id: control.results(c), 20, lambda c=command_id: f"the result of {c}\n{agent.tail()}")
        _wait_for(lambda: len(control.results(applied.id)) == 2, 20, "the duplicate's result")
        time.sleep(0.5)
        assert sim.write_count(UNIT) == writes == 1, "a rejected command reached the device"
        assert sim.setpoint(UNIT, "EXPORT_LIMIT") == 12_000.0
        http = f"http://127.0.0.1:{tomllib.loads(control.config.read_text())['http']['port']}"
        health = json.loads(urllib.request.urlopen(f"{http}/healthz", timeout=5).read())
        assert health["commands"]["controls"]["exp_lim_w"]["command"] == applied.id, health
        metrics = urllib.request.urlopen(f"{http}/metrics", timeout=5).read().decode()
        assert 'ems_edge_commands_total{outcome="rejected"} 4.0' in metrics
        assert 'ems_edge_command_writes_total{kind="command",outcome="applied"} 1.0' in metrics
        assert 'ems_edge_control_value{control="exp_lim_w"} 12000.0' in metrics
    finally:
        assert agent.stop(timeout=25) == 0, agent.tail()
    first, again = control.results(applied.id)
    assert (first.outcome, first.readback) == ("applied", 12_000.0)
    assert again.outcome == "rejected" and again.reason.startswith("duplicate")
    assert control.results(out_of_bounds.id)[0].outcome == "rejected"
    assert control.results(expired.id)[0].outcome == "expired"
    assert control.results("bad-1")[0].outcome == "rejected" and "malformed" in control.results("bad-1")[0].reason
    assert "site_mismatch" in control.results("other-site")[0].reason
    counts = {"applied": 1, "rejected": 4, "expired": 1}
    assert {o: sum(r.outcome == o for r in control.results()) for o in counts} == counts
    print("writes:", sim.write_count(UNIT), "results:", counts)
    text = _audit_verify(control.config)
    assert "7 commands, 1 writes" in text, text        # every message audited, the unreadable one included


@pytest.mark.parametrize("moment", ["while the device holds the write", "after the device stored the write"])
def test_agent_sigkilled_mid_command_never_writes_twice(control: Control, moment: str) -> None:
    """The device takes 0.8 s (within the device's 1 s timeout) to store a write and answer. The agent is
    SIGKILLed either while the device holds the write, or after it was stopped (SIGSTOP) at the write and
    the device has stored the value. After a restart the command is not written again, and the outcome
    reported (from a read-back after the device's timeout) is what the device holds."""
    control.sim.sim._units[UNIT].behaviour = Behaviour(write_delay_s=0.8)
    sim = control.sim.sim
    agent = control.start_agent()
    cmd = control.northbound.command(22_000.0)
    try:
        _wait_for(lambda: sim.write_count(UNIT) == 1, 20, lambda: f"the write at the device\n{agent.tail()}")
        assert agent.proc is not None
        if moment.startswith("after"):
            os.kill(agent.proc.pid, signal.SIGSTOP)
            _wait_for(lambda: sim.setpoint(UNIT, "EXPORT_LIMIT") == 22_000.0, 10, "the device to store the write")
        agent.kill()
        assert not control.results(cmd.id)
        agent = control.start_agent()
        _wait_for(lambda: control.results(cmd.id), 30, lambda: f"the outcome after the restart\n{agent.tail()}")
        time.sleep(1.5)                     # a second write, if any, would have reached the device by now
        assert sim.write_count(UNIT) == 1, "the command was written twice"
    finally:
        assert agent.stop(timeout=25) == 0, agent.tail()
    [result] = control.results(cmd.id)
    print(f"SIGKILL {moment}:", result)
    held = sim.setpoint(UNIT, "EXPORT_LIMIT")
    if moment.startswith("after"):
        assert held == 22_000.0
    # The report matches the device: applied when it holds the value, failed ("interrupted …") when it does not.
    assert (result.outcome, result.readback) == (("applied", 22_000.0) if held == 22_000.0 else ("failed", held))
    text = _audit_verify(control.config)
    assert "1 commands, 1 writes" in text, text        # the recovered outcome is the write's record


def test_broker_down_while_a_control_ends_the_safe_value_is_written_on_time(control: Control) -> None:
    sim = control.sim.sim
    agent = control.start_agent()
    try:
        cmd = control.northbound.command(30_000.0, ttl_s=6.0)
        _wait_for(lambda: control.results(cmd.id), 20, lambda: f"a result\n{agent.tail()}")
        assert sim.write_count(UNIT) == 1
        control.broker.stop(kill=True)
        expires_mono = time.monotonic() + (cmd.expires_ms / 1000 - time.time())
        _wait_for(lambda: sim.write_count(UNIT) == 2, 20, lambda: f"the fail-safe write\n{agent.tail()}")
        [write] = [r for r in sim.requests if r.function_code in (6, 16)][1:]
        late_s = write.at - expires_mono
        print(f"safe value written {late_s:+.2f} s after the control ended (broker down)")
        assert -0.2 <= late_s <= 2.0, late_s
        # The simulator counts a write when the request arrives and stores it a moment later (its own thread).
        _wait_for(lambda: sim.setpoint(UNIT, "EXPORT_LIMIT") == 0.0, 10, "the device to store the safe value")
        control.broker.start()
        _wait_for(lambda: [r for r in control.results() if r.id.startswith("failsafe-")], 30,
                  lambda: f"the fail-safe's result after the broker is back\n{agent.tail()}")
    finally:
        assert agent.stop(timeout=25) == 0, agent.tail()
    [failsafe] = [r for r in control.results() if r.id.startswith("failsafe-")]
    assert failsafe.outcome == "applied" and failsafe.readback == 0.0
    assert failsafe.reason.startswith("fail-safe: control exp_lim_w ended")
    assert sim.write_count(UNIT) == 2
    assert "2 writes" in _audit_verify(control.config)


def test_cloud_silence_with_the_broker_down_writes_the_safe_value(tmp_path: Path, pki: LocalPki,
                                                                   broker: MosquittoBroker) -> None:
    c = _control(tmp_path, pki, broker, silence_s=8.0)
    sim = c.sim.sim
    try:
        agent = c.start_agent()
        try:
            cmd = c.northbound.command(15_000.0, ttl_s=3600.0)
            _wait_for(lambda: c.results(cmd.id), 20, lambda: f"a result\n{agent.tail()}")
            applied_at = time.monotonic()
            c.broker.stop(kill=True)
            _wait_for(lambda: sim.write_count(UNIT) == 3, 20, lambda: f"the fail-safe writes\n{agent.tail()}")
            writes = [r for r in sim.requests if r.function_code in (5, 6, 16)]
            silent_s = [w.at - applied_at for w in writes[1:]]
            print("fail-safe writes after", [f"{s:.2f} s" for s in silent_s], "of silence (timeout 8 s)")
            assert all(7.0 <= s <= 10.0 for s in silent_s), silent_s
            _wait_for(lambda: sim.setpoint(UNIT, "EXPORT_LIMIT") == 0.0 and sim.setpoint(UNIT, "CONNECT") == 0.0, 10,
                      "the device to store both safe values")
            time.sleep(2)
            assert sim.write_count(UNIT) == 3, "the fail-safe was written more than once"
            c.broker.start()
            _wait_for(lambda: len([r for r in c.results() if r.id.startswith("failsafe-")]) == 2, 30,
                      lambda: f"the fail-safe results\n{agent.tail()}")
        finally:
            assert agent.stop(timeout=25) == 0, agent.tail()
    finally:
        c.northbound.stop()
        c.observer.stop()
        c.sim.stop()


class OneConnectionDevice:
    """A TCP front for the simulator that serves one connection at a time, as many field devices and
    RS-485 gateways do: a second connection while one is open is accepted and closed at once (counted)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.served = 0
        self.refused = 0
        self._open: list[socket.socket] = []
        self._busy = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> "OneConnectionDevice":
        thread = threading.Thread(target=self._accept, daemon=True, name="one-connection-device")
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return                                  # stopped
            if not self._busy.acquire(blocking=False):
                self.refused += 1
                conn.close()
                continue
            self.served += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
            self._open = [conn, upstream]
            pumps = [threading.Thread(target=self._pump, args=(a, b), daemon=True) for a, b in
                     ((conn, upstream), (upstream, conn))]
            for pump in pumps:
                pump.start()
            self._threads += pumps
            threading.Thread(target=self._release, args=(pumps, conn, upstream), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _release(self, pumps: list[threading.Thread], *sockets: socket.socket) -> None:
        for pump in pumps:
            pump.join()
        for s in sockets:
            s.close()
        self._busy.release()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)            # wakes the accept (close alone does not)
        self.listener.close()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)


def test_a_device_that_takes_one_connection_takes_the_commands_over_the_poll_connection(
        tmp_path: Path, pki: LocalPki, broker: MosquittoBroker) -> None:
    """The inverter serves one TCP connection at a time and the agent polls it every 0.5 s: each command's
    write and read-back go over the poll connection (a second connection would be refused), between polls."""
    port = free_port()
    sim = SimulatorThread(writable_config(tmp_path, port), port).start()
    front = OneConnectionDevice(port).start()
    devices = tomllib.loads(writable_config_text(front.port))["devices"]
    config = write_agent_config(tmp_path / "site", pki, broker_port=broker.tls_port, modbus_port=front.port,
                                client=SITE, devices=devices, commands={"state_path": "commands.db"})
    observer = Observer(broker.plain_port, topic=f"ems/v1/{SITE}/#", client_id=f"results-{tmp_path.name}").start()
    control = Control(tmp_path, broker, sim, observer, Northbound(broker.plain_port), config)
    try:
        agent = control.start_agent()
        try:
            _wait_for(lambda: sim.sim.request_count(unit=UNIT) >= 2, 20, lambda: f"polls\n{agent.tail()}")
            values = (10_000.0, 11_000.0, 10_500.0)         # within max_rate_per_s 5 kW/s
            for value in values:
                cmd = control.northbound.command(value)
                _wait_for(lambda c=cmd: control.results(c.id), 20, lambda: f"a result\n{agent.tail()}")
                [result] = control.results(cmd.id)
                assert (result.outcome, result.readback) == ("applied", value), result
                time.sleep(0.6)                                 # a poll between commands
        finally:
            assert agent.stop(timeout=25) == 0, agent.tail()
        assert sim.sim.write_count(UNIT) == 3 and sim.sim.setpoint(UNIT, "EXPORT_LIMIT") == 10_500.0
        assert front.refused == 0 and front.served >= 1, (front.served, front.refused)
    finally:
        control.northbound.stop()
        observer.stop()
        front.stop()
        sim.stop()
