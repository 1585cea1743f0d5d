"""Who may call the API gateway, and as what: the verifier behind nginx's ``auth_request``.

The gateway (``components/api_gateway.py``) asks this verifier about every request except
``/healthz`` before routing it: ``GET /v1/authz`` on the twin API with the headers below, set by
nginx itself (client-supplied copies never reach us: the auth location passes no client header).

=========================  ===============================================================
``X-Ems-Required-Role``    the role the matched gateway route needs (viewer|operator|admin)
``X-Ems-Original-Method``  the client's method; ``X-Ems-Original-Uri``: its request URI
``X-Ems-Client-Verify``    nginx's ``$ssl_client_verify``: SUCCESS, NONE or FAILED:<reason>
``X-Ems-Client-Cert``      the verified client certificate, PEM, URL-escaped
``Authorization``          the client's ``Bearer <JWT>``, if any
=========================  ===============================================================

Answer: 200 with ``X-Ems-User``, ``X-Ems-Role`` and ``X-Ems-Auth`` (mtls|oidc), which the
gateway forwards upstream as trusted headers; 401 (no or bad credentials) or 403 (a role below
the route's). A bearer token, when present, decides alone (a bad token with a good certificate
is a 401); otherwise the certificate does. Roles (``ems_contract.roles``): viewer < operator < admin.

Tokens: a JWT signed RS256 or ES256 (configurable subset) by a key of the issuer's JWKS, whose
``kid`` names it and whose ``alg`` matches the key; ``iss``, ``aud``, ``exp`` and ``sub`` are
required, ``exp``/``nbf`` enforced with a small leeway; ``alg: none``, HMAC and unknown keys are
refused. The JWKS is fetched (bounded size and time) and cached for ``jwks_refresh_s``; an
unknown ``kid`` refetches it at most once per ``jwks_min_refetch_s``, so forged tokens cannot
turn the verifier into a flood against the identity provider.

A client certificate is parsed once: its subject's CNs and OUs are kept by the SHA-256 of the PEM
text nginx sent (at most ``CERT_CACHE_SIZE`` certificates, least recently used forgotten first);
the role is looked up per request as before.

Every denial is logged (who, method, URI, needed role, reason; never the token) and counted in
``ems_gateway_auth_denials_total{reason=…}``; allowed requests in
``ems_gateway_auth_allowed_total{role=…,method=…}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jwt
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter

from ems_contract.oidc import OidcSettings
from ems_contract.roles import DEFAULT_CERT_OU_ROLES, clean_user, highest_role, role_at_least, role_problem
from ems_contract.telemetry import shown

__all__ = ["AuthRequest", "AuthSettings", "Decision", "JwksCache", "Verifier"]

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 8192
MAX_CERT_CHARS = 16384
CERT_CACHE_SIZE = 256
MAX_JWKS_BYTES = 256 * 1024
DENIAL_REASONS = ("no_credentials", "bad_certificate", "certificate_without_role", "bad_token", "unknown_key",
                  "bad_algorithm", "expired", "not_yet_valid", "wrong_audience", "wrong_issuer", "token_without_role",
                  "tokens_not_accepted", "insufficient_role", "bad_request")


@dataclass(frozen=True)
class AuthSettings:
    """The verifier's config: certificate role mappings and the optional OIDC issuer."""

    oidc: OidcSettings | None = None
    """Accept bearer tokens from this issuer. Defaults to none: certificates only."""
    cert_ou_roles: tuple[tuple[str, str], ...] = DEFAULT_CERT_OU_ROLES
    """(subject OU, role) for client certificates. Defaults to OU ``viewer``/``operator``/``admin`` as that role."""
    cert_cn_roles: tuple[tuple[str, str], ...] = ()
    """(subject CN, role): takes precedence over the OU. Defaults to none."""


@dataclass(frozen=True)
class AuthRequest:
    """What nginx tells us about one client request (module docstring)."""

    required_role: str
    method: str = ""
    uri: str = ""
    cert_verify: str = "NONE"
    cert_pem: str = ""
    authorization: str = ""

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "AuthRequest":
        return cls(required_role=headers.get("X-Ems-Required-Role", ""), method=headers.get("X-Ems-Original-Method", ""),
                   uri=headers.get("X-Ems-Original-Uri", ""), cert_verify=headers.get("X-Ems-Client-Verify", "NONE"),
                   cert_pem=headers.get("X-Ems-Client-Cert", ""), authorization=headers.get("Authorization", ""))


@dataclass(frozen=True)
class Decision:
    """200 with ``user``/``role``/``method``; or 401/403 with a bounded ``reason`` (one of DENIAL_REASONS)."""

    status: int
    user: str = ""
    role: str = ""
    method: str = ""
    reason: str = ""


