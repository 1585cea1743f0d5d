"""mTLS PKI rules on pulumi-tls resources: key strength, certificate lifetime, CA usage, key usage.

pulumi-tls defaults are the trap: ``ecdsaCurve`` defaults to P224 and ``rsaBits`` to 2048, so an
unset field is a weak key and is reported as such.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Optional

from pulumi_policy import PolicyResource

from .props import (
    UNKNOWN, Resource, as_bool, as_int, dig, get, of_types, resource_policy, stack_policy, strings,
    unknown_message,
)

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
LOCALLY_SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
CERTS = (SELF_SIGNED, LOCALLY_SIGNED)


def _subject(resource_type: str, name: str) -> str:
    return f"{resource_type.rsplit(':', 1)[-1]} '{name}'"


CERT_MANAGER = "kubernetes:cert-manager.io/v1:Certificate"
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)")
_UNIT_HOURS = {"h": 1.0, "m": 1 / 60, "s": 1 / 3600, "ms": 1 / 3.6e6, "us": 1 / 3.6e9, "µs": 1 / 3.6e9, "ns": 1 / 3.6e12}


def go_duration_hours(text: str) -> Optional[float]:
    """"2160h", "8760h0m0s" → hours; None when it is not a Go duration (cert-manager's format)."""
    text = text.strip()
    if not text or _GO_DURATION.sub("", text) != "":
        return None
    return sum(float(n) * _UNIT_HOURS[u] for n, u in _GO_DURATION.findall(text))


def _cert_manager_key(res: Resource, cfg: dict) -> Iterator[str]:
    """cert-manager defaults: RSA 2048 when privateKey is unset, ECDSA 256."""
    key = dig(res.props, "spec", "privateKey")
    algorithm = get(key, "algorithm", "RSA")
    size = as_int(get(key, "size"))
    curves = {"P256": 256, "P384": 384, "P521": 521}
    allowed_sizes = [curves[c] for c in (str(c) for c in cfg.get("allowedEcdsaCurves") or []) if c in curves]
    min_bits = as_int(cfg.get("minRsaBits"))
    if UNKNOWN in (algorithm, size):
        yield unknown_message(res.subject, "spec.privateKey")
    elif algorithm == "RSA" and (size or 2048) < min_bits:
        shown = "unset (cert-manager defaults to 2048)" if size is None else str(size)
        yield (f"{res.subject}: spec.privateKey is RSA with size {shown}; RSA keys need at least {min_bits} bits "
               "(or use algorithm: ECDSA, size: 256).")
    elif algorithm == "ECDSA" and (size or 256) not in allowed_sizes:
        yield f"{res.subject}: spec.privateKey is ECDSA size {size}; use one of {allowed_sizes}."
    elif algorithm not in ("RSA", "ECDSA") and not (algorithm == "Ed25519" and cfg.get("allowEd25519")):
        yield f"{res.subject}: spec.privateKey.algorithm is {algorithm!r}; use ECDSA (256+) or RSA ({min_bits}+)."


def _key_strength(res: Resource, cfg: dict) -> Iterator[str]:
    if res.resource_type == CERT_MANAGER:
        yield from _cert_manager_key(res, cfg)
        return
    algorithm = get(res.props, "algorithm")
    curves = [str(c) for c in cfg.get("allowedEcdsaCurves") or []]
    min_bits = as_int(cfg.get("minRsaBits"))
    if algorithm is UNKNOWN:
        yield unknown_message(res.subject, "algorithm")
    elif algorithm == "ECDSA":
        curve = get(res.props, "ecdsaCurve")
        if curve is UNKNOWN:
            yield unknown_message(res.subject, "ecdsaCurve")
        elif curve not in curves:
            shown = "unset (pulumi-tls defaults to P224)" if curve is None else repr(curve)
            yield f"{res.subject}: ecdsaCurve is {shown}; use one of {curves}."
    elif algorithm == "RSA":
        bits = as_int(get(res.props, "rsaBits"))
        if bits is UNKNOWN:
            yield unknown_message(res.subject, "rsaBits")
        elif bits is None or bits < min_bits:
            shown = "unset (pulumi-tls defaults to 2048)" if bits is None else str(bits)
            yield f"{res.subject}: rsaBits is {shown}; RSA keys need at least {min_bits} bits (or use ECDSA P256+)."
    elif algorithm == "ED25519" and cfg.get("allowEd25519"):
        return
    else:
        yield (f"{res.subject}: algorithm is {algorithm!r}; use ECDSA with {curves} or RSA with at least "
               f"{min_bits} bits.")


def _lifetime(res: Resource, cfg: dict) -> Iterator[str]:
    if res.resource_type == CERT_MANAGER:
        field = "spec.duration"
        is_ca = as_bool(dig(res.props, "spec", "isCA"))
        duration = dig(res.props, "spec", "duration", default="2160h")  # cert-manager's default: 90 days
        parsed = go_duration_hours(duration) if isinstance(duration, str) else None
        hours = UNKNOWN if duration is UNKNOWN else (round(parsed) if parsed is not None else None)
        shown = repr(duration)
    else:
        field = "validityPeriodHours"
        is_ca = as_bool(get(res.props, "isCaCertificate"))
        hours = as_int(get(res.props, "validityPeriodHours"))
        shown = str(hours)
    if is_ca is UNKNOWN:
        yield unknown_message(res.subject, "isCaCertificate" if field == "validityPeriodHours" else "spec.isCA")
        return
    limit_key = "maxCaValidityHours" if is_ca else "maxLeafValidityHours"
    limit = as_int(cfg.get(limit_key))
    if hours is UNKNOWN:
        yield unknown_message(res.subject, field)
    elif hours is None or hours <= 0 or hours > limit:
        role = "CA" if is_ca else "leaf"
        yield (f"{res.subject}: {field} is {shown} ({(hours or 0) / 24:.0f} days) for a {role} certificate; "
               f"the maximum is {limit} hours ({limit / 24:.0f} days, policy config {limit_key}). "
               "Shorten it and renew before expiry instead.")


def _ca_usage(res: Resource, cfg: dict) -> Iterator[str]:
    is_ca = as_bool(get(res.props, "isCaCertificate"))
    uses = strings(get(res.props, "allowedUses"))
    if is_ca is UNKNOWN:
        yield unknown_message(res.subject, "isCaCertificate")
        return
    if uses is UNKNOWN:
        yield unknown_message(res.subject, "allowedUses")
        return
    self_signed = res.resource_type == SELF_SIGNED
    if is_ca and not self_signed and not cfg.get("allowIntermediateCas"):
        yield (f"{res.subject}: isCaCertificate is true on a LocallySignedCert (an intermediate CA); only the "
               "root CA (SelfSignedCert) may be a CA. Set isCaCertificate to false.")
    if is_ca and "cert_signing" not in uses:
        yield f"{res.subject}: the CA certificate's allowedUses {uses} lack cert_signing; add it."
    if not is_ca and self_signed:
        yield (f"{res.subject}: a self-signed non-CA certificate bypasses the EMS CA; issue it from the CA with "
               "tls.LocallySignedCert instead.")
    if not is_ca:
        signing = sorted(set(uses) & {"cert_signing", "crl_signing", "any_extended"})
        if signing:
            yield (f"{res.subject}: a leaf certificate's allowedUses include {signing}; remove them "
                   "(only the CA signs certificates).")


# --------------------------------------------------------------------------- purpose (stack)

def _cert_request_of(cert: PolicyResource) -> Optional[PolicyResource]:
    candidates = list(cert.property_dependencies.get("certRequestPem", [])) + list(cert.dependencies)
    for dep in candidates:
        if dep.resource_type == CERT_REQUEST:
            return dep
    return None


def _sans(props: Any) -> Any:
    found = []
    for key in ("dnsNames", "ipAddresses", "uris"):
        values = strings(get(props, key))
        if values is UNKNOWN:
            return UNKNOWN
        found += values
    return found


def _purpose(resources: list[PolicyResource], _cfg: dict) -> Iterator[tuple[str, Optional[str]]]:
    for cert in resources:
        if cert.resource_type not in CERTS:
            continue
        subject = _subject(cert.resource_type, cert.name)
        is_ca = as_bool(get(cert.props, "isCaCertificate"))
        uses = strings(get(cert.props, "allowedUses"))
        if is_ca is True:
            continue
        if UNKNOWN in (is_ca, uses):
            yield unknown_message(subject, "isCaCertificate/allowedUses"), cert.urn
            continue
        request = _cert_request_of(cert) if cert.resource_type == LOCALLY_SIGNED else cert
        sans = _sans(request.props) if request is not None else None
        lowered = cert.name.lower()
        wants = set()
        if sans is UNKNOWN:
            yield unknown_message(subject, "the certificate request's dnsNames/ipAddresses/uris"), cert.urn
            continue
        if sans or "server" in lowered:
            wants.add("server_auth")
        if (sans is not None and not sans) or "client" in lowered:
            wants.add("client_auth")
        if not wants and not {"server_auth", "client_auth"} & set(uses):
            yield (f"{subject}: allowedUses {uses} have neither server_auth nor client_auth; an mTLS leaf "
                   "needs server_auth (server) or client_auth (client)."), cert.urn
        for use in sorted(wants - set(uses)):
            role = "server (it has DNS/IP SANs or a server name)" if use == "server_auth" else \
                "client (no SANs or a client name)"
            yield (f"{subject}: is a {role} certificate but allowedUses {uses} lack {use}; add {use} "
                   "(with digital_signature and key_encipherment)."), cert.urn


POLICIES = [
    resource_policy(
        name="tls-key-strength",
        description="Requires private keys to be ECDSA P256/P384/P521 or RSA with at least 3072 bits.",
        applies=of_types(PRIVATE_KEY, CERT_MANAGER), check=_key_strength,
        config={"minRsaBits": {"type": "integer", "default": 3072, "description": "Minimum RSA key size."},
                "allowedEcdsaCurves": {"type": "array", "items": {"type": "string"},
                                       "default": ["P256", "P384", "P521"], "description": "Allowed ECDSA curves."},
                "allowEd25519": {"type": "boolean", "default": False,
                                 "description": "Accept ED25519 keys (not every MQTT client supports them)."}}),
    resource_policy(
        name="tls-cert-lifetime",
        description="Limits certificate validity: leaves to 398 days, the CA to the configured maximum.",
        applies=of_types(*CERTS, CERT_MANAGER), check=_lifetime,
        config={"maxLeafValidityHours": {"type": "integer", "default": 398 * 24,
                                         "description": "Maximum leaf validityPeriodHours (398 days)."},
                "maxCaValidityHours": {"type": "integer", "default": 10 * 365 * 24,
                                       "description": "Maximum CA validityPeriodHours (10 years)."}}),
    resource_policy(
        name="tls-ca-usage",
        description="Requires that only the self-signed root is a CA, and that leaves cannot sign certificates.",
        applies=of_types(*CERTS), check=_ca_usage,
        config={"allowIntermediateCas": {"type": "boolean", "default": False,
                                         "description": "Allow LocallySignedCert with isCaCertificate."}}),
    stack_policy(
        name="tls-cert-purpose",
        description="Requires server certificates to allow server_auth and client certificates client_auth.",
        check=_purpose),
]
