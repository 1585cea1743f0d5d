"""Edge demo: simulator → agent → Mosquitto (mTLS) → subscriber, for ~15 seconds, then what arrived.

    python -m devenv.demo_edge [--seconds 15] [--workdir DIR]

Starts, all on 127.0.0.1 and free ports: a throw-away PKI, a Mosquitto broker
(mTLS listener for the agent, plain listener for the observer), the Modbus
simulator (``ems-edge simulate``) and the agent (``ems-edge run``) with
``edge_agent/examples/sensors.conf`` — copied into the work folder with its
ports rewritten (its relative paths then put the spool, audit log and twin
cache there). An observer subscribes to ``ems/v1/#`` with QoS 1 and a
persistent session; after SIGTERM to the agent it prints readings per asset,
sample values, the seq range, lost and duplicated readings, the twin and
status messages (with the thermal estimate of thermal assets) and the audit
verification. The command path (a 2030.5 export limit through ``ems-northbound`` to
the PV inverter's register) is the north-bound step of ``make demo``
(``devenv.demo_northbound``).

``write_agent_config()`` and ``AgentProcess`` are reused by the fault tests
and the edge benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import tomlkit
from paho.mqtt.enums import CallbackAPIVersion

from devenv.process import ManagedProcess
from devenv.mosquitto import MosquittoBroker, free_port, wait_for_port
from devenv.pki import LocalPki, make_pki
from edge_agent.audit import read_audit
from ems_contract.telemetry_v2 import decode_telemetry

__all__ = ["write_agent_config", "bench_device_tables", "AgentProcess", "SimulatorProcess", "Observer", "main", "EXAMPLE_CONFIG"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "edge_agent" / "examples" / "sensors.conf"


def _ems_edge() -> list[str]:
    """The ``ems-edge`` console script of this interpreter's environment (``-m edge_agent.cli`` without it)."""
    script = Path(sys.executable).parent / "ems-edge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge_agent.cli"]


def bench_device_tables(devices: int, points: int, *, poll_interval_s: float = 1.0) -> list[dict[str, Any]]:
    """TOML-ready ``[[devices]]`` matching ``ems-edge simulate --profile bench:<devices>x<points>``."""
    return [{"name": f"bench{d:03d}", "host": "127.0.0.1", "port": 0, "unit": d + 1, "timeout_s": 2.0,
             "retries": 1, "poll_interval_s": poll_interval_s,
             "points": [{"id": f"B{d:03d}_{p:03d}", "asset": f"bench{d:03d}", "name": f"p{p:03d}",
                         "register": "holding", "address": p, "type": "uint16", "heartbeat_s": 3600.0}
                        for p in range(points)]}
            for d in range(devices)]


def write_agent_config(workdir: Path, pki: LocalPki, *, broker_port: int, modbus_port: int,
                       http_port: int | None = None, source: Path = EXAMPLE_CONFIG, client: str = "edge-sub-07",
                       devices: list[dict[str, Any]] | None = None, **sections: dict[str, Any]) -> Path:
    """Copy ``source`` into ``workdir/sensors.conf`` with our ports, PKI and overrides; returns its path.

    ``sections`` override keys per table, e.g. ``spool={"max_readings": 100}``;
    ``devices`` replaces the device list (TOML-ready dicts) and drops the
    source's ``[assets.*]`` thermal assets, whose points it no longer has.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    pki_dir = workdir / "pki"
    pki_dir.mkdir(exist_ok=True)
    pair = pki.client(client)
    shutil.copyfile(pki.ca, pki_dir / "ca.crt")
    shutil.copyfile(pair.cert, pki_dir / "edge.crt")
    key = pki_dir / "edge.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pair.key.read_bytes())
    doc = tomlkit.parse(source.read_text())
    doc["broker"]["port"] = broker_port
    doc["broker"]["client_id"] = client
    doc["http"]["port"] = http_port if http_port is not None else free_port()
    for name, values in sections.items():
        for key_name, value in values.items():
            doc[name][key_name] = value
    if devices is not None:
        doc["devices"] = devices
        # The example's thermal assets name points of its own devices; replaced devices have none of them.
        doc.pop("assets", None)
    for device in doc["devices"]:
        device["port"] = modbus_port
    path = workdir / "sensors.conf"
    path.write_text(tomlkit.dumps(doc))
    os.chmod(path, 0o640)
    return path


class _Process(ManagedProcess):
    """A command of this project (``ems-edge …``) run from the checkout, output in ``log_path``."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        super().__init__(log_path)
        self.args = args

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.spawn(self.args, cwd=ROOT, env=env)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        return self.terminate(timeout)


class AgentProcess(_Process):
    """``ems-edge run --config PATH`` as a child process, logging to ``<config dir>/agent.log``."""

    def __init__(self, config: Path, *, grace_s: float = 10.0) -> None:
        super().__init__(_ems_edge() + ["run", "--config", str(config), "--shutdown-grace", str(grace_s)],
                         config.parent / "agent.log")


