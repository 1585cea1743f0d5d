"""The gateway presents its own client certificate to the twin API, and the twin API serves no one else.

Real nginx on the generated config (``upstream_client_dir`` set, as the pod mounts ``api-gateway-client-tls``) in
front of the real twin API with ``client_ca`` and ``client_cns = ["ems-api-gateway"]`` (what ``components/twin_api.py``
renders). Through the gateway every route works; straight to the twin API, a caller without the gateway's
certificate is refused whatever identity headers it forges, and the kubelet's certificate-less probe still gets
``/healthz``.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from components.api_gateway import NginxPlan, Upstream, nginx_config
from devenv.mosquitto import free_port
from devenv.nginx import NginxGateway
from devenv.pki import CertPair
from gateway.conftest import gateway_settings, verifier_settings
from ingest.mqtt import MqttLink, TlsFiles
from ingest.twin_api import TWIN_SUBSCRIPTION, TwinApi

pytestmark = pytest.mark.integration

GATEWAY_CN = "ems-api-gateway"
FORGED = {"X-Ems-User": "cert:mallory", "X-Ems-Role": "admin", "X-Ems-Auth": "mtls"}


def _get(url: str, ca: Path, cert: CertPair | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), context=context, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body.startswith(b"{") else {}


def _nginx(workdir: Path, pki, plan_kwargs: dict, upstream_client: CertPair | None) -> NginxGateway:
    tls_dir = workdir / "tls"
    tls_dir.mkdir(parents=True)
    for source, target in ((pki.server.cert, "tls.crt"), (pki.server.key, "tls.key"), (pki.ca, "ca.crt")):
        shutil.copy(source, tls_dir / target)
    upstream_dir = None
    if upstream_client is not None:
        upstream_dir = workdir / "upstream-tls"
        upstream_dir.mkdir()
        shutil.copy(upstream_client.cert, upstream_dir / "tls.crt")
        shutil.copy(upstream_client.key, upstream_dir / "tls.key")
    port = free_port()
    plan = NginxPlan(**plan_kwargs, listen=f"127.0.0.1:{port}", tls_dir=str(tls_dir), tmp_dir=str(workdir),
                     worker_processes="1", user="root" if os.geteuid() == 0 else None,
                     upstream_client_dir=str(upstream_dir) if upstream_dir else None)
    return NginxGateway(workdir, nginx_config(plan), port).start()


def test_only_the_gateway_certificate_reaches_the_twin_api(tmp_path, pki, broker, issuer, limited_prometheus):
    auth = gateway_settings(issuer)
    pair = pki.client("twin-api-upstream-mtls")
    link = MqttLink("127.0.0.1", broker.tls_port, TlsFiles(pki.ca, pair.cert, pair.key), "twin-api-upstream-mtls",
                    subscriptions=(TWIN_SUBSCRIPTION,), manual_ack=False, persistent=False)
    twin = TwinApi(link=link, query_url=limited_prometheus.url, host="127.0.0.1", port=free_port(),
                   cert=pki.server.cert, key=pki.server.key, auth=verifier_settings(auth),
                   client_ca=pki.ca, client_cns=(GATEWAY_CN,))
    twin.start()
    gateways: list[NginxGateway] = []
    try:
        common = {"auth": auth, "tsdb": Upstream("127.0.0.1", limited_prometheus.port),
                  "twin_api": Upstream("127.0.0.1", twin.port, "localhost")}
        gateways.append(_nginx(tmp_path / "gw", pki, common, pki.client(GATEWAY_CN)))
        via = f"https://127.0.0.1:{gateways[0].port}"
        viewer = pki.client("ada", "viewer")

        # Through the gateway: the verifier (auth_request) and the routes both get the gateway's certificate.
        status, body = _get(f"{via}/v1/whoami", pki.ca, viewer, headers=FORGED)
        assert (status, body) == (200, {"user": "cert:ada", "role": "viewer", "auth": "mtls"})   # forged headers replaced
        assert _get(f"{via}/v1/sites", pki.ca, viewer)[0] == 200
        token = issuer.token(groups=("ems-operators",))
        assert _get(f"{via}/v1/whoami", pki.ca, headers={"Authorization": f"Bearer {token}"})[1]["role"] == "operator"
        assert _get(f"{via}/api/v1/query?query=up", pki.ca, viewer)[0] == 200

        # Around the gateway: no certificate, a viewer's, a site's or an admin's of the same CA: refused, forged or not.
        direct = f"https://127.0.0.1:{twin.port}"
        for who in (None, viewer, pki.client("site-1"), pki.client("root", "admin")):
            for path in ("/v1/whoami", "/v1/sites", "/v1/assets/site-1", "/v1/authz", "/"):
                status, body = _get(f"{direct}{path}", pki.ca, who, headers=FORGED)
                assert status == 403 and "user" not in body, (who, path, body)
        assert _get(f"{direct}/healthz", pki.ca)[0] in (200, 503)           # the probe is answered without a certificate
        assert _get(f"{direct}/v1/whoami", pki.ca, pki.client(GATEWAY_CN), headers=FORGED)[0] == 200   # only its key

        # A gateway that does not present the certificate gets nothing: the verifier itself is refused (auth_request
        # turns its 403 into the caller's), and so is every twin route.
        gateways.append(_nginx(tmp_path / "gw-without", pki, common, None))
        without = f"https://127.0.0.1:{gateways[1].port}"
        assert _get(f"{without}/v1/whoami", pki.ca, viewer)[0] == 403
        assert _get(f"{without}/v1/sites", pki.ca, viewer)[0] == 403
    finally:
        for nginx in gateways:
            nginx.stop()
        twin.stop()
