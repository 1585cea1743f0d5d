"""The demo's north-bound step: a utility's export limit, from its IEEE 2030.5 server to the site's register.

Part of ``python -m devenv.demo_pipeline`` (``make demo``), beside the telemetry pipeline it
reuses: the 2030.5 test server (``devenv.sep2_server``, mutual TLS 1.2 offering only
``TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8``) in this process, issuing an export-limit DERControl;
``ems-northbound run`` as a process, with a ``northbound.toml`` whose ``[broker]`` is the demo
Mosquitto (certificate ``ems-northbound`` of the demo PKI: one identity for 2030.5 and MQTT),
``[readings]`` the demo twin API and ``[[mirror]]`` three of the site's points. ``report()``
waits for, and prints, what each side saw: the EndDevice the server registered (LFDI/SFDI),
the mirrored readings it received, the export-limit register read back from the simulator
over Modbus, and the Responses it recorded (1 received, 2 started).
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pymodbus.client import ModbusTcpClient

from devenv.mosquitto import free_port, wait_for_port
from devenv.pki import LocalPki
from devenv.process import ManagedProcess, wait_until
from devenv.sep2_server import Sep2TestServer
from northbound import sep2, tls
from northbound.identity import identity_from_certificate

__all__ = ["NORTHBOUND_IDENTITY", "ExportLimitPoint", "NorthboundDemo"]

ROOT = Path(__file__).resolve().parents[1]
NORTHBOUND_IDENTITY = "ems-northbound"
EXPORT_LIMIT_W = 5000
MIRROR = (("pv1", "active_power", "active_power"), ("feeder1", "voltage", "voltage"), ("tx1", "energy", "energy_import"))
"""(asset, point, 2030.5 reading) mirrored from the example site: W, kV → 0.1 V, MWh → Wh."""
RESPONSE_NAMES = {1: "received", 2: "started", 3: "completed", 252: "rejected (not applicable)",
                  254: "rejected (expired)"}


@dataclass(frozen=True)
class ExportLimitPoint:
    """Where the site's export limit lives: the writable point for ``exp_lim_w`` in its sensors.conf."""

    unit: int
    address: int
    scale: float

    @classmethod
    def from_config(cls, sensors_conf: Path) -> "ExportLimitPoint":
        doc = tomllib.loads(sensors_conf.read_text())
        for device in doc["devices"]:
            for point in device.get("writable", []):
                if point["control"] == "exp_lim_w":
                    return cls(device["unit"], point["address"], float(point.get("scale", 1.0)))
        raise ValueError(f"{sensors_conf}: no writable point for exp_lim_w")


def _ems_northbound() -> list[str]:
    script = Path(sys.executable).parent / "ems-northbound"
    return [str(script)] if script.exists() else [sys.executable, "-m", "northbound.cli"]


