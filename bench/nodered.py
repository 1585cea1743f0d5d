"""Node-RED on the edge rig: the gateway issue 9 measures the agent against, in the same minutes.

Node-RED 4.1 with node-red-contrib-modbus, pinned in ``bench/nodered/package.json``
and its lock file, installed by ``make bench`` (``npm ci`` into ``bench/nodered/node_modules``).
The flow is what a Node-RED user builds for the rig: per unit one ``modbus-client``
(its own TCP connection, as the agent has one per device) and one ``modbus-read`` of
all its holding registers every poll interval, wired to an ``mqtt out`` node that
publishes each read's values (a JSON array) with QoS 1 over mTLS to the rig's Mosquitto,
one broker connection for all. Every poll's readings are published, as the agent's are
with its heartbeat forced to every poll.

``NodeRedSubscriber`` counts what arrives (``nodered_window``): a read of R registers
carries R − 1 readings (registers 0–1 are the simulator's clock, one reading, as the
agent reports it), and its latency is arrival − that clock. Node-RED's messages carry
no sequence number; a QoS 1 redelivery is the same bytes on the same topic, so each
(topic, payload) counts once (two reads of one unit in the same millisecond would have
the same clock too, and values that change every 10 ms).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.rig import ROOT, RigError, RigSubscriber, Window, clock_latency_ms, publish_bytes
from devenv.pki import LocalPki
from devenv.process import ManagedProcess

__all__ = ["NODERED_DIR", "NodeRedProcess", "NodeRedSubscriber", "install_nodered", "installed_versions", "node_version",
           "nodered_flow", "nodered_window", "wait_for_messages", "TOPIC"]

NODERED_DIR = ROOT / "bench" / "nodered"
TOPIC = "nodered/rig"            # one topic per unit below it: nodered/rig/<unit>
_RED = NODERED_DIR / "node_modules" / "node-red" / "red.js"


def install_nodered() -> Path:
    """``npm ci`` the pinned Node-RED into ``bench/nodered/node_modules`` unless what is there is newer
    than ``package.json`` and the lock file; ``red.js``'s path. ``make bench`` calls this
    (``python -m bench.nodered``) before the benchmarks, so no install falls between two runs.

    Install scripts are not run: the rig uses Modbus TCP only, and serialport's native
    binding (an install-script dependency of node-red-contrib-modbus) is never loaded."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        raise RigError("Node-RED needs node and npm: scripts/install-system-packages.sh --bench installs them")
    stamp = NODERED_DIR / "node_modules" / ".package-lock.json"      # npm writes it last, after the install
    pins = [NODERED_DIR / "package.json", NODERED_DIR / "package-lock.json"]
    if not _RED.exists() or not stamp.exists() or any(stamp.stat().st_mtime <= p.stat().st_mtime for p in pins):
        try:
            done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel", "error"],
                                  cwd=NODERED_DIR, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            raise RigError(f"npm ci in {NODERED_DIR} did not finish in {exc.timeout:.0f}s") from exc
        if done.returncode != 0:
            raise RigError(f"npm ci in {NODERED_DIR} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    if not _RED.exists():
        raise RigError(f"npm ci did not install {_RED}")
    return _RED


def node_version() -> str:
    """``node --version`` (V8 changes Node-RED's CPU: the bench prints it beside Node-RED's figures)."""
    try:
        return subprocess.run([shutil.which("node") or "node", "--version"], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise RigError(f"node --version failed: {exc}") from exc


def installed_versions() -> str:
    """The installed Node-RED and node-red-contrib-modbus versions and node's, for the bench's output."""
    modules = NODERED_DIR / "node_modules"
    try:
        red, modbus = (json.loads((modules / name / "package.json").read_text())["version"]
                       for name in ("node-red", "node-red-contrib-modbus"))
    except (OSError, ValueError, KeyError) as exc:
        raise RigError(f"Node-RED's installed versions are unreadable under {modules}: {exc}") from exc
    return f"Node-RED {red}, node-red-contrib-modbus {modbus}, node {node_version()}"


def nodered_flow(*, units: int, registers: int, interval_s: float, modbus_port: int, broker_port: int,
                 ca: Path, cert: Path, key: Path) -> list[dict[str, Any]]:
    """The flow (flows.json's list of nodes) for the rig; see the module's docstring."""
    tab = "rig-tab"
    nodes: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": "edge rig", "disabled": False, "info": ""},
        {"id": "rig-tls", "type": "tls-config", "name": "rig mTLS", "cert": str(cert), "key": str(key),
         "ca": str(ca), "certname": "", "keyname": "", "caname": "", "servername": "localhost",
         "verifyservercert": True, "alpnprotocol": ""},
        {"id": "rig-broker", "type": "mqtt-broker", "name": "rig broker", "broker": "127.0.0.1",
         "port": str(broker_port), "tls": "rig-tls", "clientid": "nodered-rig", "autoConnect": True,
         "usetls": True, "protocolVersion": "4", "keepalive": "30", "cleansession": True,
         "autoUnsubscribe": True, "birthTopic": "", "closeTopic": "", "willTopic": "", "sessionExpiry": ""},
    ]
    rate_ms = max(1, round(interval_s * 1000))
    for unit in range(1, units + 1):
        client, read, out = f"rig-client-{unit}", f"rig-read-{unit}", f"rig-out-{unit}"
        nodes += [
            {"id": client, "type": "modbus-client", "name": f"unit {unit}", "clienttype": "tcp",
             "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False,
             "failureLogEnabled": True, "tcpHost": "127.0.0.1", "tcpPort": str(modbus_port),
             "tcpType": "DEFAULT", "serialPort": "/dev/ttyUSB", "serialType": "RTU-BUFFERD",
             "serialBaudrate": "9600", "serialDatabits": "8", "serialStopbits": "1", "serialParity": "none",
             "serialConnectionDelay": "100", "serialAsciiResponseStartDelimiter": "0x3A",
             "unit_id": str(unit), "commandDelay": "1", "clientTimeout": "2000", "reconnectOnTimeout": True,
             "reconnectTimeout": "2000", "parallelUnitIdsAllowed": True},
            {"id": read, "type": "modbus-read", "z": tab, "name": f"read unit {unit}", "topic": "",
             "showStatusActivities": False, "logIOActivities": False, "showErrors": True,
             "unitid": str(unit), "dataType": "HoldingRegister", "adr": "0", "quantity": str(registers),
             "rate": str(rate_ms), "rateUnit": "ms", "delayOnStart": False, "startDelayTime": "",
             "server": client, "useIOFile": False, "ioFile": "", "useIOForPayload": False,
             "emptyMsgOnFail": False, "x": 150, "y": 60 * unit, "wires": [[out], []]},
            {"id": out, "type": "mqtt out", "z": tab, "name": f"publish unit {unit}", "topic": f"{TOPIC}/{unit}",
             "qos": "1", "retain": "false", "respTopic": "", "contentType": "", "userProps": "", "correl": "",
             "expiry": "", "broker": "rig-broker", "x": 450, "y": 60 * unit, "wires": []},
        ]
    return nodes


def _settings(user_dir: Path, port: int) -> str:
    """Node-RED's settings.js: the flow file, a free editor port on 127.0.0.1, warnings only."""
    return ("module.exports = {\n"
            f"  userDir: {json.dumps(str(user_dir))},\n"
            "  flowFile: 'flows.json',\n"
            "  credentialSecret: false,\n"
            f"  uiPort: {port},\n"
            "  uiHost: '127.0.0.1',\n"
            "  logging: { console: { level: 'warn', metrics: false, audit: false } },\n"
            "  editorTheme: { projects: { enabled: false } },\n"
            "  contextStorage: { default: { module: 'memory' } },\n"
            "};\n")


class NodeRedProcess(ManagedProcess):
    """``node red.js`` with the rig's flow in ``work``, logging to ``work/nodered.log``. Node-RED must be
    installed (``install_nodered``); ``start()`` writes the flow and settings files, then starts it."""

    def __init__(self, work: Path, pki: LocalPki, *, units: int, registers: int, interval_s: float,
                 modbus_port: int, broker_port: int, ui_port: int) -> None:
        super().__init__(work / "nodered.log")
        self.work, self.pki, self.ui_port = work, pki, ui_port
        self.rig = dict(units=units, registers=registers, interval_s=interval_s, modbus_port=modbus_port,
                        broker_port=broker_port)

    def start(self) -> None:
        """Write the flow and settings into ``work`` (a client certificate from the PKI), then start Node-RED."""
        if not _RED.exists():
            raise RigError(f"Node-RED is not installed ({_RED} is missing): run `python -m bench.nodered`")
        work = self.work
        work.mkdir(parents=True, exist_ok=True)
        pair = self.pki.client("nodered-rig")
        flow = nodered_flow(**self.rig, ca=self.pki.ca, cert=pair.cert, key=pair.key)
        (work / "flows.json").write_text(json.dumps(flow, indent=1))
        (work / "settings.js").write_text(_settings(work, self.ui_port))
        self.spawn([shutil.which("node") or "node", str(_RED), "--settings", str(work / "settings.js"),
                    "--userDir", str(work)], cwd=NODERED_DIR)

    def stop(self, timeout: float = 20.0) -> int | None:
        return self.terminate(timeout)


def nodered_window(messages: list[tuple[float, str, bytes]], start: float, end: float, registers: int) -> Window:
    """What Node-RED delivered in ``[start, end)`` (arrival, wall-clock seconds): each message must be the
    JSON array of one read's ``registers`` values; a (topic, payload) seen before is a redelivery."""
    seen: set[tuple[str, bytes]] = set()
    readings = wire = 0
    latencies: list[float] = []
    for arrived, topic, payload in messages:
        if not start <= arrived < end or (topic, payload) in seen:
            continue
        seen.add((topic, payload))
        try:
            values = json.loads(payload)
        except ValueError as exc:
            raise RigError(f"Node-RED published {payload[:80]!r} on {topic}: not JSON ({exc})") from exc
        if not isinstance(values, list) or len(values) != registers or \
                not all(type(v) is int and 0 <= v <= 0xFFFF for v in values):
            raise RigError(f"Node-RED published {payload[:80]!r} on {topic}: not the read's {registers} register values")
        readings += registers - 1
        wire += publish_bytes(topic, payload)
        latencies.append(clock_latency_ms(arrived, values[0] * 65536 + values[1]))
    return Window(end - start if end != float("inf") else 0.0, readings, len(seen), wire, latencies)


class NodeRedSubscriber(RigSubscriber):
    """The rig's subscriber on Node-RED's topics; ``window()`` is ``nodered_window`` over what arrived,
    ``topics()`` the topics seen in a window (a unit that never answered has none)."""

    def __init__(self, port: int, client_id: str, *, registers: int) -> None:
        super().__init__(port, client_id, topic=f"{TOPIC}/+")
        self.registers = registers

    def window(self, start: float = 0.0, end: float = float("inf")) -> Window:
        with self._lock:
            messages = list(self._messages)
        return nodered_window(messages, start, end, self.registers)

    def topics(self, start: float = 0.0, end: float = float("inf")) -> set[str]:
        with self._lock:
            return {topic for arrived, topic, _ in self._messages if start <= arrived < end}


def wait_for_messages(subscriber: RigSubscriber, proc: NodeRedProcess, timeout_s: float) -> None:
    """Until the first message arrives; RigError, with the exit code and the log's tail, when Node-RED
    exits first or sends nothing in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if subscriber.count():
            return
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RigError(f"Node-RED exited ({proc.proc.returncode}) before publishing; its log ends:\n"
                           f"{proc.tail(1500)}")
        time.sleep(0.2)
    raise RigError(f"Node-RED published nothing within {timeout_s:.0f}s; its log ends:\n{proc.tail(1500)}")


def main() -> int:
    """``python -m bench.nodered``: install the pinned Node-RED (``make bench`` runs this first)."""
    try:
        install_nodered()
        print(f"{installed_versions()}: {_RED}")
    except RigError as exc:
        print(f"bench.nodered: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