class _Denied(Exception):
    def __init__(self, status: int, reason: str, who: str, detail: str = "") -> None:
        super().__init__(reason)
        self.status, self.reason, self.who, self.detail = status, reason, who, detail


class JwksCache:
    """The issuer's signing keys by ``kid``, fetched with ``fetch`` and kept per :class:`OidcSettings` timings."""

    def __init__(self, settings: OidcSettings, fetch: Callable[[], bytes] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._fetch = fetch or self._http_fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self.fetches = 0

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The key ``kid``; refetches when the keys are stale, or unknown ``kid`` and the last fetch is old enough."""
        with self._lock:
            now = self._clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            stale = age is None or age >= self.settings.jwks_refresh_s
            if stale or (kid not in self._keys and age >= self.settings.jwks_min_refetch_s):
                self._refresh(now)
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        self._fetched_at = now          # also on failure: an unreachable IdP is retried per min_refetch, not per request
        self.fetches += 1
        try:
            doc = json.loads(self._fetch())
            entries = doc["keys"]
            if not isinstance(entries, list):
                raise TypeError("keys is not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("JWKS %s could not be fetched or read (%s); keeping %d cached keys",
                        shown(self.settings.jwks_url), shown(str(exc)), len(self._keys))
            return
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries[:64]:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:           # an unsupported or malformed key: skipped, not fatal
                log.warning("JWKS key %s skipped: %s", shown(entry["kid"]), exc)
                continue
            if key.algorithm_name in self.settings.algorithms:
                keys[entry["kid"]] = key
        self._keys = keys
        log.info("JWKS %s: %d signing keys", shown(self.settings.jwks_url), len(keys))

    def _http_fetch(self) -> bytes:
        context = ssl.create_default_context(cafile=str(self.settings.jwks_ca) if self.settings.jwks_ca else None)
        request = urllib.request.Request(self.settings.jwks_url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=self.settings.jwks_timeout_s,  # nosec B310 # http(s) URL checked by the config parser
                                    context=context if self.settings.jwks_url.startswith("https:") else None) as resp:
            body = resp.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return body


@dataclass(frozen=True, slots=True)
class _Subject:
    """What the verifier reads from a client certificate: its subject's CNs and OUs, and the whole subject."""

    cns: tuple[str, ...]
    ous: tuple[str, ...]
    text: str


class SubjectCache:
    """Client certificates' subjects by the SHA-256 of their PEM text; at most ``size``, least recently used out first.

    ``subject(escaped_pem)`` parses a certificate not seen (or forgotten) and raises ``ValueError`` when it
    does not parse (nothing is kept then). ``parses`` counts the parses. Thread-safe.
    """

    def __init__(self, size: int = CERT_CACHE_SIZE) -> None:
        self.size = size
        self.parses = 0
        self._lock = threading.Lock()
        self._subjects: OrderedDict[bytes, _Subject] = OrderedDict()

    def subject(self, escaped_pem: str) -> _Subject:
        key = hashlib.sha256(escaped_pem.encode()).digest()
        with self._lock:
            known = self._subjects.get(key)
            if known is not None:
                self._subjects.move_to_end(key)
                return known
            self.parses += 1
        cert = x509.load_pem_x509_certificate(urllib.parse.unquote(escaped_pem).encode())
        subject = _Subject(tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)),
                           tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)),
                           cert.subject.rfc4514_string())
        with self._lock:
            self._subjects[key] = subject
            while len(self._subjects) > self.size:
                self._subjects.popitem(last=False)
        return subject


