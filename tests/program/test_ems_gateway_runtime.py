"""deployment/ems-gateway run for real: the sensors.conf the stack renders, the edge agent, both framings, a restart.

The ConfigMap of the ``local`` stack (with two RS-485 gateways: one Modbus TCP, one RTU over
TCP) is what the pod would read. The test moves only what a pod gets from Kubernetes — the
broker's address, the mounted certificate files, the two volumes, the gateways' addresses —
to this machine, then runs ``ems-edge run`` on it against a real Mosquitto (mTLS) and two
pymodbus servers, one per framing. A ``kubectl rollout restart`` with the Recreate strategy
is SIGTERM to the old pod, then a new pod on the same claims: the test does exactly that and
counts lost and duplicated readings against the audit log, which must be in the audit volume.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import tomlkit

from devenv.demo_edge import AgentProcess, Observer
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import LocalPki
from edge_agent.audit import read_audit
from edge_agent.config import load_config
from edge_agent.simulator import Simulator
from infra_mocks import evaluate_stack

pytestmark = pytest.mark.integration

GATEWAYS = [
    {"name": "gw-mbap", "host": "10.20.0.10", "unit": 1,
     "points": [{"id": "TX1_OIL", "asset": "tx-1", "name": "oil_temp", "address": 0, "type": "int16", "gain": 0.1,
                 "unit": "degC", "heartbeat_s": 0.2},
                {"id": "TX1_LOAD", "asset": "tx-1", "name": "load", "address": 1, "type": "uint16", "unit": "A",
                 "heartbeat_s": 0.2}]},
    {"name": "gw-rtu", "host": "10.20.0.11", "port": 4001, "unit": 7, "transport": "rtu-over-tcp",
     "points": [{"id": "FDR_V", "asset": "feeder-a", "name": "voltage", "address": 100, "type": "float32",
                 "unit": "kV", "heartbeat_s": 0.2}]},
]


def _rendered_conf() -> str:
    ev = evaluate_stack("local", {"ems:modbusGateways": json.dumps(GATEWAYS)})
    [conf] = [c for c in ev.of_type("kubernetes:core/v1:ConfigMap") if c.inputs["metadata"]["name"] == "ems-gateway-config"]
    return conf.inputs["data"]["sensors.conf"]


def _as_on_this_machine(text: str, root: Path, pki: LocalPki, broker_port: int, modbus_ports: dict[str, int]) -> Path:
    """The rendered config with the pod's mounts mapped under ``root`` and the network to 127.0.0.1."""
    doc = tomlkit.parse(text)
    mounts = {"/var/lib/ems": root / "var-lib-ems", "/var/log/ems": root / "var-log-ems", "/etc/ems/tls": root / "tls"}
    for folder in mounts.values():
        folder.mkdir(parents=True, exist_ok=True)

    def mapped(path: str) -> str:
        [(pod_dir, here)] = [(k, v) for k, v in mounts.items() if path.startswith(k + "/")]
        return str(here / path[len(pod_dir) + 1:])

    pair = pki.client(str(doc["site"]))
    shutil.copyfile(pki.ca, mapped(str(doc["broker"]["ca"])))
    shutil.copyfile(pair.cert, mapped(str(doc["broker"]["cert"])))
    fd = os.open(mapped(str(doc["broker"]["key"])), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pair.key.read_bytes())
    for table, key in (("broker", "ca"), ("broker", "cert"), ("broker", "key"), ("spool", "path"), ("audit", "path"),
                       ("twin", "cache_path")):
        doc[table][key] = mapped(str(doc[table][key]))
    doc["broker"]["host"] = "127.0.0.1"
    doc["broker"]["port"] = broker_port
    doc["http"]["host"] = "127.0.0.1"
    doc["http"]["port"] = free_port()
    for device in doc["devices"]:
        device["host"] = "127.0.0.1"
        device["port"] = modbus_ports[str(device["name"])]
        device["poll_interval_s"] = 0.2      # the test's pace; the stack keeps the agent's default
    path = root / "sensors.conf"
    path.write_text(tomlkit.dumps(doc))
    return path


