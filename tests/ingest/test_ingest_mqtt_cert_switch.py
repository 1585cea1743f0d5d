"""The ingest's ``MqttLink`` certificate switch, against the real Mosquitto: it waits on paho's disconnect event,
not in 10 ms sleeps, and reconnects with the new certificate."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from devenv.pki import CertPair
from ingest.mqtt import MqttLink, TlsFiles

pytestmark = pytest.mark.integration


def test_the_switch_waits_for_the_disconnect_without_sleeping(broker, pki, tmp_path, monkeypatch):
    first, renewed = pki.client("switch-ok"), pki.client("switch-ok", "renewed")
    live = CertPair(tmp_path / "tls.crt", tmp_path / "tls.key")
    for source, target in ((first.cert, live.cert), (first.key, live.key)):
        shutil.copyfile(source, target)
    link = MqttLink("127.0.0.1", broker.tls_port, TlsFiles(pki.ca, live.cert, live.key), "switch-ok",
                    subscriptions=(), manual_ack=False, persistent=False, cert_check_s=0)
    link.start()
    try:
        link.wait_connected(15)
        generation = link.generation
        for source, target in ((renewed.key, live.key), (renewed.cert, live.cert)):
            staged = target.with_suffix(".next")
            shutil.copyfile(source, staged)
            os.replace(staged, target)
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
