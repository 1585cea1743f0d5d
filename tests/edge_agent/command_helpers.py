"""Helpers for the command-path tests: a sensors.conf with writable points, commands, and a simulator thread."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, parse_config
from edge_agent.simulator import Behaviour, Simulator
from ems_contract.command import Command, encode_command

SITE = "sub-07"
UNIT = 1


def writable_config_text(modbus_port: int, *, state_path: str = "commands.db", silence_s: float = 600.0,
                         broker: dict[str, Any] | None = None) -> str:
    """An inverter at unit 1: active power and the export limit it reports (read-back), a writable
    export limit (holding 20, uint16 in 10 W steps, 0..50 kW, 5 kW/s, safe 0 W) and a connect coil."""
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in (broker or {}).items())
    return f"""
site = "{SITE}"
[broker]
host = "127.0.0.1"
port = 8883
ca = "pki/ca.crt"
cert = "pki/edge.crt"
key = "pki/edge.key"
{extra}
[commands]
state_path = "{state_path}"

[[devices]]
name = "inv1"
host = "127.0.0.1"
port = {modbus_port}
unit = {UNIT}
timeout_s = 1.0
retries = 1
poll_interval_s = 0.5

[[devices.points]]
id = "INV_P"
asset = "inv1"
name = "active_power"
address = 0
type = "int32"
unit = "W"

[[devices.points]]
id = "INV_EXPLIM"
asset = "inv1"
name = "export_limit"
address = 10
type = "uint16"
gain = 10.0
unit = "W"

[[devices.writable]]
id = "EXPORT_LIMIT"
control = "exp_lim_w"
address = 20
type = "uint16"
scale = 10.0
min = 0
max = 50000
max_rate_per_s = 5000
readback = "INV_EXPLIM"
safe_value = 0
silence_timeout_s = {silence_s}

[[devices.writable]]
id = "CONNECT"
control = "connect"
register = "coil"
address = 3
safe_value = false
silence_timeout_s = {silence_s}
"""


def writable_config(folder: Path, modbus_port: int, **kwargs: Any) -> AgentConfig:
    return parse_config(writable_config_text(modbus_port, **kwargs), folder / "sensors.conf", check_files=False)


def command(value: float | bool, *, control: str = "exp_lim_w", now_ms: int, ttl_ms: int = 60_000,
            issued_ms: int | None = None, command_id: str | None = None, site: str = SITE) -> Command:
    issued = now_ms if issued_ms is None else issued_ms
    return Command(id=command_id or uuid.uuid4().hex, site=site, issued_ms=issued, expires_ms=issued + ttl_ms,
                   event="A1B2", control=control, value=value)


def payload(cmd: Command) -> bytes:
    return encode_command(cmd)


class SimulatorThread:
    """The pymodbus simulator on its own event loop in a thread (for tests whose agent is a subprocess)."""

    def __init__(self, config: AgentConfig, port: int, behaviours: dict[int, Behaviour] | None = None) -> None:
        self.sim = Simulator(config.devices, port=port, behaviours=behaviours)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="simulator")

    def start(self) -> "SimulatorThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
