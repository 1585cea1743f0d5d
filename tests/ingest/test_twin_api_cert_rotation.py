"""The twin API's HTTPS server takes a renewed server certificate without a restart and without a failed request."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devenv.mosquitto import free_port
from devenv.pki import CertPair, _issue
from ingest.mqtt import MqttLink, TlsFiles
from ingest.twin_api import TWIN_SUBSCRIPTION, TwinApi

pytestmark = pytest.mark.integration


def _serial_seen(port: int, client: ssl.SSLContext) -> int:
    """The serial of the certificate a new connection to the API is shown."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _renew(pki, directory: Path) -> CertPair:
    """A new localhost server certificate and key from the test CA, written beside (not over) the live ones."""
    directory.mkdir()
    pair = CertPair(directory / "server.crt", directory / "server.key")
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    _issue(pair, "localhost", x509.load_pem_x509_certificate(pki.ca.read_bytes()), ca_key, server=True)
    return pair


def _install(new: CertPair, live: CertPair) -> None:
    """What a Secret update or cert-manager does: each file replaced by rename (the pair briefly mismatched)."""
    for source, target in ((new.cert, live.cert), (new.key, live.key)):
        staged = target.with_suffix(".new")
        shutil.copyfile(source, staged)
        os.replace(staged, target)


def test_server_certificate_rotated_while_serving(broker, pki, prometheus, tmp_path, caplog):
    live = CertPair(tmp_path / "server.crt", tmp_path / "server.key")
    shutil.copyfile(pki.server.cert, live.cert)
    shutil.copyfile(pki.server.key, live.key)
    old_serial = _serial(live.cert)
    pair = pki.client("twin-api")
    link = MqttLink("127.0.0.1", broker.tls_port, TlsFiles(pki.ca, pair.cert, pair.key), "twin-api-rot",
                    subscriptions=(TWIN_SUBSCRIPTION,), manual_ack=False, persistent=False)
    client = ssl.create_default_context(cafile=str(pki.ca))
    results: list[int | str] = []
    stop = threading.Event()

    def requests(port: int) -> None:
        while not stop.is_set():       # a new connection (and handshake) per request
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/sites", context=client, timeout=10) as resp:
                    results.append(resp.status)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                results.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)

    caplog.set_level(logging.INFO, logger="ingest.twin_api")
    with TwinApi(link=link, query_url=prometheus.url, host="127.0.0.1", port=free_port(), cert=live.cert,
                 key=live.key, cert_check_s=0.1) as api:
        assert _serial_seen(api.port, client) == old_serial
        load = threading.Thread(target=requests, args=(api.port,), daemon=True)
        load.start()
        time.sleep(0.5)

        # Half written: a truncated certificate is logged once and the loaded one stays in use.
        good = live.cert.read_bytes()
        live.cert.write_bytes(good[: len(good) // 2])
        time.sleep(1.0)
        assert _serial_seen(api.port, client) == old_serial
        refusals = [r for r in caplog.records if "cannot be used" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        live.cert.write_bytes(good)

        new = _renew(pki, tmp_path / "renewed")
        new_serial = _serial(new.cert)
        assert new_serial != old_serial
        _install(new, live)
        deadline = time.monotonic() + 15
        seen = old_serial
        while seen != new_serial and time.monotonic() < deadline:
            time.sleep(0.1)
            seen = _serial_seen(api.port, client)
        time.sleep(0.5)
        stop.set()
        load.join(15)
        switches = api.certificate_switches

    assert seen == new_serial, "a new connection still sees the old certificate 15 s after the rotation"
    assert switches >= 1
    failures = [r for r in results if r != 200]
    assert not failures, failures[:5]
    assert len(results) > 20, f"only {len(results)} requests made during the rotation"
