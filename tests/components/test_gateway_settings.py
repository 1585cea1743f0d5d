"""ems:apiAuth: the gateway's authentication and limits, validated with messages naming field and value."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from components.gateway_settings import GatewayAuthError, GatewayAuthSettings, parse_gateway_auth
from ems_contract.oidc import OidcSettings
from components.settings import SettingsError, parse_settings

AWS = {"ems:cloud": "aws", "ems:region": "eu-west-1"}
OIDC = {"issuer": "https://idp.example/r", "audience": "ems", "jwksUrl": "https://idp.example/jwks", "claimRoles": {"g": "viewer"}}


def test_defaults_are_optional_certificates_without_oidc() -> None:
    assert parse_settings(AWS, "s").platform.api_auth == GatewayAuthSettings()
    assert GatewayAuthSettings().client_certs == "optional" and GatewayAuthSettings().oidc is None


def test_json_text_as_the_pulumi_runtime_sends_it() -> None:
    auth = parse_settings({**AWS, "ems:apiAuth": json.dumps({"oidc": OIDC, "ratePerSecond": "7",
                                                              "certCnRoles": {"scada-main": "operator"}})}, "s").platform.api_auth
    assert auth.oidc == OidcSettings("https://idp.example/r", "ems", "https://idp.example/jwks", (("g", "viewer"),))
    assert auth.rate_per_second == 7 and auth.cert_cn_roles == (("scada-main", "operator"),)


@pytest.mark.parametrize("value, message", [
    ({"clientCerts": "maybe"}, "ems:apiAuth.clientCerts: maybe must be one of required, optional, off"),
    ({"clientCerts": "off"}, "ems:apiAuth.clientCerts: off leaves no way to authenticate: configure oidc or allow client certificates"),
    ({"oidc": {**OIDC, "jwksUrl": "http://idp.example/jwks"}}, "ems:apiAuth.oidc.jwksUrl: http://idp.example/jwks must be an https:// URL with a host"),
    ({"oidc": {**OIDC, "issuer": "https://[::1"}}, "ems:apiAuth.oidc.issuer: https://[::1 must be an https:// URL with a host"),
    ({"oidc": {**OIDC, "claimRoles": {"g": "superuser"}}}, "ems:apiAuth.oidc.claimRoles.g: superuser must be one of viewer, operator, admin"),
    ({"oidc": {**OIDC, "claimRoles": {}}}, "ems:apiAuth.oidc.claimRoles: {} must map at least one claim value to a role"),
    ({"oidc": {**OIDC, "algorithms": ["HS256"]}}, 'ems:apiAuth.oidc.algorithms: ["HS256"] must be a non-empty list of RS256, ES256'),
    ({"oidc": {**OIDC, "algorithms": ["none"]}}, 'ems:apiAuth.oidc.algorithms: ["none"] must be a non-empty list of RS256, ES256'),
    ({"oidc": {k: v for k, v in OIDC.items() if k != "audience"}}, "ems:apiAuth.oidc.audience: is required"),
    ({"oidc": {**OIDC, "secret": "x"}}, "ems:apiAuth.oidc.secret: x is not a known key; known: algorithms, audience, claimRoles, issuer, jwksUrl, roleClaim, usernameClaim"),
    ({"oidc": {**OIDC, "roleClaim": "a b"}}, 'ems:apiAuth.oidc.roleClaim: "a b" must be a claim name (1..128 of A-Z a-z 0-9 _ . : / -)'),
    ({"ratePerSecond": 0}, "ems:apiAuth.ratePerSecond: 0 must be an integer 1..10000"),
    ({"burst": True}, "ems:apiAuth.burst: true must be an integer 0..100000"),
    ({"maxHeaderBytes": 100}, "ems:apiAuth.maxHeaderBytes: 100 must be an integer 1024..65536"),
    ({"promqlTimeoutSeconds": 3600}, "ems:apiAuth.promqlTimeoutSeconds: 3600 must be an integer 1..600"),
    ({"promqlMaxSamples": 10}, "ems:apiAuth.promqlMaxSamples: 10 must be an integer 1000..500000000"),
    ({"commandRatePerMinute": 0}, "ems:apiAuth.commandRatePerMinute: 0 must be an integer 1..600"),
    ({"certOuRoles": {"ops{": "admin"}}, "ems:apiAuth.certOuRoles.ops{: ops{ is not a valid OU (1..128 of A-Z a-z 0-9 space _ . @ : / + = -)"),
    ({"certCnRoles": ["scada"]}, 'ems:apiAuth.certCnRoles: ["scada"] must be a map of at most 256 CN → role entries'),
    ({"rateLimit": 5}, "ems:apiAuth.rateLimit: 5 is not a known key; known: burst, certCnRoles, certOuRoles, clientCerts, "
                       "commandRatePerMinute, maxBodyBytes, maxHeaderBytes, oidc, perAddressRatePerSecond, promqlMaxSamples, promqlTimeoutSeconds, ratePerSecond"),
    ("notjson", "ems:apiAuth: notjson must be a map (clientCerts, oidc, ratePerSecond, …) (JSON/YAML dict)"),
])
def test_bad_values_name_field_and_value(value: object, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings({**AWS, "ems:apiAuth": value}, "s")
    assert str(info.value) == message


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                     max_leaves=20)
_keys = st.sampled_from(["clientCerts", "certOuRoles", "certCnRoles", "oidc", "ratePerSecond", "burst", "maxBodyBytes",
                         "maxHeaderBytes", "promqlTimeoutSeconds", "promqlMaxSamples", "perAddressRatePerSecond",
                         "commandRatePerMinute"])


@settings(max_examples=400, deadline=None)
@given(value=st.one_of(_json, st.dictionaries(_keys, _json, max_size=5),
                       st.fixed_dictionaries({"oidc": st.dictionaries(st.sampled_from(
                           ["issuer", "audience", "jwksUrl", "claimRoles", "roleClaim", "usernameClaim", "algorithms"]),
                           _json, max_size=7)})))
def test_any_value_parses_or_fails_naming_the_field(value: object) -> None:
    try:
        auth = parse_gateway_auth(value)
    except GatewayAuthError as exc:
        assert exc.reason and isinstance(exc.field, str)
        return
    assert auth.client_certs in ("required", "optional", "off") and 1 <= auth.rate_per_second <= 10_000
