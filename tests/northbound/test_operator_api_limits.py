"""The operator API's listener limits, with real sockets on 127.0.0.1: a cap on connections served at once,
deadlines for a trickled handshake or request, and its TLS files loaded once from config to serving."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

from devenv.pki import CertPair, LocalPki
from devenv.sep2_server import Sep2TestServer
from ems_runtime.server_tls import ServerTls
from northbound.config import load_config
from northbound.metrics import NorthboundMetrics
from northbound.operator_api import OperatorApi
from northbound.service import NorthboundService
from tests.northbound.nb_helpers import write_config
from tests.northbound.test_operator_api import GATEWAY_CN, OPERATOR, _call, _client, _desk, _Listener, _Sink
from tests.slow_client import closed_by_server, over_a_cap_of_one, trickle

T = TypeVar("T")


@pytest.fixture
def limited(pki: LocalPki) -> Iterator[_Listener]:
    """A listener serving at most 2 connections, with 1 s for a handshake or a request to arrive."""
    sink = _Sink()
    tls = ServerTls(pki.server.cert, pki.server.key, pki.ca, (GATEWAY_CN,), require_client=True)
    api = _Listener("127.0.0.1", 0, _desk(sink, NorthboundMetrics()), tls, cert_check_s=0, max_connections=2,
                    request_timeout_s=1.0)
    api.gateway = _client(pki, pki.client(GATEWAY_CN))
    api.start()
    yield api
    api.stop()
    sink.loop.call_soon_threadsafe(sink.loop.stop)
    sink.thread.join(5)


def test_connections_beyond_the_cap_are_closed_at_once_and_logged_once(limited: _Listener, caplog) -> None:
    caplog.set_level(logging.INFO, logger="northbound.operator_api")
    held = [socket.create_connection(("127.0.0.1", limited.port), timeout=5) for _ in range(2)]   # no handshake yet
    try:
        time.sleep(0.2)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as extra:
                assert closed_by_server(extra, 0.5), "a connection beyond the cap was not closed"
        assert limited.refused_connections == 20
        assert limited.desk.metrics.registry.get_sample_value(
            "ems_northbound_operator_api_refused_connections_total") == 20
        lines = [r.getMessage() for r in caplog.records if "closed at accept" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith("operator api: 1 connections closed at accept"), lines
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10                     # the held slots free as their handshakes fail
    while time.monotonic() < deadline:
        try:
            assert _call(limited, "GET", "/v1/commands/abc", headers=OPERATOR)[0] == 404
            break
        except (ConnectionError, ssl.SSLError):
            time.sleep(0.1)
    else:
        pytest.fail("the listener did not serve again after the held connections closed")


def test_a_trickled_request_is_closed_at_its_deadline(limited: _Listener) -> None:
    raw = socket.create_connection(("127.0.0.1", limited.port), timeout=5)
    with limited.gateway.wrap_socket(raw, server_hostname="localhost") as sock:
        closed, elapsed = trickle(sock, b"POST /v1/commands HTTP/1.1\r\nHost: localhost\r\n", b"X-Slow: " + b"a" * 40)
    assert closed and elapsed < 3.0, f"closed: {closed} after {elapsed:.1f} s (deadline 1 s)"
    assert _call(limited, "GET", "/v1/commands/abc", headers=OPERATOR)[0] == 404      # and it keeps serving


def test_a_trickled_handshake_is_closed_at_its_deadline(limited: _Listener) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00")           # a TLS record header announcing a 512-byte ClientHello
        start = time.monotonic()
        closed = False
        for _ in range(40):                              # then one byte every 0.1 s
            try:
                sock.sendall(b"\x01")
            except ConnectionError:
                closed = True
                break
            if closed_by_server(sock, 0.1):
                closed = True
                break
        elapsed = time.monotonic() - start
    assert closed and elapsed < 3.0, f"closed: {closed} after {elapsed:.1f} s (deadline 1 s)"


def test_the_tls_files_are_loaded_once_from_config_to_serving(sep2_server: Sep2TestServer, pki: LocalPki,
                                                             aggregator: CertPair, tmp_path: Path,
                                                             monkeypatch) -> None:
    own = tmp_path / "operator"                          # files of the listener alone, so their loads can be counted
    own.mkdir()
    cert, key, ca = own / "tls.crt", own / "tls.key", own / "ca.crt"
    for source, target in ((pki.server.cert, cert), (pki.server.key, key), (pki.ca, ca)):
        shutil.copy(source, target)
    loads: list[str] = []
    load_chain, load_ca = ssl.SSLContext.load_cert_chain, ssl.SSLContext.load_verify_locations

    def counted_chain(context, certfile, *args, **kwargs):
        loads.append(str(certfile))
        return load_chain(context, certfile, *args, **kwargs)

    def counted_ca(context, cafile=None, *args, **kwargs):
        loads.append(str(cafile))
        return load_ca(context, cafile, *args, **kwargs)
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", counted_chain)
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted_ca)

    path = _service_config(tmp_path, pki, aggregator, sep2_server.url, (cert, key, ca))
    gateway = _client(pki, pki.client(GATEWAY_CN))
    status, _ = _with_service(path, NorthboundMetrics(), lambda api: _call(api, "GET", "/v1/commands/abc", None,
                                                                            OPERATOR, gateway))
    assert status == 404
    assert [p for p in loads if p in (str(cert), str(ca))] == [str(cert), str(ca)]


def test_the_cap_and_the_deadline_come_from_the_config(sep2_server: Sep2TestServer, pki: LocalPki,
                                                       aggregator: CertPair, tmp_path: Path) -> None:
    """``[operator_api] max_connections = 1`` and ``request_timeout_s = 3`` reach the listener the service starts.
    (3 s, not 1: on a loaded machine the held connection must not meet its deadline before the second is accepted.)"""
    path = _service_config(tmp_path, pki, aggregator, sep2_server.url, (pki.server.cert, pki.server.key, pki.ca),
                           "max_connections = 1\nrequest_timeout_s = 3\n")
    metrics = NorthboundMetrics()

    refused, expired, waited, tries = _with_service(path, metrics, lambda api: over_a_cap_of_one(
        api.port, lambda: metrics.registry.get_sample_value("ems_northbound_operator_api_refused_connections_total")))
    assert refused, "a connection beyond max_connections = 1 was not closed"
    assert expired and waited < 6.0, f"the held connection was closed: {expired}, after {waited:.1f} s (deadline 3 s)"
    assert metrics.registry.get_sample_value("ems_northbound_operator_api_refused_connections_total") == tries   # 1 unless the held one was refused first


def _service_config(tmp_path: Path, pki: LocalPki, aggregator: CertPair, url: str, files: tuple[Path, Path, Path],
                    extra: str = "") -> Path:
    """A north-bound config with [broker] and [operator_api] on a free port (its cert, key and CA ``files``)."""
    cert, key, ca = files
    path = write_config(tmp_path / "nb.toml", pki, aggregator, url=url)
    section = (f'[broker]\nhost = "127.0.0.1"\nca = "{pki.ca}"\ncert = "{aggregator.cert}"\nkey = "{aggregator.key}"\n'
               f'[operator_api]\nhost = "127.0.0.1"\nport = 0\ncert = "{cert}"\nkey = "{key}"\nclient_ca = "{ca}"\n'
               f'client_cns = ["{GATEWAY_CN}"]\ncert_check_s = 0\n{extra}')
    path.write_text(path.read_text().replace("[sites.sub-07]", f"{section}\n[sites.sub-07]", 1))
    return path


class _NoSink:
    async def issue(self, command: object) -> None:
        return None


def _with_service(path: Path, metrics: NorthboundMetrics, probe: Callable[[OperatorApi], T]) -> T:
    """Run the service of the config at ``path`` until ``probe(its operator API)``, called in a thread, returns."""
    service = NorthboundService(load_config(path), metrics=metrics, sink=_NoSink())  # type: ignore[arg-type]

    async def go() -> T:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        deadline = time.monotonic() + 20
        while service.operator_api is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        try:
            assert service.operator_api is not None, "the operator API did not start"
            return await asyncio.to_thread(probe, service.operator_api)
        finally:
            stop.set()
            await asyncio.wait_for(runner, 10)
    return asyncio.run(go())
