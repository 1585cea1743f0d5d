"""The gateway as deployed, on 127.0.0.1: nginx on the generated config, the real twin API (verifier included),
a real Prometheus with the PromQL limits, a real Alertmanager (the operators' silences), a real Mosquitto for the
twin API, and a test OIDC issuer."""

from __future__ import annotations

import os
import shutil
import tomllib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from components.api_gateway import NginxPlan, Upstream, nginx_config
from components.gateway_settings import GatewayAuthSettings
from devenv.alertmanager import AlertmanagerServer
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.nginx import NginxGateway
from devenv.oidc_issuer import OidcIssuer
from ems_contract.oidc import OidcSettings
from devenv.pki import LocalPki
from devenv.prometheus import PrometheusServer
from components.twin_api import twin_api_toml
from ingest.config import parse_config
from ingest.gateway_auth import AuthSettings
from ingest.mqtt import MqttLink, TlsFiles
from ingest.twin_api import TWIN_SUBSCRIPTION, TwinApi

GROUPS = {"ems-viewers": "viewer", "ems-operators": "operator", "ems-admins": "admin"}
QUERY_MAX_SAMPLES = 20_000


@dataclass
class Gateway:
    """A running gateway and what stands behind it."""

    port: int
    pki: LocalPki
    issuer: OidcIssuer
    twin: TwinApi
    prometheus: PrometheusServer
    nginx: NginxGateway
    query_max_samples: int = QUERY_MAX_SAMPLES

    def get(self, path: str, *, cert: tuple[Path, Path] | None = None, token: str | None = None,
            method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None,
            ca: Path | None = None) -> tuple[int, bytes, dict[str, str]]:
        """One HTTPS request through the gateway: (status, body, response headers)."""
        context = ssl.create_default_context(cafile=str(ca or self.pki.ca))
        if cert:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", method=method, data=data,
                                         headers={**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})})
        try:
            with urllib.request.urlopen(request, context=context, timeout=20) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def cert(self, name: str, ou: str | None = None) -> tuple[Path, Path]:
        pair = self.pki.client(name, ou)
        return pair.cert, pair.key

    def denials(self, reason: str) -> float:
        return self.twin.registry.get_sample_value("ems_gateway_auth_denials_total", {"reason": reason}) or 0.0


def gateway_settings(issuer: OidcIssuer, **overrides: object) -> GatewayAuthSettings:
    """The stack settings a test gateway runs with (the OIDC block as a stack would give it)."""
    oidc = OidcSettings(issuer=issuer.issuer, audience=issuer.audience, jwks_url=issuer.jwks_url,
                       claim_roles=tuple(GROUPS.items()))
    return replace(GatewayAuthSettings(oidc=oidc, cert_cn_roles=(("scada-main", "operator"),)), **overrides)  # type: ignore[arg-type]


def verifier_settings(auth: GatewayAuthSettings) -> AuthSettings:
    """The verifier's settings as the pods get them: components/twin_api.py's ingest.toml, read by the ingest's parser."""
    text = twin_api_toml("broker.ems.svc.cluster.local", "http://tsdb.ems.svc.cluster.local:9090", auth=auth)
    twin = parse_config(tomllib.loads(text), check_files=False).twin_api
    assert twin is not None and twin.auth is not None
    return twin.auth


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer() as running:
        yield running


@pytest.fixture
def limited_prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    """Prometheus with the gateway's PromQL limits (components/tsdb.py passes the same flags)."""
    server = PrometheusServer(tmp_path / "prometheus", query_timeout="5s", query_max_samples=QUERY_MAX_SAMPLES)
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[AlertmanagerServer]:
    """Debian's prometheus-alertmanager on 127.0.0.1 (no cluster), an empty route: the operators' silences API."""
    server = AlertmanagerServer(tmp_path / "alertmanager", "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n")
    server.start()
    yield server
    server.terminate(kill=True)


@pytest.fixture
def gateway_factory(tmp_path: Path, pki: LocalPki, broker: MosquittoBroker, issuer: OidcIssuer,
                    limited_prometheus: PrometheusServer, alertmanager: AlertmanagerServer) -> Iterator[Callable[..., Gateway]]:
    """``gateway_factory(northbound=None, upstream_client=None, **settings)`` → a started gateway whose
    ``GatewayAuthSettings`` are overridden by ``settings``; ``northbound`` is the upstream of the manual-command route
    (none: the route is 404); ``upstream_client`` the CN of the client certificate nginx presents to HTTPS upstreams
    (none: no certificate)."""
    running: list[tuple[TwinApi, NginxGateway]] = []

    def start(*, northbound: Upstream | None = None, upstream_client: str | None = None, **overrides: object) -> Gateway:
        auth = gateway_settings(issuer, **overrides)
        n = len(running)
        pair = pki.client(f"twin-api-{n}")
        link = MqttLink("127.0.0.1", broker.tls_port, TlsFiles(pki.ca, pair.cert, pair.key), f"twin-api-{n}",
                        subscriptions=(TWIN_SUBSCRIPTION,), manual_ack=False, persistent=False)
        twin = TwinApi(link=link, query_url=limited_prometheus.url, host="127.0.0.1", port=free_port(),
                       cert=pki.server.cert, key=pki.server.key, auth=verifier_settings(auth))
        twin.start()
        tls_dir = tmp_path / f"gateway{n}" / "tls"
        tls_dir.mkdir(parents=True)
        for source, target in ((pki.server.cert, "tls.crt"), (pki.server.key, "tls.key"), (pki.ca, "ca.crt")):
            shutil.copy(source, tls_dir / target)
        upstream_dir = None
        if upstream_client is not None:       # laid out as the pod mounts api-gateway-client-tls
            upstream_dir = tmp_path / f"gateway{n}" / "upstream-tls"
            upstream_dir.mkdir()
            client = pki.client(upstream_client)
            shutil.copy(client.cert, upstream_dir / "tls.crt")
            shutil.copy(client.key, upstream_dir / "tls.key")
        port = free_port()
        plan = NginxPlan(auth=auth, tsdb=Upstream("127.0.0.1", limited_prometheus.port),
                         twin_api=Upstream("127.0.0.1", twin.port, "localhost"),
                         alertmanager=Upstream("127.0.0.1", alertmanager.port), northbound=northbound,
                         listen=f"127.0.0.1:{port}",
                         tls_dir=str(tls_dir), tmp_dir=str(tmp_path / f"gateway{n}"), worker_processes="1",
                         user="root" if os.geteuid() == 0 else None,
                         upstream_client_dir=str(upstream_dir) if upstream_dir else None)
        nginx = NginxGateway(tmp_path / f"gateway{n}", nginx_config(plan), port)
        try:
            nginx.start()
        except BaseException:
            twin.stop()
            raise
        running.append((twin, nginx))
        return Gateway(port, pki, issuer, twin, limited_prometheus, nginx)

    yield start
    for twin, nginx in running:
        nginx.stop()
        twin.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    """A gateway with client certificates optional, OIDC on, 20 requests/s per client (burst 40)."""
    return gateway_factory()