class _Gateways:
    """One pymodbus server per gateway, each speaking the framing of the gateway as sold (``GATEWAYS``), in a thread."""

    def __init__(self, conf: Path) -> None:
        self.devices = load_config(conf, check_files=False).devices
        self.ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[Simulator] = []

    def start(self) -> "_Gateways":
        self._thread.start()
        for device in self.devices:
            [sold] = [g for g in GATEWAYS if g["name"] == device.name]
            server = Simulator([device], rtu=sold.get("transport") == "rtu-over-tcp")
            asyncio.run_coroutine_threadsafe(server.start(), self._loop).result(10)
            self._servers.append(server)
            self.ports[device.name] = server.port
        return self

    def requests(self) -> dict[str, int]:
        return {d.name: len(s.requests) for d, s in zip(self.devices, self._servers)}

    def stop(self) -> None:
        for server in self._servers:
            asyncio.run_coroutine_threadsafe(server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[_Gateways]:
    # Ports are known only once the servers listen; the servers take only units and points from the config.
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sensors.conf").write_text(_rendered_conf())
    servers = _Gateways(probe / "sensors.conf").start()
    try:
        yield servers
    finally:
        servers.stop()


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_rendered_gateway_polls_both_framings_and_loses_nothing_across_a_restart(
        tmp_path: Path, pki: LocalPki, broker: MosquittoBroker, gateways: _Gateways) -> None:
    rendered = _rendered_conf()
    assert {d.name: d.transport for d in gateways.devices} == {"gw-mbap": "tcp", "gw-rtu": "rtu-over-tcp"}
    conf = _as_on_this_machine(rendered, tmp_path / "pod", pki, broker.tls_port, gateways.ports)
    audit = tmp_path / "pod" / "var-log-ems" / "telemetry-audit.log"
    assert load_config(conf).audit.path == audit      # the manual's /var/log/ems/telemetry-audit.log, on its volume
    observer = Observer(broker.plain_port, client_id=f"gw-observer-{tmp_path.name}").start()
    try:
        points_seen = lambda: {(r.asset, r.point) for r in observer.readings()}  # noqa: E731
        first = AgentProcess(conf)
        first.start()
        try:
            _wait_for(lambda: {("tx-1", "oil_temp"), ("tx-1", "load"), ("feeder-a", "voltage")} <= points_seen(), 30,
                      "a reading of every point of both gateways")
            _wait_for(lambda: len(read_audit(audit).readings) > 30, 30, "readings before the restart")
        finally:
            assert first.stop(timeout=25) == 0, first.tail()          # Recreate: the old pod stops first
        before = len(read_audit(audit).readings)
        second = AgentProcess(conf)                                     # the new pod, same claims
        second.start()
        try:
            _wait_for(lambda: len(read_audit(audit).readings) > before + 20, 30, "readings after the restart")
        finally:
            assert second.stop(timeout=25) == 0, second.tail()
        observer.wait_quiet(quiet_s=1.0, timeout=20)
    finally:
        observer.stop()
    accepted = read_audit(audit).readings
    received: dict[int, set[tuple]] = {}
    for r in observer.readings():
        received.setdefault(r.seq, set()).add((r.ts_ms, r.asset, r.point, r.value))
    lost = set(accepted) - set(received)
    conflicting = {seq for seq, variants in received.items() if len(variants) > 1}
    assert len(accepted) > before > 20
    assert sorted(accepted) == list(range(1, len(accepted) + 1)), "the audited seqs have a gap across the restart"
    assert not lost and not conflicting and set(received) == set(accepted), (len(lost), len(conflicting))
    # Every gateway answered in its own framing: both servers served reads, and both devices' points arrived.
    assert all(n > 0 for n in gateways.requests().values()), gateways.requests()
    assert {(a["asset"], a["point"]) for a in accepted.values()} == {("tx-1", "oil_temp"), ("tx-1", "load"),
                                                                      ("feeder-a", "voltage")}
    verify = subprocess.run([sys.executable, "-m", "edge_agent.cli", "audit", "verify", "--config", str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and f"{len(accepted)} readings" in verify.stdout, verify.stdout + verify.stderr
