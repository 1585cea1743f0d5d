"""The API gateway's authentication and limits: ``ems:apiAuth``, parsed into :class:`GatewayAuthSettings`.

Pure (no Pulumi runtime); ``components/settings.py`` calls :func:`parse_gateway_auth` and turns a
:class:`GatewayAuthError` into its ``SettingsError`` (``ems:apiAuth.<field>: <value> <reason>``).
Roles are ``ems_contract.roles``'s; ``oidc`` becomes an ``ems_contract.oidc.OidcSettings``, the shape the
gateway's verifier reads back from the twin API's config.
Example (every key optional; ``docs/gateway-auth.md`` explains each)::

    ems:apiAuth:
      clientCerts: optional          # required | optional | off
      certOuRoles: {viewer: viewer, operator: operator, admin: admin}
      certCnRoles: {scada-main: operator}
      oidc:
        issuer: https://login.utility.example/realms/ems
        audience: ems-gateway
        jwksUrl: https://login.utility.example/realms/ems/protocol/openid-connect/certs
        roleClaim: groups
        claimRoles: {ems-viewers: viewer, ems-operators: operator, ems-admins: admin}
      ratePerSecond: 20              # per client (certificate or token); burst: 40
      maxBodyBytes: 1048576
      maxHeaderBytes: 8192
      promqlTimeoutSeconds: 30
      promqlMaxSamples: 5000000
      commandRatePerMinute: 30       # manual commands (POST/GET /v1/commands) per client; burst 5
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ems_contract.config_file import url_problem
from ems_contract.oidc import ALGORITHMS, OidcSettings, algorithms_problem
from ems_contract.roles import DEFAULT_CERT_OU_ROLES, role_problem

__all__ = ["CLIENT_CERT_MODES", "MISSING", "GatewayAuthError", "GatewayAuthSettings", "parse_gateway_auth"]

CLIENT_CERT_MODES = ("required", "optional", "off")
_CLAIM = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_NAME = re.compile(r"^[A-Za-z0-9 _.@:/+=-]{1,128}$")   # an OU, CN or group: no quotes, braces or control characters
_KEYS = {"clientCerts", "certOuRoles", "certCnRoles", "oidc", "ratePerSecond", "burst", "perAddressRatePerSecond",
         "maxBodyBytes", "maxHeaderBytes", "promqlTimeoutSeconds", "promqlMaxSamples", "commandRatePerMinute"}
_OIDC_KEYS = {"issuer", "audience", "jwksUrl", "roleClaim", "usernameClaim", "claimRoles", "algorithms"}


MISSING = object()
"""The ``value`` of a GatewayAuthError for a required key that is absent."""


class GatewayAuthError(ValueError):
    """``field`` (relative to ``ems:apiAuth``), the bad ``value`` and what is allowed."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}: {value!r} {reason}")
        self.field, self.value, self.reason = field, value, reason


@dataclass(frozen=True)
class GatewayAuthSettings:
    """Who may call the gateway on 443 and how much (defaults: client certificates optional, no OIDC)."""

    client_certs: str = "optional"
    """``required``: no request without a platform certificate; ``optional``: a certificate or a token; ``off``: tokens only."""
    cert_ou_roles: tuple[tuple[str, str], ...] = DEFAULT_CERT_OU_ROLES
    """(subject OU, role). Defaults to OU viewer/operator/admin as that role."""
    cert_cn_roles: tuple[tuple[str, str], ...] = ()
    """(subject CN, role), before the OU. Defaults to none."""
    oidc: OidcSettings | None = None
    """Bearer tokens from this issuer. Defaults to none (certificates only)."""
    rate_per_second: int = 20
    """Requests per second per client (certificate or token); excess → 429. Defaults to 20."""
    burst: int = 40
    """Requests above the rate a client may send at once. Defaults to 40."""
    per_address_rate_per_second: int = 100
    """Requests per second per source address whatever the credentials (unauthenticated floods). Defaults to 100."""
    max_body_bytes: int = 1024 * 1024
    """Largest request body; larger → 413. Defaults to 1 MiB."""
    max_header_bytes: int = 8192
    """Largest request line or header line; larger → 400/414. Defaults to 8 KiB."""
    promql_timeout_seconds: int = 30
    """PromQL evaluation timeout (the TSDB's ``--query.timeout``). Defaults to 30 s."""
    promql_max_samples: int = 5_000_000
    """Samples one query may load (the TSDB's ``--query.max-samples``); beyond → 422. Defaults to 5,000,000."""
    command_rate_per_minute: int = 30
    """Requests per minute per client on the manual-command route (``/v1/commands``), burst 5; excess → 429.
    Defaults to 30."""


