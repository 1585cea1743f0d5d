"""TLS for 2030.5: TLS 1.2 offering ``TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`` first (IEEE 2030.5 §6.11 mandates it).

``client_context`` builds the client's ``ssl.SSLContext``: the client certificate
and key, the server verified against the utility's CA (and its name checked),
TLS 1.2 only unless ``allow_tls13`` (a TLS 1.3 handshake never uses CCM8), and
the cipher list ``CIPHERS``: the 2030.5 suite first, then modern AEAD suites for
servers behind a front end that lacks it.

OpenSSL and CCM8 (AES-CCM with an 8-byte tag):

* OpenSSL 3.0 (Debian 12: 3.0.x) accepts the suite at its default security
  level 1, but leaves it out of ``DEFAULT``: it must be named, as here.
* OpenSSL 3.2 moved the CCM8 suites to security level 0 (the short tag), so there
  they appear only with ``@SECLEVEL=0``. ``cipher_string`` detects that and adds
  it, and says so in a log line; certificate verification stays on, and the PKI
  (ECDSA P-256, SHA-256) is strong at any level.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from northbound.errors import ConfigError

__all__ = ["CCM8", "CIPHERS", "client_context", "server_context", "cipher_string"]

log = logging.getLogger(__name__)

CCM8 = "ECDHE-ECDSA-AES128-CCM8"
"""OpenSSL's name for TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (0xC0AE)."""

CIPHERS = (CCM8, "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
           "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384")


def cipher_string(context: ssl.SSLContext, ciphers: tuple[str, ...] = CIPHERS) -> str:
    """Set ``ciphers`` on ``context`` in order, lowering the security level only if CCM8 needs it; the string used."""
    text = ":".join(ciphers)
    context.set_ciphers(text)
    if CCM8 in ciphers and not _offers(context, CCM8):
        text += ":@SECLEVEL=0"
        context.set_ciphers(text)
        log.warning("this OpenSSL (%s) allows %s only at security level 0; using @SECLEVEL=0",
                    ssl.OPENSSL_VERSION, CCM8)
        if not _offers(context, CCM8):
            raise ConfigError("tls.ciphers", CCM8, f"is not available in {ssl.OPENSSL_VERSION}")
    return text


def _offers(context: ssl.SSLContext, name: str) -> bool:
    return any(c["name"] == name for c in context.get_ciphers())


def _load_chain(context: ssl.SSLContext, field: str, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(field, str(cert), f"cannot be loaded with its key ({exc})") from exc


def _load_ca(context: ssl.SSLContext, field: str, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(field, str(ca), f"cannot be loaded as a CA bundle ({exc})") from exc


def client_context(ca: Path, cert: Path, key: Path, *, allow_tls13: bool = False) -> ssl.SSLContext:
    """The client's context: our certificate, the utility's CA, TLS 1.2 (1.3 too with ``allow_tls13``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)       # verifies the server and checks its name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3 if allow_tls13 else ssl.TLSVersion.TLSv1_2
    cipher_string(context)
    _load_ca(context, "server.ca", ca)
    _load_chain(context, "client.cert", cert, key)
    return context


def server_context(ca: Path, cert: Path, key: Path, ciphers: tuple[str, ...] = (CCM8,)) -> ssl.SSLContext:
    """A 2030.5 server's context (for the test server): TLS 1.2 only, client certificates required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    cipher_string(context, ciphers)
    _load_ca(context, "server.ca", ca)
    _load_chain(context, "server.cert", cert, key)
    return context
