"""The edge benchmark rig (issue 9): its simulator, a counting subscriber, the bare-client ceiling.

* simulator: ``ems-edge simulate --profile rig:10x100`` — units 1–10, 100
  holding registers each; registers 0–1 hold the simulator's wall clock in ms
  (``edge_agent.simulator.rig_signal``), the other 98 change every 10 ms;
* ``RigSubscriber``: a QoS 1 subscriber that stamps every telemetry message
  with its arrival time; ``window()`` decodes them with the contract's strict
  decoder and returns readings, bytes on the wire and latencies (arrival −
  the clock reading of the same device read);
* ``run_bare_client``: ``python -m bench.bare_modbus`` in its own process, a
  bare pymodbus client polling the same units on the same schedule — the ceiling.

Every helper raises ``RigError`` when a service is missing or answers nothing,
so a benchmark never prints zeros for a rig that did not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.simulator import RIG_CLOCK_MODULUS, rig_devices
from ems_contract.telemetry_v2 import decode_telemetry

__all__ = ["RigError", "RigSubscriber", "Window", "rig_device_tables", "run_bare_client", "cpu_seconds",
           "peak_rss_mb", "percentile", "clock_latency_ms", "publish_bytes", "ROOT"]

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


class RigError(RuntimeError):
    """The rig did not run as set up (a service missing, no data): the benchmark fails loudly."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RigError(f"no VmHWM for process {pid}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        raise RigError("no latency samples")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def publish_bytes(topic: str, payload: bytes) -> int:
    """The MQTT PUBLISH packet's size on the wire before TLS (QoS 1: fixed header, topic, packet id, payload)."""
    body = 2 + len(topic.encode()) + 2 + len(payload)
    return 1 + (1 if body < 128 else 2 if body < 16384 else 3) + body


def clock_latency_ms(arrival_s: float, clock_value: float) -> float:
    """Milliseconds from the simulator's clock reading to ``arrival_s`` (the clock wraps at 2**32 ms)."""
    return (int(arrival_s * 1000) - int(clock_value)) % RIG_CLOCK_MODULUS


def rig_device_tables(devices: int, registers: int, poll_interval_s: float) -> list[dict[str, Any]]:
    """TOML-ready ``[[devices]]`` for the rig, every reading reported at every poll (heartbeat 1 ms)."""
    return [{"name": d.name, "host": d.host, "port": 0, "unit": d.unit, "timeout_s": d.timeout_s,
             "retries": d.retries, "poll_interval_s": poll_interval_s,
             "points": [{"id": p.id, "asset": p.asset, "name": p.name, "register": p.register,
                         "address": p.address, "type": p.type, "heartbeat_s": 0.001} for p in d.points]}
            for d in rig_devices(devices, registers)]


@dataclass(frozen=True)
class Window:
    """What arrived between two instants."""

    seconds: float
    readings: int                  # unique (site, seq); Node-RED's (bench.nodered): registers − 1 per unique message
    messages: int
    wire_bytes: int                # MQTT PUBLISH packets (fixed header, topic, packet id, payload), before TLS
    latencies_ms: list[float]


class RigSubscriber:
    """QoS 1 subscriber on the broker's plain port, persistent session; records (arrival, topic, payload)."""

    def __init__(self, port: int, client_id: str, *, topic: str = "ems/v1/+/telemetry") -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[float, str, bytes]] = []
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=paho.MQTTv311)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.port = port

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        arrived = time.time()
        with self._lock:
            self._messages.append((arrived, msg.topic, msg.payload))

    def start(self) -> "RigSubscriber":
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RigError(f"subscriber got no SUBACK from the broker on port {self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def count(self) -> int:
        with self._lock:
            return len(self._messages)

    def wait_quiet(self, quiet_s: float = 1.0, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            n = self.count()
            if n == last:
                return
            last = n
            time.sleep(quiet_s)

    def window(self, start: float = 0.0, end: float = float("inf")) -> Window:
        """Decode (strictly) what arrived in ``[start, end)`` wall-clock seconds."""
        with self._lock:
            chosen = [m for m in self._messages if start <= m[0] < end]
        seqs: set[tuple[str, int]] = set()
        latencies: list[float] = []
        wire = 0
        for arrived, topic, payload in chosen:
            batch = decode_telemetry(payload, topic=topic)
            wire += publish_bytes(topic, payload)
            for reading in batch.readings:
                seqs.add((batch.site, reading.seq))
                if reading.point == "clock" and reading.value is not None:
                    latencies.append(clock_latency_ms(arrived, reading.value))
        return Window(end - start if end != float("inf") else 0.0, len(seqs), len(chosen), wire, latencies)


def run_bare_client(port: int, devices: int, registers: int, interval_s: float, warmup_s: float,
                    seconds: float) -> dict[str, float]:
    """Run ``bench.bare_modbus`` in its own process; its JSON figures (see that module)."""
    args = [sys.executable, "-m", "bench.bare_modbus", "--port", str(port), "--devices", str(devices),
            "--registers", str(registers), "--interval", str(interval_s), "--warmup", str(warmup_s),
            "--seconds", str(seconds)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=warmup_s + seconds + 60)
    if done.returncode != 0:
        raise RigError(f"bare pymodbus client failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)