class NorthboundDemo(ManagedProcess):
    """The 2030.5 test server (a thread) and ``ems-northbound run`` (a process, output in ``workdir``)."""

    def __init__(self, workdir: Path, pki: LocalPki, *, site: str, broker_port: int, twin_port: int,
                 modbus_port: int, export_limit: ExportLimitPoint) -> None:
        super().__init__(workdir / "northbound.log")
        self.workdir, self.pki, self.site = workdir, pki, site
        self.broker_port, self.twin_port, self.modbus_port = broker_port, twin_port, modbus_port
        self.export_limit = export_limit
        self.identity = pki.client(NORTHBOUND_IDENTITY)
        self.server = Sep2TestServer(pki, self.identity.cert)
        self.metrics_port = free_port()
        self.config_path = workdir / "northbound.toml"
        self.control: object | None = None
        self.register_before: float | None = None

    def start(self) -> "NorthboundDemo":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.register_before = self.register_value()
        self.server.state.post_rate = 2          # mirror every 2 s (the server says how often; 300 s by default)
        self.server.start()
        program = self.server.add_program(primacy=1, default=sep2.DERControlBase(opModConnect=True))
        now = self.server.state.now()
        self.control = self.server.add_control(
            program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=EXPORT_LIMIT_W, multiplier=0)),
            start=now, duration=3600)
        mirror = "".join(f'[[mirror]]\nsite = "{self.site}"\nasset = "{asset}"\npoint = "{point}"\nreading = "{reading}"\n'
                         for asset, point, reading in MIRROR)
        self.config_path.write_text(f"""[server]
url = "{self.server.url}"
ca = "{self.pki.ca}"
[client]
cert = "{self.identity.cert}"
key = "{self.identity.key}"
[polling]
max_poll_s = 5
backoff_initial_s = 0.2
backoff_max_s = 2
[broker]
host = "127.0.0.1"
port = {self.broker_port}
ca = "{self.pki.ca}"
cert = "{self.identity.cert}"
key = "{self.identity.key}"
no_subscriber_retry_max_s = 1
[readings]
twin_api = "https://127.0.0.1:{self.twin_port}"
ca = "{self.pki.ca}"
[http]
host = "127.0.0.1"
port = {self.metrics_port}
[sites.{self.site}]
{mirror}""")
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.spawn(_ems_northbound() + ["run", "--config", str(self.config_path)], cwd=ROOT, env=env)
        wait_for_port(self.metrics_port, 20, self.proc)
        return self

    def stop(self) -> int | None:
        code = self.terminate(15)
        self.server.stop()
        return code

    def register_value(self) -> float | None:
        """The export-limit register of the simulator, read over Modbus, in W (None when unreadable)."""
        client = ModbusTcpClient("127.0.0.1", port=self.modbus_port, timeout=2)
        try:
            if not client.connect():
                return None
            rr = client.read_holding_registers(self.export_limit.address, count=1, device_id=self.export_limit.unit)
            return None if rr.isError() else rr.registers[0] * self.export_limit.scale
        finally:
            client.close()

    def _statuses(self, lfdi: str) -> list[int]:
        subject = getattr(self.control, "mRID", None)
        with self.server.state.lock:
            return [r.status for r in self.server.state.responses if r.endDeviceLFDI == lfdi and r.subject == subject]

    def _until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Whether ``condition()`` came true by ``deadline`` (monotonic) while ems-northbound kept running."""
        try:
            wait_until(condition, deadline - time.monotonic(), "the step", self.proc, interval=0.2)
        except (TimeoutError, RuntimeError):
            return False
        return True

    def report(self, timeout: float = 40.0) -> bool:
        """Wait (up to ``timeout`` in all) for each step and print it; True when every step was seen."""
        deadline = time.monotonic() + timeout
        state = self.server.state
        ok = self._until(lambda: bool(state.devices), deadline)
        print(f"\n2030.5 server {self.server.url}/dcap, cipher(s) negotiated: {', '.join(sorted(state.ciphers)) or '-'}")
        aggregator = identity_from_certificate(self.identity.cert.read_bytes())
        print(f"ems-northbound: certificate {NORTHBOUND_IDENTITY} → LFDI {aggregator.lfdi}, SFDI {aggregator.sfdi}")
        with state.lock:
            devices = list(state.devices)
        for device in devices:
            print(f"  EndDevice /edev/{device.index} registered by the client: LFDI {device.lfdi}, SFDI {device.sfdi}"
                  f" (site {self.site})")
        lfdi = devices[0].lfdi if devices else ""
        mirrored = ok and self._until(lambda: len({r.description for _, r in state.mirror_readings}) == len(MIRROR),
                                      deadline)
        with state.lock:
            latest = {r.description: r for _, r in state.mirror_readings}
            posts = len(state.mirror_readings)
        print(f"  mirrored readings received: {posts}; latest per point:")
        for name, reading in sorted(latest.items()):
            rt = reading.readingType
            value = reading.reading.value if reading.reading is not None else None
            print(f"    {name:<14} value {value} × 10^{rt.powerOfTenMultiplier} (uom {rt.uom}, kind {rt.kind}, "
                  f"flow {rt.flowDirection})")
        written = mirrored and self._until(lambda: self.register_value() == float(EXPORT_LIMIT_W), deadline)
        register = self.register_value()
        print(f"  DERControl {getattr(self.control, 'mRID', '?')}: opModExpLimW {EXPORT_LIMIT_W} W → "
              f"ems/v1/{self.site}/command → edge agent → simulator unit {self.export_limit.unit} holding "
              f"{self.export_limit.address}, read back over Modbus: "
              + ("unreadable" if register is None else f"{register:g} W")
              + ("" if self.register_before is None else f" (before the step: {self.register_before:g} W)"))
        answered = written and self._until(lambda: {1, 2} <= set(self._statuses(lfdi)), deadline)
        statuses = self._statuses(lfdi)
        print("  Responses recorded by the server: "
              + (", ".join(f"{s} {RESPONSE_NAMES.get(s, '')}".strip() for s in statuses) or "none"))
        if not answered:
            print(f"north-bound step incomplete; ems-northbound's log ({self.output_path}):\n{self.tail()}")
        return answered and state.ciphers == {tls.CCM8}
