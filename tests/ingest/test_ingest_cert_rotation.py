"""The ingest's client certificate rotated while readings flow: 0 lost, 0 duplicated in PromQL.

The worker (``ems-ingest run`` against the real Mosquitto and Prometheus) notices the renewed
pair within ``broker.cert_check_s`` (5 s), disconnects cleanly and reconnects with it; what it had
received and not acknowledged is redelivered by the broker and de-duplicated.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devenv.pki import CertPair, _issue
from ingest_support import Stream, promql_count
from test_ingest_faults import _assert_exact

pytestmark = pytest.mark.integration


def _renew_client(pki, name: str, directory) -> CertPair:
    """A new client certificate and key for CN ``name`` from the test CA, written beside the live ones."""
    directory.mkdir()
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    _issue(pair, name, x509.load_pem_x509_certificate(pki.ca.read_bytes()), ca_key, server=False)
    return pair


def _log(ingest) -> str:
    return ingest.output_path.read_text(errors="replace")


def test_client_certificate_rotated_while_readings_flow(prometheus, ingest_factory, edge, pki, tmp_path):
    ingest = ingest_factory(client_id="ingest-rot", max_readings=100)
    live = pki.client("ingest-rot")          # the files the worker's config names
    old_serial = x509.load_pem_x509_certificate(live.cert.read_bytes()).serial_number
    stream = Stream("sub-rot", base_ms=int(time.time() * 1000) - 1_200_000)
    sent = [0]
    switched = threading.Event()

    def publish() -> None:       # until 2 s after the switch (at most 4000 readings: all in the past)
        after = None
        while sent[0] < 4000 and (after is None or time.monotonic() < after):
            batch = stream.batches(sent[0] + 1, sent[0] + 10, 10)[0]
            edge.publish(stream.site, batch)
            sent[0] += 10
            if after is None and switched.is_set():
                after = time.monotonic() + 2
            time.sleep(0.02)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    ingest.wait_metric('ems_ingest_readings_total{outcome="written"}', lambda v: v >= 300)

    new = _renew_client(pki, "ingest-rot", tmp_path / "renewed")
    assert x509.load_pem_x509_certificate(new.cert.read_bytes()).serial_number != old_serial
    for source, target in ((new.cert, live.cert), (new.key, live.key)):   # by rename, as a Secret update does
        staged = target.with_suffix(".new")
        shutil.copyfile(source, staged)
        os.replace(staged, target)

    deadline = time.monotonic() + 30
    while "changed; reconnecting" not in _log(ingest) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "changed; reconnecting" in _log(ingest), ingest.tail()
    switched.set()
    assert publisher.is_alive(), "the stream ended before the switch"
    ingest.wait_metric("ems_ingest_broker_connected", lambda v: v == 1, timeout=20)

    publisher.join(60)
    assert not publisher.is_alive()
    ingest.wait_metric("ems_ingest_queue_depth", lambda v: v == 0)
    deadline = time.monotonic() + 30
    last = sent[0]
    assert last < 4000, "the stream ran to its cap: the switch came late"
    while time.monotonic() < deadline and promql_count(prometheus, stream.site, stream.base_ms + 1_100_000) < last:
        time.sleep(0.2)
    _assert_exact(prometheus, stream, last)
    assert "cannot be used" not in _log(ingest)
