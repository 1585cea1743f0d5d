"""The running client against the test server: faults back off without a crash, controls become commands."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Collection, Mapping

from devenv.pki import CertPair, LocalPki
from devenv.sep2_server import Sep2TestServer
from ems_contract.command import Command, decode_command, encode_command
from northbound import sep2
from northbound.client import PointValue
from northbound.config import load_config
from northbound.metrics import NorthboundMetrics
from northbound.service import Backoff, NorthboundService
from tests.northbound.nb_helpers import POLLING, start_cli_registered, write_config

MIRROR = '[[mirror]]\nsite = "sub-07"\nasset = "meter1"\npoint = "p"\nreading = "active_power"\n'


class FixedSource:
    async def latest(self, site: str, assets: Collection[str]) -> Mapping[tuple[str, str], PointValue]:
        return {("meter1", "p"): PointValue(2.5, "kW", int(time.time() * 1000)),
                ("inv1", "connected"): PointValue(1.0, "", int(time.time() * 1000))}


class RecordingSink:
    def __init__(self) -> None:
        self.commands: list[Command] = []

    async def issue(self, command: Command) -> None:
        decode_command(encode_command(command))          # what goes out satisfies the contract
        self.commands.append(command)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    backoff = Backoff(1.0, 8.0, rng=lambda: 1.0)
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    backoff.succeeded()
    assert Backoff(1.0, 8.0, rng=lambda: 0.0).failed() == 0.5 and backoff.failed() == 1.0


def test_faults_back_off_then_controls_become_commands(sep2_server: Sep2TestServer, pki: LocalPki,
                                                       aggregator: CertPair, tmp_path: Path) -> None:
    path = write_config(tmp_path / "nb.toml", pki, aggregator, url=sep2_server.url, mirror=MIRROR)
    der = '[sites.sub-07.der]\nrated_w = 5000\nconnected_point = "inv1/connected"\n'
    path.write_text(path.read_text().replace("pin = 111115\n", "pin = 111115\n" + POLLING + der, 1))
    config = load_config(path)
    now = sep2_server.state.now()
    program = sep2_server.add_program(primacy=1, default=sep2.DERControlBase(opModConnect=True))
    limit = sep2_server.add_control(program, sep2.DERControlBase(opModExpLimW=sep2.ActivePower(value=5, multiplier=3)),
                                    start=now - 5, duration=120)
    sep2_server.state.fail_next = [500, 500, 503]      # the server is unwell at first
    metrics, sink = NorthboundMetrics(), RecordingSink()
    service = NorthboundService(config, metrics=metrics, source=FixedSource(), sink=sink)

    async def go() -> dict:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (sink.commands and sep2_server.state.mirror_readings
                                                   and len(sep2_server.state.responses) >= 2
                                                   and sep2_server.state.der_reports):
            await asyncio.sleep(0.1)
        health = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{service.endpoint.port}/healthz")
        stop.set()
        await asyncio.wait_for(runner, 10)
        return health
    health = asyncio.run(go())
    assert health["status"] == "ok" and health["registered"] == {"sub-07": True, "sub-08": True}
    sample = metrics.registry.get_sample_value
    assert sample("ems_northbound_requests_total", {"function_set": "dcap", "outcome": "500"}) == 2
    assert sample("ems_northbound_requests_total", {"function_set": "dcap", "outcome": "503"}) == 1
    by_control = {c.control: c for c in sink.commands if c.site == "sub-07"}
    assert by_control["exp_lim_w"].value == 5000.0 and by_control["exp_lim_w"].event == limit.mRID
    assert by_control["exp_lim_w"].expires_ms <= (now + 120 - service.client.offset + 1) * 1000   # the event's end
    assert by_control["connect"].value is True and by_control["connect"].event is None
    assert sample("ems_northbound_active_control", {"site": "sub-07", "control": "exp_lim_w"}) == 5000.0
    assert sample("ems_northbound_control_from_event", {"site": "sub-07", "control": "exp_lim_w"}) == 1
    [(index, reading)] = sep2_server.state.mirror_readings[:1]
    assert reading.reading.value == 2500 and reading.readingType.uom == 38
    assert {r.status for r in sep2_server.state.responses if r.subject == limit.mRID} >= {1, 2}
    device = next(d.index for d in sep2_server.state.devices if d.lfdi == config.sites[0].lfdi)
    assert sep2_server.state.der_reports[(device, "ders")][0].genConnectStatus.value == "07"


def _get_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_run_command_stops_cleanly_on_sigterm(sep2_server: Sep2TestServer, pki: LocalPki, aggregator: CertPair,
                                              tmp_path: Path) -> None:
    path = write_config(tmp_path / "nb.toml", pki, aggregator, url=sep2_server.url, mirror="")
    path.write_text(path.read_text().replace("pin = 111115\n", "pin = 111115\n" + POLLING, 1))
    proc = start_cli_registered(path, sep2_server.state)
    try:
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"Traceback" not in out


def test_twin_api_source_reads_good_points_only(pki: LocalPki, tmp_path: Path) -> None:
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from northbound.config import ReadingsConfig
    from northbound.service import TwinApiSource

    twins = {"/v1/assets/sub-07/meter1": {"v": 1, "site": "sub-07", "asset": "meter1", "ts_ms": 5, "points": {
        "p": {"value": -1.5, "unit": "kW", "quality": "good", "ts_ms": 1000},
        "q": {"value": None, "unit": "kvar", "quality": "device_error", "ts_ms": 1000},
        "v": {"value": 231.0, "unit": "V", "quality": "stale", "ts_ms": 1000}}},
        "/v1/assets/sub-07/broken": "not an object"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(twins[self.path]).encode() if self.path in twins else b"{}"
            self.send_response(200 if self.path in twins else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = TwinApiSource(ReadingsConfig(twin_api=f"https://localhost:{server.server_address[1]}", ca=pki.ca))
        async def go() -> Mapping:
            try:
                return await source.latest("sub-07", {"meter1", "broken", "absent"})
            finally:
                await source.aclose()
        assert asyncio.run(go()) == {("meter1", "p"): PointValue(-1.5, "kW", 1000)}
    finally:
        server.shutdown()
        server.server_close()
