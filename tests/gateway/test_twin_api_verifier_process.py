"""`ems-ingest twin-api` as the pods run it: the verifier from [twin_api.auth], its counters on the metrics port."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.parse
import urllib.request

import pytest

from devenv.demo_pipeline import IngestProcess
from devenv.mosquitto import free_port

pytestmark = pytest.mark.integration


def test_the_twin_api_command_serves_the_verifier_and_counts_denials(tmp_path, broker, pki, limited_prometheus):
    twin_port = free_port()
    proc = IngestProcess(tmp_path / "twin", broker=broker, pki=pki, prometheus=limited_prometheus, client_id="twin-0",
                         twin_api_port=twin_port)
    with open(proc.config_path, "a") as fh:
        fh.write('\n[twin_api.auth]\ncert_cn_roles = { "scada-main" = "admin" }\n')
    proc.start("twin-api")
    try:
        proc.wait_metric('ems_gateway_auth_denials_total{reason="no_credentials"}', lambda v: v == 0)
        context = ssl.create_default_context(cafile=str(pki.ca))

        def authz(headers: dict[str, str]) -> tuple[int, dict[str, str]]:
            request = urllib.request.Request(f"https://127.0.0.1:{twin_port}/v1/authz", headers=headers)
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as resp:
                    return resp.status, dict(resp.headers)
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers)

        assert authz({"X-Ems-Required-Role": "viewer"})[0] == 401
        pem = urllib.parse.quote(pki.client("scada-main").cert.read_text())
        status, headers = authz({"X-Ems-Required-Role": "admin", "X-Ems-Client-Verify": "SUCCESS", "X-Ems-Client-Cert": pem})
        assert status == 200 and (headers["X-Ems-User"], headers["X-Ems-Role"], headers["X-Ems-Auth"]) == \
            ("cert:scada-main", "admin", "mtls")
        assert proc.metric('ems_gateway_auth_denials_total{reason="no_credentials"}') == 1
        assert proc.metric('ems_gateway_auth_allowed_total{method="other",role="admin"}') == 1
    finally:
        proc.stop()