def _mapping(field: str, value: Any, key_rule: re.Pattern[str], what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or len(value) > 256:
        raise GatewayAuthError(field, value, f"must be a map of at most 256 {what} → role entries")
    for name, role in value.items():
        if not isinstance(name, str) or not key_rule.fullmatch(name):
            raise GatewayAuthError(f"{field}.{name}", name, f"is not a valid {what} (1..128 of A-Z a-z 0-9 space _ . @ : / + = -)")
        if (problem := role_problem(role)) is not None:
            raise GatewayAuthError(f"{field}.{name}", role, problem)
    return tuple(value.items())


def _integer(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():      # Pulumi config values arrive as text
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise GatewayAuthError(field, value, f"must be an integer {lo}..{hi}")
    return value


def _https_url(field: str, value: Any) -> str:
    problem = url_problem(value, ("https",))
    if problem is not None:
        raise GatewayAuthError(field, value, f"must be an https:// URL with a host{problem}")
    return value


def _oidc(value: Any) -> OidcSettings:
    if not isinstance(value, dict):
        raise GatewayAuthError("oidc", value, "must be a map with issuer, audience, jwksUrl and claimRoles")
    for key in value:
        if key not in _OIDC_KEYS:
            raise GatewayAuthError(f"oidc.{key}", value[key], f"is not a known key; known: {', '.join(sorted(_OIDC_KEYS))}")
    for key in ("issuer", "audience", "jwksUrl", "claimRoles"):
        if key not in value:
            raise GatewayAuthError(f"oidc.{key}", MISSING, "is required")
    audience = value["audience"]
    if not isinstance(audience, str) or not _NAME.fullmatch(audience):
        raise GatewayAuthError("oidc.audience", audience, "must be 1..128 of A-Z a-z 0-9 space _ . @ : / + = -")
    claims = {}
    for key, default in (("roleClaim", "groups"), ("usernameClaim", "sub")):
        claims[key] = value.get(key, default)
        if not isinstance(claims[key], str) or not _CLAIM.fullmatch(claims[key]):
            raise GatewayAuthError(f"oidc.{key}", claims[key], "must be a claim name (1..128 of A-Z a-z 0-9 _ . : / -)")
    algorithms = value.get("algorithms", list(ALGORITHMS))
    if (problem := algorithms_problem(algorithms)) is not None:
        raise GatewayAuthError("oidc.algorithms", algorithms, problem)
    claim_roles = _mapping("oidc.claimRoles", value["claimRoles"], _NAME, "claim value")
    if not claim_roles:
        raise GatewayAuthError("oidc.claimRoles", value["claimRoles"], "must map at least one claim value to a role")
    return OidcSettings(issuer=_https_url("oidc.issuer", value["issuer"]), audience=audience,
                        jwks_url=_https_url("oidc.jwksUrl", value["jwksUrl"]), claim_roles=claim_roles,
                        role_claim=claims["roleClaim"], username_claim=claims["usernameClaim"], algorithms=tuple(algorithms))


def parse_gateway_auth(value: Any) -> GatewayAuthSettings:
    """``ems:apiAuth`` (a map, or None for the defaults) → settings; raises GatewayAuthError naming the field."""
    if value is None:
        return GatewayAuthSettings()
    if not isinstance(value, dict):
        raise GatewayAuthError("", value, "must be a map")
    for key in value:
        if key not in _KEYS:
            raise GatewayAuthError(key, value[key], f"is not a known key; known: {', '.join(sorted(_KEYS))}")
    d = GatewayAuthSettings()
    mode = value.get("clientCerts", d.client_certs)
    if mode not in CLIENT_CERT_MODES:
        raise GatewayAuthError("clientCerts", mode, f"must be one of {', '.join(CLIENT_CERT_MODES)}")
    oidc = _oidc(value["oidc"]) if "oidc" in value else None
    if mode == "off" and oidc is None:
        raise GatewayAuthError("clientCerts", mode, "leaves no way to authenticate: configure oidc or allow client certificates")
    return GatewayAuthSettings(
        client_certs=mode,
        cert_ou_roles=_mapping("certOuRoles", value["certOuRoles"], _NAME, "OU") if "certOuRoles" in value else d.cert_ou_roles,
        cert_cn_roles=_mapping("certCnRoles", value["certCnRoles"], _NAME, "CN") if "certCnRoles" in value else (),
        oidc=oidc,
        rate_per_second=_integer("ratePerSecond", value.get("ratePerSecond", d.rate_per_second), 1, 10_000),
        burst=_integer("burst", value.get("burst", d.burst), 0, 100_000),
        per_address_rate_per_second=_integer("perAddressRatePerSecond",
                                             value.get("perAddressRatePerSecond", d.per_address_rate_per_second), 1, 100_000),
        max_body_bytes=_integer("maxBodyBytes", value.get("maxBodyBytes", d.max_body_bytes), 1024, 64 * 1024 * 1024),
        max_header_bytes=_integer("maxHeaderBytes", value.get("maxHeaderBytes", d.max_header_bytes), 1024, 65536),
        promql_timeout_seconds=_integer("promqlTimeoutSeconds", value.get("promqlTimeoutSeconds", d.promql_timeout_seconds), 1, 600),
        promql_max_samples=_integer("promqlMaxSamples", value.get("promqlMaxSamples", d.promql_max_samples), 1000, 500_000_000),
        command_rate_per_minute=_integer("commandRatePerMinute",
                                         value.get("commandRatePerMinute", d.command_rate_per_minute), 1, 600),
    )
