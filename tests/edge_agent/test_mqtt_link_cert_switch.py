"""EdgeMqttLink's certificate switch against a real Mosquitto behind a slow link: it waits for the PUBACKs in
flight without polling, then reconnects with the new certificate; nothing is lost or sent twice."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import pytest

from devenv.lossy_proxy import LossyProxy, ProxyThread
from devenv.mosquitto import MosquittoBroker
from devenv.pki import LocalPki
from edge_agent.mqtt_link import EdgeMqttLink, TlsFiles
from tests.edge_agent.delivery_helpers import Subscriber

pytestmark = pytest.mark.integration

TOPIC = "ems/v1/site1/switch"


def _install(cert: Path, key: Path, live: TlsFiles) -> None:
    """Replace the live pair as a Secret update does: each file renamed into place."""
    for source, target in ((key, live.key), (cert, live.cert)):
        staged = target.with_suffix(".next")
        shutil.copyfile(source, staged)
        os.replace(staged, target)


def test_the_switch_awaits_the_pubacks_in_flight_without_polling(broker: MosquittoBroker, pki: LocalPki,
                                                                 tmp_path: Path, monkeypatch) -> None:
    first, renewed = pki.client("edge-site1"), pki.client("edge-site1", "renewed")
    live = TlsFiles(pki.ca, tmp_path / "tls.crt", tmp_path / "tls.key")
    _install(first.cert, first.key, live)
    short_sleeps: list[float] = []            # sleeps under 0.1 s on the link's loop: a poll
    sleep = asyncio.sleep

    def counted(delay: float, *args):
        if delay < 0.1 and threading.get_ident() == link_thread:
            short_sleeps.append(delay)
        return sleep(delay, *args)
    sub = Subscriber(broker.plain_port, topic=TOPIC, client_id="switch-observer").start()
    proxy = LossyProxy("127.0.0.1", broker.tls_port, latency_s=0.3)   # a PUBACK comes 0.6 s after its PUBLISH
    link_thread = threading.get_ident()

    async def go() -> tuple[int, int]:
        link = EdgeMqttLink(host="127.0.0.1", port=proxy.port, client_id="edge-site1", site="site1", tls=live,
                            keepalive_s=5, connect_timeout_s=10, cert_check_s=0, switch_drain_s=10)
        async with link:
            link.start()
            await link.wait_connected(20)
            in_flight = [link.start_publish(TOPIC, f"m{i}".encode()) for i in range(20)]
            _install(renewed.cert, renewed.key, live)
            monkeypatch.setattr(asyncio, "sleep", counted)
            assert await asyncio.wait_for(link.check_certificate(), 20)
            monkeypatch.setattr(asyncio, "sleep", sleep)
            acked = sum(f.done() and f.exception() is None for f in in_flight)
            held = link.start_publish(TOPIC, b"after")     # the supervisor reconnects with the new certificate
            await asyncio.wait_for(held, 20)
            return acked, link.certificate_switches

    try:
        with ProxyThread(proxy):
            acked, switches = asyncio.run(go())
        assert sub.wait_for(lambda r: len(r.on_topic(TOPIC)) >= 21, timeout=10)
        payloads = [p for p, _ in sub.received.on_topic(TOPIC)]
    finally:
        sub.stop()
    assert (acked, switches) == (20, 1)
    assert short_sleeps == [], f"{len(short_sleeps)} short sleeps while the switch waited for PUBACKs"
    assert payloads == [f"m{i}".encode() for i in range(20)] + [b"after"]      # none lost, none twice
