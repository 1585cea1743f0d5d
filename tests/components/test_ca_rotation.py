"""Rotating the platform CA without downtime, with real certificates, the real Mosquitto and the real nginx.

Two CAs from the devenv PKI, OLD and NEW. Each phase runs what a ``pulumi up`` of that phase deploys:
the broker on the generated ``mosquitto.conf`` (``cafile`` = the Secret's ``ca.crt``), the gateway on the
generated ``nginx.conf`` (client check and upstream check on ``ca.crt``, its own client certificate to the
twin API) and the twin API (``client_ca`` = ``ca.crt``, only the gateway's CN). ``ca.crt`` is
:func:`components.pki.ca_bundle` of the signing CA and ``ems:additionalCaCertificates``, as every Secret
carries it. The phases are docs/deploy.md's: 1. trust both (leaves still OLD), 2. reissue the leaves from
NEW (OLD still trusted), 3. drop OLD. Clients of either CA are served in 1 and 2; in 3 OLD's are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from components.api_gateway import NginxPlan, Upstream, nginx_config
from components.gateway_settings import GatewayAuthSettings
from components.pki import ca_bundle
from components.twin_api import twin_api_toml
from devenv.mosquitto import free_port
from devenv.nginx import NginxGateway
from devenv.pki import CertPair, LocalPki, make_pki
from ingest.config import parse_config
from ingest.mqtt import MqttLink, TlsFiles
from ingest.twin_api import TWIN_SUBSCRIPTION, TwinApi
from test_broker_config import TWINS, Peer, _start_broker

pytestmark = pytest.mark.integration

GATEWAY_CN = "ems-api-gateway"
SITE_OLD, SITE_NEW = "sub-07", "sub-08"        # sites of the generated broker config, one per CA


def _trust(path: Path, signing: LocalPki, *additional: LocalPki) -> Path:
    path.write_text(ca_bundle(signing.ca.read_text(), [p.ca.read_text() for p in additional]))
    return path


def _viewer(pki: LocalPki) -> CertPair:
    return pki.client("ada", "viewer")


def _as_trusting(pki: LocalPki, trust: Path) -> LocalPki:
    """``pki``'s certificates (issued already) with ``trust`` as the CA file a client verifies servers with."""
    return LocalPki(pki.directory, trust, pki.ca_key, pki.server)


@contextlib.contextmanager
def _deployed(tmp: Path, trust: Path, leaves: LocalPki) -> Iterator[tuple[int, int]]:
    """Broker, twin API and gateway as one phase deploys them: everything trusts ``trust``; servers and the
    gateway's and twin API's client certificates are ``leaves``'. Yields (broker TLS port, gateway port)."""
    (tmp / "broker").mkdir(parents=True)
    broker = _start_broker(tmp / "broker", _as_trusting(leaves, trust))
    twin = gateway = None
    try:
        twin_pair = leaves.client(TWINS[0])
        auth = GatewayAuthSettings()
        verifier = parse_config(tomllib.loads(twin_api_toml("b", "http://t:9090", auth=auth)), check_files=False).twin_api
        link = MqttLink("127.0.0.1", broker.tls_port, TlsFiles(trust, twin_pair.cert, twin_pair.key), TWINS[0],
                        subscriptions=(TWIN_SUBSCRIPTION,), manual_ack=False, persistent=False)
        twin = TwinApi(link=link, query_url="http://127.0.0.1:9", host="127.0.0.1", port=free_port(),
                       cert=leaves.server.cert, key=leaves.server.key, auth=verifier.auth, client_ca=trust,
                       client_cns=(GATEWAY_CN,))
        twin.start()
        link.wait_connected(15)      # the ingest's MQTT client verifies the broker's certificate with the same ca.crt
        tls_dir, upstream_dir = tmp / "gateway" / "tls", tmp / "gateway" / "upstream-tls"
        tls_dir.mkdir(parents=True)
        upstream_dir.mkdir()
        gateway_client = leaves.client(GATEWAY_CN)
        for source, target in ((leaves.server.cert, tls_dir / "tls.crt"), (leaves.server.key, tls_dir / "tls.key"),
                               (trust, tls_dir / "ca.crt"), (gateway_client.cert, upstream_dir / "tls.crt"),
                               (gateway_client.key, upstream_dir / "tls.key")):
            shutil.copy(source, target)
        port = free_port()
        plan = NginxPlan(auth=auth, tsdb=Upstream("127.0.0.1", 9), twin_api=Upstream("127.0.0.1", twin.port, "localhost"),
                         listen=f"127.0.0.1:{port}", tls_dir=str(tls_dir), tmp_dir=str(tmp / "gateway"),
                         upstream_client_dir=str(upstream_dir), worker_processes="1",
                         user="root" if os.geteuid() == 0 else None)
        gateway = NginxGateway(tmp / "gateway", nginx_config(plan), port).start()
        yield broker.tls_port, port
    finally:
        if gateway is not None:
            gateway.stop()
        if twin is not None:
            twin.stop()
        broker.proc.kill()
        broker.proc.wait(10)


