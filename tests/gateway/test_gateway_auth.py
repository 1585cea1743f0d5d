"""The generated nginx config executed by real nginx, with the real twin API (verifier) and Prometheus behind it."""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.parse

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devenv.pki import make_pki

pytestmark = pytest.mark.integration

VIEWER_ROUTES = ("/api/v1/query?query=up", "/api/v1/query_range?query=up&start=0&end=60&step=15", "/api/v1/series?match[]=up",
                 "/api/v1/labels", "/api/v1/label/__name__/values", "/api/v1/rules", "/api/v1/alerts",
                 "/v1/assets/site-1", "/v1/query?query=up", "/v1/whoami")
ADMIN_ROUTES = ("/api/v1/status/flags", "/api/v1/status/tsdb", "/api/v1/status/buildinfo", "/api/v1/targets")
NEVER_ROUTED = (("POST", "/api/v1/write"), ("POST", "/api/v1/admin/tsdb/delete_series?match[]=up"),
                ("POST", "/api/v1/admin/tsdb/snapshot"), ("POST", "/api/v1/admin/tsdb/clean_tombstones"),
                ("POST", "/-/reload"), ("POST", "/-/quit"), ("GET", "/metrics"), ("GET", "/federate?match[]=up"),
                ("POST", "/api/v1/otlp/v1/metrics"), ("GET", "/v1/authz"), ("GET", "/_ems_authz"),
                ("GET", "/api/v1/query/../admin/tsdb/snapshot"), ("GET", "/api/v1/%61dmin/tsdb/snapshot"),
                ("GET", "//api/v1/admin/tsdb/snapshot"), ("GET", "/api/v1/status/config/../../admin/tsdb"))


def _b64(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def test_healthz_needs_no_credentials_and_everything_else_does(gateway):
    assert gateway.get("/healthz")[0] == 200
    for path in (*VIEWER_ROUTES, *ADMIN_ROUTES, "/"):
        status, _, headers = gateway.get(path)
        assert status == 401, path
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), path
    assert gateway.denials("no_credentials") == len(VIEWER_ROUTES) + len(ADMIN_ROUTES) + 1