class SimulatorProcess(_Process):
    """``ems-edge simulate`` on ``port`` (``profile``: default or bench:DxP; ``pipelining``: ``--pipelining``)."""

    def __init__(self, workdir: Path, port: int, *, profile: str = "default", config: Path | None = None,
                 pipelining: bool = False) -> None:
        args = _ems_edge() + ["simulate", "--port", str(port), "--profile", profile]
        if config is not None:
            args += ["--config", str(config)]
        if pipelining:
            args.append("--pipelining")
        super().__init__(args, workdir / "simulator.log")
        self.port = port

    def start(self) -> None:
        super().start()
        wait_for_port(self.port, 20, self.proc)


class Observer:
    """A QoS 1 subscriber with a persistent session on the broker's plain port; records every message."""

    def __init__(self, port: int, topic: str = "ems/v1/#", client_id: str = "demo-observer") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self._ready = threading.Event()
        self.topic = topic
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=paho.MQTTv311)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1)
        self.port = port

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def start(self) -> "Observer":
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("observer got no SUBACK")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def readings(self) -> list[Any]:
        with self.lock:
            msgs = list(self.messages)
        return [r for topic, payload, _ in msgs if topic.endswith("/telemetry")
                for r in decode_telemetry(payload, topic=topic).readings]

    def wait_quiet(self, quiet_s: float = 1.0, timeout: float = 15.0) -> None:
        """Return once no message arrived for ``quiet_s`` (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            with self.lock:
                n = len(self.messages)
            if n == last:
                return
            last = n
            time.sleep(quiet_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ems-demo-edge-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {workdir}")
    pki = make_pki(workdir / "pki")
    broker = MosquittoBroker(workdir / "broker", pki)
    sim_port = free_port()
    sim = SimulatorProcess(workdir, sim_port)
    config = write_agent_config(workdir / "site", pki, broker_port=broker.tls_port, modbus_port=sim_port)
    agent = AgentProcess(config)
    observer = None
    try:
        broker.start()
        print(f"mosquitto: mTLS on 127.0.0.1:{broker.tls_port}, plain on {broker.plain_port}")
        sim.start()
        print(f"simulator: Modbus TCP on 127.0.0.1:{sim_port}")
        observer = Observer(broker.plain_port).start()
        agent.start()
        print(f"agent: ems-edge run --config {config} (for {args.seconds:.0f}s)")
        time.sleep(args.seconds)
        code = agent.stop()
        observer.wait_quiet()
        print(f"agent exited with code {code} after SIGTERM")
    finally:
        if observer is not None:
            observer.stop()
        agent.stop()
        sim.stop()
        broker.stop()
    return _report(observer, config.parent, code)


def _report(observer: Observer | None, site_dir: Path, code: int | None) -> int:
    from edge_agent.audit import verify

    assert observer is not None
    readings = observer.readings()
    counts = Counter(r.seq for r in readings)
    per_asset = Counter(r.asset for r in readings)
    latest: dict[tuple[str, str], Any] = {}
    for r in sorted(readings, key=lambda r: r.seq):
        latest[(r.asset, r.point)] = r
    audit = read_audit(site_dir / "telemetry-audit.log")
    lost = set(audit.readings) - set(counts) - audit.dropped
    dupes = sum(c - 1 for c in counts.values())
    print(f"\ntelemetry: {len([m for m in observer.messages if m[0].endswith('/telemetry')])} messages, "
          f"{len(readings)} readings, {len(counts)} unique seqs"
          + (f" (seq {min(counts)}..{max(counts)})" if counts else ""))
    for asset, n in sorted(per_asset.items()):
        samples = ", ".join(f"{p}={'null' if r.value is None else f'{r.value:.3g}'}{r.unit and ' ' + r.unit}"
                            f"{'' if r.quality == 'good' else ' [' + r.quality + ']'}"
                            for (a, p), r in sorted(latest.items()) if a == asset)
        print(f"  {asset:<8} {n:>5} readings   latest: {samples}")
    print(f"audited readings: {len(audit.readings)}; lost: {len(lost)}; duplicates on the wire: {dupes} "
          f"(removed by de-duplication on (site, seq)); dropped by the spool cap: {len(audit.dropped)}")
    twins = sorted({t for t, _, _ in observer.messages if "/twin/" in t})
    status = [p.decode() for t, p, _ in observer.messages if t.endswith("/status")]
    print(f"twin topics: {', '.join(twins) or 'none'}")
    last_twin = {t: p for t, p, _ in observer.messages if "/twin/" in t}
    for topic in twins:
        thermal = json.loads(last_twin[topic]).get("thermal")
        if thermal:
            print(f"  {topic} thermal: " + ", ".join(f"{k}={v}" for k, v in sorted(thermal.items())))
    print(f"status messages: {' → '.join(status) or 'none'}")
    for line in verify(site_dir / "telemetry-audit.log").lines():
        print(line)
    ok = code == 0 and not lost and readings
    print("RESULT:", "OK" if ok else "PROBLEM")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