class Verifier:
    """Decides one :class:`AuthRequest`; logs and counts every denial. Thread-safe."""

    def __init__(self, settings: AuthSettings, registry: CollectorRegistry | None = None,
                 jwks: JwksCache | None = None) -> None:
        self.settings = settings
        self._cn_roles = dict(settings.cert_cn_roles)
        self._ou_roles = dict(settings.cert_ou_roles)
        self._claim_roles = dict(settings.oidc.claim_roles) if settings.oidc else {}
        self.jwks = jwks or (JwksCache(settings.oidc) if settings.oidc else None)
        self.certificates = SubjectCache()
        common: dict[str, Any] = {"namespace": "ems", "subsystem": "gateway_auth", "registry": registry}
        self.denials = Counter("denials", "Gateway requests refused by the verifier, by reason.", ["reason"], **common)
        self.allowed = Counter("allowed", "Gateway requests allowed, by role and method.", ["role", "method"], **common)
        for reason in DENIAL_REASONS:
            self.denials.labels(reason)

    def decide(self, req: AuthRequest) -> Decision:
        who = "anonymous"
        try:
            if role_problem(req.required_role) is not None:
                raise _Denied(403, "bad_request", who, f"route role {shown(req.required_role)}")
            if req.authorization:
                user, role, method = self._from_token(req.authorization)
            elif req.cert_verify == "SUCCESS":
                user, role, method = self._from_certificate(req.cert_pem)
            elif req.cert_verify.startswith("FAILED"):
                raise _Denied(401, "bad_certificate", who, req.cert_verify[:200])
            else:
                raise _Denied(401, "no_credentials", who)
            if not role_at_least(role, req.required_role):
                raise _Denied(403, "insufficient_role", f"{user} ({role})")
        except _Denied as denied:
            self.denials.labels(denied.reason).inc()
            log.warning("gateway denied %s %s to %s: %s, needs %s%s", shown(req.method), shown(req.uri), shown(denied.who),
                        denied.reason, shown(req.required_role), f" ({shown(denied.detail)})" if denied.detail else "")
            return Decision(denied.status, reason=denied.reason)
        self.allowed.labels(role, req.method if req.method in ("GET", "POST", "HEAD", "PUT", "DELETE") else "other").inc()
        return Decision(200, user=user, role=role, method=method)

    def _from_certificate(self, escaped_pem: str) -> tuple[str, str, str]:
        if not escaped_pem or len(escaped_pem) > MAX_CERT_CHARS:
            raise _Denied(401, "bad_certificate", "anonymous", "no certificate text from the gateway")
        try:
            subject = self.certificates.subject(escaped_pem)
        except ValueError as exc:
            raise _Denied(401, "bad_certificate", "anonymous", str(exc)) from exc
        cn = subject.cns[0] if subject.cns else subject.text
        user = clean_user(f"cert:{cn}")
        ous = list(subject.ous)
        role = self._cn_roles.get(cn) or highest_role([self._ou_roles[ou] for ou in ous if ou in self._ou_roles])
        if role is None:
            raise _Denied(403, "certificate_without_role", user, f"OU {ous}")
        return user, role, "mtls"

    def _from_token(self, authorization: str) -> tuple[str, str, str]:
        oidc = self.settings.oidc
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise _Denied(401, "bad_token", "anonymous", "Authorization is not 'Bearer <JWT>' of a bounded size")
        if oidc is None or self.jwks is None:
            raise _Denied(401, "tokens_not_accepted", "anonymous", "no OIDC issuer configured")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _Denied(401, "bad_token", "anonymous", str(exc)) from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in oidc.algorithms:
            raise _Denied(401, "bad_algorithm", "anonymous", f"alg {alg!r}")
        key = self.jwks.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise _Denied(401, "unknown_key", "anonymous", f"kid {kid!r}")
        if key.algorithm_name != alg:               # an RSA key never verifies an ES256 token, nor the reverse
            raise _Denied(401, "bad_algorithm", "anonymous", f"alg {alg!r} with a {key.algorithm_name} key")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=oidc.audience, issuer=oidc.issuer,
                                leeway=oidc.leeway_s, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise _Denied(401, "expired", _unverified_sub(token), str(exc)) from exc
        except jwt.ImmatureSignatureError as exc:
            raise _Denied(401, "not_yet_valid", _unverified_sub(token), str(exc)) from exc
        except jwt.InvalidAudienceError as exc:
            raise _Denied(401, "wrong_audience", _unverified_sub(token), str(exc)) from exc
        except jwt.InvalidIssuerError as exc:
            raise _Denied(401, "wrong_issuer", _unverified_sub(token), str(exc)) from exc
        except jwt.PyJWTError as exc:               # bad signature, missing claim, malformed
            raise _Denied(401, "bad_token", _unverified_sub(token), str(exc)) from exc
        user = clean_user(str(claims.get(oidc.username_claim) or claims["sub"]))
        granted = claims.get(oidc.role_claim, [])
        values = [granted] if isinstance(granted, str) else [v for v in granted if isinstance(v, str)] \
            if isinstance(granted, list) else []
        role = highest_role([self._claim_roles[v] for v in values if v in self._claim_roles])
        if role is None:
            raise _Denied(403, "token_without_role", user, f"{oidc.role_claim} {shown(values)}")
        return user, role, "oidc"


def _unverified_sub(token: str) -> str:
    """The ``sub`` a refused token claims, for the log only (marked as unverified)."""
    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return "anonymous"
    return f"unverified:{clean_user(str(sub))}" if sub else "anonymous"