def test_every_role_reaches_its_routes_and_no_more(gateway):
    viewer, operator, admin = gateway.cert("ada", "viewer"), gateway.cert("otto", "operator"), gateway.cert("root", "admin")
    for who in (viewer, operator, admin, gateway.cert("scada-main"), gateway.issuer.token(groups=("ems-viewers",)),
                gateway.issuer.token(groups=("other", "ems-admins"), alg="ES256")):
        kwargs = {"token": who} if isinstance(who, str) else {"cert": who}
        for path in VIEWER_ROUTES:
            assert gateway.get(path, **kwargs)[0] == 200, (who, path)
    for path in ADMIN_ROUTES:
        assert gateway.get(path, cert=viewer)[0] == 403, path
        assert gateway.get(path, cert=operator)[0] == 403, path
        assert gateway.get(path, token=gateway.issuer.token(groups=("ems-operators",)))[0] == 403, path
        assert gateway.get(path, cert=admin)[0] == 200, path
        assert gateway.get(path, token=gateway.issuer.token(groups=("ems-admins",)))[0] == 200, path
    assert gateway.denials("insufficient_role") == 3 * len(ADMIN_ROUTES)
    # PromQL by POST (as Grafana sends it) is a read too; a method a route does not take is refused.
    status, body, _ = gateway.get("/api/v1/query", cert=viewer, method="POST", data=b"query=vector(1)",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and json.loads(body)["data"]["result"][0]["value"][1] == "1"
    assert gateway.get("/v1/whoami", cert=admin, method="DELETE")[0] == 405


def test_operators_silence_alerts_viewers_may_not(gateway):
    silence = json.dumps({"matchers": [{"name": "alertname", "value": "SiteSilent", "isRegex": False}],
                          "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2036-01-01T00:00:00Z",
                          "createdBy": "test", "comment": "maintenance"}).encode()
    post = {"method": "POST", "data": silence, "headers": {"Content-Type": "application/json"}}
    viewer = gateway.issuer.token(groups=("ems-viewers",))
    assert gateway.get("/api/v2/silences", token=viewer, **post)[0] == 403
    assert gateway.get("/api/v2/silences", cert=gateway.cert("ada", "viewer"))[0] == 403
    status, body, _ = gateway.get("/api/v2/silences", token=gateway.issuer.token(groups=("ems-operators",)), **post)
    assert status == 200 and json.loads(body)["silenceID"]
    for who in ({"cert": gateway.cert("otto", "operator")}, {"cert": gateway.cert("root", "admin")},
                {"token": gateway.issuer.token(groups=("ems-admins",))}):
        status, body, _ = gateway.get("/api/v2/silences", **who)
        assert status == 200 and [s["comment"] for s in json.loads(body)] == ["maintenance"], who
    assert gateway.get("/api/v2/status", cert=gateway.cert("root", "admin"))[0] == 404       # only silences are routed


def test_a_certificate_without_a_mapped_role_or_token_without_a_group_is_forbidden(gateway):
    assert gateway.get("/v1/whoami", cert=gateway.cert("stranger", "sales"))[0] == 403
    assert gateway.get("/v1/whoami", token=gateway.issuer.token(groups=("sales",)))[0] == 403
    assert gateway.denials("certificate_without_role") == 1 and gateway.denials("token_without_role") == 1


def test_identity_reaches_upstreams_only_from_the_gateway(gateway):
    spoof = {"X-Ems-User": "mallory", "X-Ems-Role": "admin", "X-Ems-Auth": "mtls", "X-Ems-Grafana-Role": "Admin",
             "X-Ems-Required-Role": "viewer", "X-Ems-Client-Verify": "SUCCESS"}
    _, body, _ = gateway.get("/v1/whoami", token=gateway.issuer.token(sub="bob", groups=("ems-viewers",)), headers=spoof)
    assert json.loads(body) == {"user": "bob", "role": "viewer", "auth": "oidc"}
    _, body, _ = gateway.get("/v1/whoami", cert=gateway.cert("otto", "operator"), headers=spoof)
    assert json.loads(body) == {"user": "cert:otto", "role": "operator", "auth": "mtls"}
    # Spoofed verifier inputs do not make an anonymous caller anyone.
    assert gateway.get("/v1/whoami", headers=spoof)[0] == 401


def test_certificates_from_another_ca_or_expired_are_refused(gateway, tmp_path):
    other = make_pki(tmp_path / "other-ca").client("ada", "viewer")
    assert gateway.get("/v1/whoami", cert=(other.cert, other.key))[0] == 401
    expired = gateway.pki.client("old", "viewer", valid_days=-1)
    assert gateway.get("/v1/whoami", cert=(expired.cert, expired.key))[0] == 401
    assert gateway.denials("bad_certificate") == 2


@pytest.mark.parametrize("reason, make", [
    ("expired", lambda i: i.token(iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
    ("not_yet_valid", lambda i: i.token(nbf=int(time.time()) + 3600, exp=int(time.time()) + 7200)),
    ("wrong_audience", lambda i: i.token(aud="another-app")),
    ("wrong_issuer", lambda i: i.token(iss="https://evil.example/realms/ems")),
    ("unknown_key", lambda i: i.token(headers={"kid": "nobody-published-this"},
                                      signing_key=rsa.generate_private_key(public_exponent=65537, key_size=2048))),
    ("bad_token", lambda i: i.token(signing_key=rsa.generate_private_key(public_exponent=65537, key_size=2048))),
    ("bad_token", lambda i: i.token(exp=None)),
    ("bad_algorithm", lambda i: f"{_b64({'alg': 'none', 'kid': i.kid(), 'typ': 'JWT'})}."
                                f"{_b64({'iss': i.issuer, 'aud': i.audience, 'sub': 'eve', 'groups': ['ems-admins'], 'exp': int(time.time()) + 600})}."),
    ("bad_algorithm", lambda i: jwt.encode({"iss": i.issuer, "aud": i.audience, "sub": "eve", "groups": ["ems-admins"],
                                            "exp": int(time.time()) + 600}, b"k" * 32, algorithm="HS256", headers={"kid": i.kid()})),
    ("bad_algorithm", lambda i: i.token(alg="ES256", headers={"kid": i.kid("RS256")})),
    ("bad_token", lambda i: "not.a.jwt"),
])
def test_bad_tokens_are_refused(gateway, reason, make, caplog):
    token = make(gateway.issuer)
    before = gateway.denials(reason)
    with caplog.at_level(logging.WARNING, logger="ingest.gateway_auth"):
        status, _, _ = gateway.get("/v1/whoami", token=token)
    assert status == 401
    assert gateway.denials(reason) == before + 1
    [line] = [r.getMessage() for r in caplog.records if "gateway denied" in r.getMessage()]
    assert "GET" in line and "/v1/whoami" in line and reason in line and token not in line


def test_a_bad_token_is_not_rescued_by_a_good_certificate(gateway):
    assert gateway.get("/v1/whoami", cert=gateway.cert("root", "admin"), token=gateway.issuer.token(aud="x"))[0] == 401


def test_required_client_certificates_refuse_tokens_alone(gateway_factory):
    gw = gateway_factory(client_certs="required")
    assert gw.get("/healthz")[0] == 200                    # the kubelet's probe carries no certificate
    assert gw.get("/v1/whoami", token=gw.issuer.token())[0] == 401
    assert gw.get("/v1/whoami")[0] == 401
    assert gw.denials("no_credentials") == 2
    assert gw.get("/v1/whoami", cert=gw.cert("ada", "viewer"))[0] == 200
    _, body, _ = gw.get("/v1/whoami", cert=gw.cert("ada", "viewer"), token=gw.issuer.token(groups=("ems-operators",)))
    assert json.loads(body)["role"] == "operator"


def test_per_client_rate_limit_answers_429_to_that_client_only(gateway_factory):
    gw = gateway_factory(rate_per_second=1, burst=3)
    greedy = gw.cert("greedy", "viewer")
    statuses = [gw.get("/v1/whoami", cert=greedy)[0] for _ in range(12)]
    assert statuses.count(429) >= 5 and statuses[:3] == [200, 200, 200], statuses
    assert gw.get("/v1/whoami", cert=gw.cert("patient", "viewer"))[0] == 200
    assert gw.get("/v1/whoami", token=gw.issuer.token())[0] == 200


def test_request_size_limits(gateway_factory):
    gw = gateway_factory(max_body_bytes=4096, max_header_bytes=2048)
    viewer = gw.cert("ada", "viewer")
    assert gw.get("/api/v1/query", cert=viewer, method="POST", data=b"query=" + b"1" * 8000,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 413
    assert gw.get("/v1/whoami", cert=viewer, headers={"X-Padding": "a" * 4000})[0] in (400, 431)
    assert gw.get("/v1/query?query=" + "1" * 4000, cert=viewer)[0] in (400, 414)
    assert gw.get("/v1/whoami", cert=viewer, headers={"X-Padding": "a" * 1000})[0] == 200


def test_expensive_query_is_refused_and_the_tsdb_keeps_serving(gateway):
    viewer = gateway.cert("ada", "viewer")
    steps = gateway.query_max_samples * 2
    status, body, _ = gateway.get(f"/api/v1/query_range?query=vector(1)&start=0&end={steps}&step=1", cert=viewer)
    assert status == 400 and b"exceeded maximum resolution" in body      # Prometheus' 11,000 points per series
    status, body, _ = gateway.get("/api/v1/query?query=count(count_over_time(vector(1)[%ds:1s]))" % steps, cert=viewer)
    assert status == 422 and b"too many samples" in body, body
    assert gateway.get("/api/v1/query?query=vector(2)", cert=viewer)[0] == 200
    assert gateway.prometheus.client().query("vector(3)")[0]["value"][1] == "3"


@pytest.mark.parametrize("method, path", NEVER_ROUTED)
def test_remote_write_admin_and_internal_paths_are_never_routed(gateway, method, path):
    admin = gateway.cert("root", "admin")
    assert gateway.get(path, cert=admin, method=method, data=b"" if method == "POST" else None)[0] == 404, path
    assert gateway.get(path, token=gateway.issuer.token(groups=("ems-admins",)), method=method,
                       data=b"" if method == "POST" else None)[0] == 404, path


def test_the_token_rate_limit_is_per_token(gateway_factory):
    gw = gateway_factory(rate_per_second=1, burst=2)
    greedy = gw.issuer.token(sub="greedy")
    statuses = [gw.get("/v1/whoami", token=greedy)[0] for _ in range(10)]
    assert statuses[:2] == [200, 200] and statuses.count(429) >= 5, statuses
    assert gw.get("/v1/whoami", token=gw.issuer.token(sub="patient"))[0] == 200


def _slow_query(doublings: int, steps: int) -> str:
    """A query that stays far below the sample limit but takes long: ``steps`` subquery steps, each rebuilding a label
    of 2**(doublings + 1) characters with ``doublings`` regex replacements (``time()`` keeps every step its own work;
    a constant expression would be computed once). Unlimited, 21 doublings over 8,000 steps took 14 s here."""
    expr = 'label_replace(vector(time()), "x", "ab", "", "")'
    for _ in range(doublings):
        expr = f'label_replace({expr}, "x", "$1$1", "x", "(.*)")'
    return f"count_over_time({expr}[{steps}ms:1ms])"


def test_an_expensive_query_is_cut_off_by_the_query_timeout_and_the_tsdb_keeps_serving(gateway):
    viewer = gateway.cert("ada", "viewer")
    pid = gateway.prometheus.proc.pid
    started = time.monotonic()
    status, body, _ = gateway.get("/api/v1/query", cert=viewer, method="POST",
                                  data=urllib.parse.urlencode({"query": _slow_query(22, 8000)}).encode(),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    took = time.monotonic() - started
    assert status == 503 and json.loads(body)["errorType"] == "timeout", body        # the TSDB's --query.timeout (5 s)
    assert took < 20, took
    started = time.monotonic()
    assert gateway.get("/api/v1/query?query=vector(2)", cert=viewer)[0] == 200
    assert time.monotonic() - started < 5
    assert gateway.prometheus.proc.pid == pid and gateway.prometheus.proc.poll() is None
