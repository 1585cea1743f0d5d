"""The API gateway's cost: PromQL through nginx + the token verifier versus straight to Prometheus.

Method: real Mosquitto, Prometheus, twin API (verifier) and nginx on 127.0.0.1, the config
``components/api_gateway.py`` renders. One keep-alive HTTPS connection per client thread sends
``GET /api/v1/query?query=vector(1)`` with a bearer token (RS256) or a client certificate; the
baseline sends the same query over plain HTTP to Prometheus. Figures: requests per second and
the median and 99th-percentile latency. Rate limits are raised out of the way. Everything
shares this machine's cores, so the figures are indicative.
"""

from __future__ import annotations

import http.client
import os
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

from components.api_gateway import NginxPlan, Upstream, nginx_config
from components.gateway_settings import GatewayAuthSettings
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.nginx import NginxGateway
from devenv.oidc_issuer import OidcIssuer
from devenv.pki import make_pki
from devenv.prometheus import PrometheusServer
from ems_contract.oidc import OidcSettings
from ingest.gateway_auth import AuthSettings
from ingest.mqtt import MqttLink, TlsFiles
from ingest.twin_api import TWIN_SUBSCRIPTION, TwinApi

PATH = "/api/v1/query?query=vector(1)"


def _run(connect, headers: dict[str, str], threads: int, per_thread: int) -> tuple[float, float, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        conn = connect()
        mine = []
        for _ in range(per_thread):
            start = time.perf_counter()
            conn.request("GET", PATH, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            mine.append(time.perf_counter() - start)
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99) - 1] * 1000


def main(requests: int = 2000) -> None:
    with tempfile.TemporaryDirectory(prefix="ems-bench-gw-") as tmp, OidcIssuer() as issuer:
        root = Path(tmp)
        pki = make_pki(root / "pki")
        broker = MosquittoBroker(root / "broker", pki)
        broker.start()
        prometheus = PrometheusServer(root / "prometheus")
        prometheus.start()
        oidc = OidcSettings(issuer.issuer, issuer.audience, issuer.jwks_url, (("ems-viewers", "viewer"),))
        auth = GatewayAuthSettings(oidc=oidc, rate_per_second=100_000, burst=100_000, per_address_rate_per_second=100_000)
        pair = pki.client("twin-bench")
        twin = TwinApi(link=MqttLink("127.0.0.1", broker.tls_port, TlsFiles(pki.ca, pair.cert, pair.key), "twin-bench",
                                     subscriptions=(TWIN_SUBSCRIPTION,), manual_ack=False, persistent=False),
                       query_url=prometheus.url, host="127.0.0.1", port=free_port(), cert=pki.server.cert, key=pki.server.key,
                       auth=AuthSettings(oidc=OidcSettings(issuer.issuer, issuer.audience, issuer.jwks_url, oidc.claim_roles)))
        twin.start()
        tls = root / "tls"
        tls.mkdir()
        for source, name in ((pki.server.cert, "tls.crt"), (pki.server.key, "tls.key"), (pki.ca, "ca.crt")):
            (tls / name).write_bytes(source.read_bytes())
        port = free_port()
        plan = NginxPlan(auth=auth, tsdb=Upstream("127.0.0.1", prometheus.port), twin_api=Upstream("127.0.0.1", twin.port, "localhost"),
                         listen=f"127.0.0.1:{port}", tls_dir=str(tls), tmp_dir=str(root / "nginx"),
                         user="root" if os.geteuid() == 0 else None)
        nginx = NginxGateway(root / "nginx", nginx_config(plan), port).start()
        try:
            context = ssl.create_default_context(cafile=str(pki.ca))
            cert_context = ssl.create_default_context(cafile=str(pki.ca))
            viewer = pki.client("bench-viewer", "viewer")
            cert_context.load_cert_chain(str(viewer.cert), str(viewer.key))
            token = {"Authorization": f"Bearer {issuer.token(lifetime_s=3600)}"}
            cases = [
                ("prometheus direct (http)", lambda: http.client.HTTPConnection("127.0.0.1", prometheus.port, timeout=30), {}),
                ("gateway, bearer token", lambda: http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30), token),
                ("gateway, client certificate", lambda: http.client.HTTPSConnection("127.0.0.1", port, context=cert_context, timeout=30), {}),
            ]
            print(f"{'path':32} {'threads':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            for label, connect, headers in cases:
                for threads in (1, 8):
                    rate, p50, p99 = _run(connect, headers, threads, requests // threads)
                    print(f"{label:32} {threads:>7} {rate:>8.0f} {p50:>8.2f} {p99:>8.2f}", flush=True)
        finally:
            nginx.stop()
            twin.stop()
            prometheus.stop(kill=True)
            broker.stop(kill=True)


if __name__ == "__main__":
    main()
