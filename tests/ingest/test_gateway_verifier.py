"""The gateway's verifier without the gateway: JWKS caching and rotation, role mapping, hostile headers."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from cryptography import x509
from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry

from devenv.oidc_issuer import OidcIssuer
from ems_contract.oidc import OidcSettings
from ingest.gateway_auth import AuthRequest, AuthSettings, JwksCache, Verifier

GROUPS = (("ems-viewers", "viewer"), ("ems-operators", "operator"), ("ems-admins", "admin"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def issuer() -> OidcIssuer:
    return OidcIssuer()      # keys and tokens only: the JWKS is handed to the cache directly, no server


def _verifier(issuer: OidcIssuer, clock: Clock | None = None, **oidc: object) -> tuple[Verifier, list[int]]:
    fetched: list[int] = []
    settings_ = OidcSettings(issuer=issuer.issuer, audience=issuer.audience, jwks_url="https://idp.test/jwks",
                             claim_roles=GROUPS, **oidc)  # type: ignore[arg-type]

    def fetch() -> bytes:
        fetched.append(1)
        return json.dumps(issuer.jwks()).encode()
    cache = JwksCache(settings_, fetch=fetch, clock=clock or Clock())
    return Verifier(AuthSettings(oidc=settings_), CollectorRegistry(), jwks=cache), fetched


def _ask(verifier: Verifier, token: str, role: str = "viewer"):
    return verifier.decide(AuthRequest(required_role=role, method="GET", uri="/v1/whoami", authorization=f"Bearer {token}"))


def test_keys_are_cached_then_refreshed_and_unknown_kids_refetch_at_most_once_per_interval() -> None:
    issuer, clock = OidcIssuer(), Clock()
    verifier, fetched = _verifier(issuer, clock, jwks_refresh_s=300.0, jwks_min_refetch_s=30.0)
    assert _ask(verifier, issuer.token()).status == 200 and len(fetched) == 1
    for _ in range(5):
        assert _ask(verifier, issuer.token(alg="ES256")).status == 200
    assert len(fetched) == 1                                     # cached
    issuer.rotate()                                              # the IdP publishes new keys
    forged = [_ask(verifier, issuer.token()) for _ in range(20)]     # new kid, but within 30 s of the last fetch
    assert {d.reason for d in forged} == {"unknown_key"} and len(fetched) == 1
    clock.now += 31
    assert _ask(verifier, issuer.token()).status == 200 and len(fetched) == 2    # one refetch finds the new key
    clock.now += 300
    assert _ask(verifier, issuer.token()).status == 200 and len(fetched) == 3    # periodic refresh


def test_an_unreachable_jwks_keeps_the_cached_keys() -> None:
    issuer, clock = OidcIssuer(), Clock()
    verifier, _ = _verifier(issuer, clock)
    assert _ask(verifier, issuer.token()).status == 200

    def down() -> bytes:
        raise OSError("connection refused")
    verifier.jwks._fetch = down                                  # type: ignore[union-attr]
    clock.now += 1000
    assert _ask(verifier, issuer.token()).status == 200


def test_highest_mapped_group_wins_and_username_claim_is_used(issuer: OidcIssuer) -> None:
    verifier, _ = _verifier(issuer, username_claim="email")
    decision = _ask(verifier, issuer.token(groups=("other", "ems-operators", "ems-viewers"), email="ops@utility.example"), "operator")
    assert (decision.status, decision.user, decision.role, decision.method) == (200, "ops@utility.example", "operator", "oidc")
    assert _ask(verifier, issuer.token(groups=("ems-operators",)), "admin").reason == "insufficient_role"
    assert _ask(verifier, issuer.token(groups="ems-admins"), "admin").status == 200      # a single string claim
    assert _ask(verifier, issuer.token(groups={"ems-admins": True}), "viewer").reason == "token_without_role"


def test_user_names_are_made_safe_for_headers_and_logs(issuer: OidcIssuer) -> None:
    verifier, _ = _verifier(issuer)
    decision = _ask(verifier, issuer.token(sub="eve\r\nX-Ems-Role: admin" + "x" * 300))
    assert decision.status == 200 and "\r" not in decision.user and "\n" not in decision.user and len(decision.user) <= 128


def test_certificates_map_by_cn_first_then_the_highest_ou(pki) -> None:
    verifier = Verifier(AuthSettings(cert_cn_roles=(("scada-main", "admin"),)), CollectorRegistry())

    def ask(name: str, ou: str | None, role: str = "viewer"):
        pem = pki.client(name, ou).cert.read_text()
        return verifier.decide(AuthRequest(required_role=role, cert_verify="SUCCESS", cert_pem=urllib.parse.quote(pem)))
    assert (ask("otto", "operator", "operator").status, ask("otto", "operator").role) == (200, "operator")
    assert ask("scada-main", "viewer", "admin").role == "admin"
    assert ask("nobody", None).reason == "certificate_without_role"
    assert verifier.decide(AuthRequest(required_role="viewer", cert_verify="SUCCESS", cert_pem="garbage")).reason == "bad_certificate"
    assert verifier.decide(AuthRequest(required_role="viewer", cert_verify="FAILED:certificate has expired")).status == 401
    assert verifier.decide(AuthRequest(required_role="root")).reason == "bad_request"


def test_each_distinct_certificate_is_parsed_once_and_checked_every_time(pki, monkeypatch) -> None:
    registry = CollectorRegistry()
    verifier = Verifier(AuthSettings(cert_cn_roles=(("scada-main", "admin"),)), registry)
    verifier.certificates.size = 2
    pems = {name: urllib.parse.quote(pki.client(name, ou).cert.read_text())
            for name, ou in (("otto", "operator"), ("vera", "viewer"), ("scada-main", "viewer"))}
    parses: list[bytes] = []
    parse = x509.load_pem_x509_certificate
    monkeypatch.setattr(x509, "load_pem_x509_certificate", lambda data, *a: parses.append(data) or parse(data, *a))

    def ask(name: str, role: str):
        return verifier.decide(AuthRequest(required_role=role, cert_verify="SUCCESS", cert_pem=pems[name]))
    for _ in range(50):
        assert (ask("otto", "operator").status, ask("vera", "viewer").status) == (200, 200)
        assert ask("vera", "operator").reason == "insufficient_role"          # the role is checked every time
    assert len(parses) == 2
    assert ask("scada-main", "admin").role == "admin"                           # a third: the least recent goes
    assert len(parses) == 3
    assert ask("vera", "viewer").status == 200 and len(parses) == 3
    assert ask("otto", "operator").status == 200 and len(parses) == 4
    for _ in range(3):                                                          # garbage is parsed (and refused) each time, never kept
        assert verifier.decide(AuthRequest(required_role="viewer", cert_verify="SUCCESS", cert_pem="garbage")).reason \
            == "bad_certificate"
    assert len(parses) == 7 and verifier.certificates.parses == 7
    assert registry.get_sample_value("ems_gateway_auth_denials_total", {"reason": "bad_certificate"}) == 3


def test_tokens_are_refused_when_no_issuer_is_configured(issuer: OidcIssuer) -> None:
    verifier = Verifier(AuthSettings(), CollectorRegistry())
    assert _ask(verifier, issuer.token()).reason == "tokens_not_accepted"


@settings(max_examples=300, deadline=None)
@given(authorization=st.text(max_size=400), verify=st.sampled_from(["NONE", "SUCCESS", "FAILED:x", ""]),
       cert=st.text(max_size=200), role=st.text(max_size=10))
def test_hostile_verifier_inputs_are_denied_never_raised(issuer: OidcIssuer, authorization: str, verify: str,
                                                         cert: str, role: str) -> None:
    verifier, _ = _verifier(issuer)
    decision = verifier.decide(AuthRequest(required_role=role, authorization=authorization, cert_verify=verify, cert_pem=cert))
    assert decision.status in (401, 403)


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5u"]),
                              st.one_of(st.text(max_size=20), st.integers(), st.none())),
       payload=st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=20), st.integers(), st.none()), max_size=6))
def test_unsigned_or_self_made_tokens_never_pass(issuer: OidcIssuer, header: dict, payload: dict) -> None:
    import base64

    def part(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    verifier, _ = _verifier(issuer)
    token = f"{part(header)}.{part({'iss': issuer.issuer, 'aud': issuer.audience, 'sub': 'x', 'exp': 2**31, **payload})}.AAAA"
    assert _ask(verifier, token).status == 401


@pytest.mark.parametrize("tables, message", [
    ('[twin_api.auth]\ncert_ou_roles = { ops = "root" }\n', "twin_api.auth.cert_ou_roles.ops: must be one of viewer, operator, admin (got 'root')"),
    ('[twin_api.auth]\ncert_cn_roles = ["scada"]\n', "twin_api.auth.cert_cn_roles: must be a table of at most 256 name = role entries (got ['scada'])"),
    ('[twin_api.auth.oidc]\nissuer = "i"\naudience = "a"\njwks_url = "ftp://x/jwks"\nclaim_roles = { g = "viewer" }\n',
     "twin_api.auth.oidc.jwks_url: must be an http:// or https:// URL with a host (got 'ftp://x/jwks')"),
    ('[twin_api.auth.oidc]\nissuer = "i"\naudience = "a"\njwks_url = "https://x/jwks"\n',
     "twin_api.auth.oidc.claim_roles: is required: which claim values grant which role (got None)"),
    ('[twin_api.auth.oidc]\nissuer = "i"\naudience = "a"\njwks_url = "https://x/jwks"\nclaim_roles = { g = "viewer" }\nalgorithms = ["HS256"]\n',
     "twin_api.auth.oidc.algorithms: must be a non-empty list of RS256, ES256 (got ['HS256'])"),
    ('[twin_api.auth]\nsecret = "x"\n', "twin_api.auth.secret: is not a known setting (got 'x')"),
])
def test_the_verifier_config_names_field_and_value(tables: str, message: str) -> None:
    import tomllib

    from components.twin_api import twin_api_toml
    from ingest.config import parse_config
    from ingest.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(twin_api_toml("broker", "http://tsdb:9090") + tables), check_files=False)
    assert str(info.value) == message
