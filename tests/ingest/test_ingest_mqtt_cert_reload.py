"""``MqttLink`` (ingest and twin API) presents the certificate on disk after a rotation, not the one it started with.

Against the real Mosquitto (mTLS, identity from the certificate): a rotation to an *expired*
certificate makes the broker refuse the reconnect — proof the new pair is the one presented — and a
rotation to a valid one reconnects. A half-written pair is logged once and changes nothing. The switch waits for paho's disconnect on an
event, not in 10 ms sleeps.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

import pytest

from devenv.pki import CertPair
from ingest.mqtt import MqttLink, TlsFiles

pytestmark = pytest.mark.integration


def _install(source: CertPair, live: CertPair) -> None:
    for src, target in ((source.cert, live.cert), (source.key, live.key)):
        staged = target.with_suffix(".new")
        shutil.copyfile(src, staged)
        os.replace(staged, target)


def _until(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def _started_link(broker, pki, live: CertPair, client_id: str, cert_check_s: float) -> MqttLink:
    link = MqttLink("127.0.0.1", broker.tls_port, TlsFiles(pki.ca, live.cert, live.key), client_id,
                    subscriptions=(), manual_ack=False, persistent=False, cert_check_s=cert_check_s)
    link.start()
    return link


def test_the_rotated_certificate_is_the_one_presented(broker, pki, tmp_path, caplog):
    good = pki.client("reload-ok")
    expired = pki.client("reload-ok", "expired", valid_days=-1)     # same CN, already expired
    renewed = pki.client("reload-ok", "renewed")
    live = CertPair(tmp_path / "tls.crt", tmp_path / "tls.key")
    _install(good, live)
    caplog.set_level(logging.INFO, logger="ingest.mqtt")
    link = _started_link(broker, pki, live, "reload-ok", cert_check_s=0.1)
    try:
        link.wait_connected(15)
        first = link.generation

        # Half written: the key of another certificate next to ours. Logged once, connection kept.
        shutil.copyfile(renewed.key, live.key)
        time.sleep(1.0)
        refusals = [r for r in caplog.records if "cannot be used" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert link.connected and link.generation == first and link.certificate_switches == 0
        shutil.copyfile(good.key, live.key)          # back to the loaded bytes: no switch
        time.sleep(0.5)
        assert link.certificate_switches == 0

        _install(expired, live)
        assert _until(lambda: link.certificate_switches == 1)
        time.sleep(3)                                # the broker refuses every attempt with the expired one
        assert not link.connected, "still connected after switching to an expired certificate"

        _install(renewed, live)
        assert _until(lambda: link.certificate_switches == 2)
        assert _until(lambda: link.connected, 20), "not connected with the renewed certificate"
        assert link.generation > first
    finally:
        link.stop()


def test_the_switch_waits_for_the_disconnect_without_sleeping(broker, pki, tmp_path, monkeypatch):
    first, renewed = pki.client("switch-ok"), pki.client("switch-ok", "renewed")
    live = CertPair(tmp_path / "tls.crt", tmp_path / "tls.key")
    _install(first, live)
    link = _started_link(broker, pki, live, "switch-ok", cert_check_s=0)    # the test calls check_certificate()
    try:
        link.wait_connected(15)
        generation = link.generation
        _install(renewed, live)
        sleeps: list[float] = []
        sleep, switching = time.sleep, threading.get_ident()

        def counted(seconds: float) -> None:
            if threading.get_ident() == switching:
                sleeps.append(seconds)
            sleep(seconds)
        monkeypatch.setattr(time, "sleep", counted)
        assert link.check_certificate()
        monkeypatch.setattr(time, "sleep", sleep)
        assert sleeps == [], f"the switch slept {len(sleeps)} times waiting for the disconnect"
        link.wait_connected(15)
        assert link.generation > generation and link.certificate_switches == 1
    finally:
        link.stop()