def _mqtt_accepts(pki: LocalPki, port: int, site: str) -> bool:
    """Whether the broker takes ``site``'s certificate from ``pki`` (and its publish to its own subtree)."""
    try:
        peer = Peer(pki, port, site, f"{site}-rotation")
    except (AssertionError, OSError):
        return False
    try:
        return peer.publish(f"ems/v1/{site}/telemetry") in (0, 16)        # success / success without subscribers
    finally:
        peer.close()


def _whoami(port: int, trust: Path, client: CertPair) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=str(trust))
    context.load_cert_chain(str(client.cert), str(client.key))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/whoami", context=context, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_ca_rotation_trust_both_reissue_then_drop_the_old(tmp_path):
    old, new = make_pki(tmp_path / "old", "ems-old-ca"), make_pki(tmp_path / "new", "ems-new-ca")
    for pki, site in ((old, SITE_OLD), (new, SITE_NEW)):       # issued before the clients' trust files are swapped
        pki.client(site)
        _viewer(pki)
    both = _trust(tmp_path / "old+new.crt", old, new)
    assert both.read_text().count("BEGIN CERTIFICATE") == 2

    # Phase 0, before the rotation: a NEW client is refused by both (it is what phase 3 does to OLD's).
    only_old = _trust(tmp_path / "old.crt", old)
    with _deployed(tmp_path / "phase0", only_old, old) as (mqtt_port, https_port):
        assert _mqtt_accepts(_as_trusting(old, only_old), mqtt_port, SITE_OLD)
        assert not _mqtt_accepts(_as_trusting(new, only_old), mqtt_port, SITE_NEW)
        assert _whoami(https_port, only_old, _viewer(old))[0] == 200
        assert _whoami(https_port, only_old, _viewer(new))[0] == 401

    # Phases 1 (leaves from OLD) and 2 (leaves from NEW), both trusting old+new: either CA's clients are served.
    for phase, leaves in ((1, old), (2, new)):
        with _deployed(tmp_path / f"phase{phase}", both, leaves) as (mqtt_port, https_port):
            for pki, site in ((old, SITE_OLD), (new, SITE_NEW)):
                assert _mqtt_accepts(_as_trusting(pki, both), mqtt_port, site), (phase, site)
                assert _whoami(https_port, both, _viewer(pki)) == \
                    (200, {"user": "cert:ada", "role": "viewer", "auth": "mtls"}), (phase, pki.ca)

    # Phase 3: OLD dropped. NEW's clients are served; OLD's are refused by the broker and by the gateway.
    only_new = _trust(tmp_path / "new.crt", new)
    with _deployed(tmp_path / "phase3", only_new, new) as (mqtt_port, https_port):
        assert _mqtt_accepts(_as_trusting(new, only_new), mqtt_port, SITE_NEW)
        assert not _mqtt_accepts(_as_trusting(old, only_new), mqtt_port, SITE_OLD)
        assert _whoami(https_port, only_new, _viewer(new))[0] == 200
        assert _whoami(https_port, only_new, _viewer(old))[0] == 401
