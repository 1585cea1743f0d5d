"""Device identity per IEEE 2030.5-2018 §6.3.4: LFDI and SFDI from a certificate.

==========  =================================================================
fingerprint SHA-256 over the certificate's DER encoding (32 bytes)
LFDI        the fingerprint's leftmost 160 bits, written as 40 hex digits
SFDI        the fingerprint's leftmost 36 bits as a decimal number, followed
            by one check digit chosen so that the sum of all the digits is
            ≡ 0 (mod 10); at most 12 digits, an integer on the wire
==========  =================================================================

The standard's worked example (fingerprint ``3E4F-45AB-…-213A``) gives LFDI
``3E4F45AB31EDFE5B67E343E5E4562E31984E23E5`` and SFDI ``167261211391``.
Parsers here take text from command lines, configs and servers, so each one
checks length, alphabet and range and raises ``IdentityError`` naming the
value; nothing here raises anything else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = [
    "IdentityError", "DeviceIdentity",
    "identity_from_certificate", "identity_from_fingerprint", "fingerprint_of",
    "lfdi_from_fingerprint", "sfdi_from_lfdi", "check_digit", "parse_lfdi", "parse_sfdi", "parse_fingerprint",
    "SFDI_MAX",
]

LFDI_HEX_DIGITS = 40
_SFDI_BITS = 36
SFDI_MAX = (2**_SFDI_BITS - 1) * 10 + 9
"""The largest value an SFDI can have: 36 bits of prefix and one check digit."""

MAX_CERTIFICATE_BYTES = 64 * 1024
_HEX = re.compile(r"^[0-9A-Fa-f]+$")
_PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


class IdentityError(ValueError):
    """A certificate, fingerprint, LFDI or SFDI that is not valid; ``field`` and ``value`` say which."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        shown = value if isinstance(value, (int, str)) and len(str(value)) <= 80 else f"{str(value)[:80]}…"
        super().__init__(f"{field} {reason} (got {shown!r})")
        self.field = field
        self.value = value
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device's 2030.5 identifiers: ``lfdi`` as 40 upper-case hex digits, ``sfdi`` as an integer."""

    lfdi: str
    sfdi: int


def check_digit(digits: str) -> int:
    """The digit that makes the sum of ``digits`` plus itself ≡ 0 (mod 10) (§6.3.4, not Luhn)."""
    return (10 - sum(int(d) for d in digits) % 10) % 10


def parse_fingerprint(text: str) -> bytes:
    """A SHA-256 fingerprint from 64 hex digits, optionally grouped with ``-``, ``:`` or spaces."""
    compact = re.sub(r"[-:\s]", "", text) if isinstance(text, str) and len(text) <= 200 else None
    if compact is None or len(compact) != 64 or not _HEX.match(compact):
        raise IdentityError("fingerprint", text, "must be 64 hex digits (a SHA-256 digest), optionally grouped by - or :")
    return bytes.fromhex(compact)


def parse_lfdi(text: str) -> str:
    """An LFDI as 40 upper-case hex digits; raises IdentityError unless ``text`` is exactly 40 hex digits."""
    if not isinstance(text, str) or len(text) != LFDI_HEX_DIGITS or not _HEX.match(text):
        raise IdentityError("lfdi", text, f"must be exactly {LFDI_HEX_DIGITS} hex digits")
    return text.upper()


def parse_sfdi(value: str | int) -> int:
    """An SFDI as an integer; raises IdentityError for non-digits, a value beyond 36 bits or a wrong check digit."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 12:
        raise IdentityError("sfdi", value, "must be a decimal number of at most 12 digits")
    number = int(text)
    if number > SFDI_MAX:
        raise IdentityError("sfdi", value, f"exceeds the 36-bit range plus check digit (at most {SFDI_MAX})")
    digits = str(number)
    if check_digit(digits[:-1]) != int(digits[-1]):
        raise IdentityError("sfdi", value, f"has a wrong check digit (expected {check_digit(digits[:-1])})")
    return number


def lfdi_from_fingerprint(fingerprint: bytes) -> str:
    """The leftmost 160 bits of a 32-byte fingerprint as 40 upper-case hex digits."""
    if len(fingerprint) != 32:
        raise IdentityError("fingerprint", fingerprint.hex(), "must be 32 bytes (SHA-256)")
    return fingerprint[:20].hex().upper()


def sfdi_from_lfdi(lfdi: str) -> int:
    """The SFDI of an LFDI: its leftmost 36 bits (9 hex digits) in decimal, then the check digit."""
    prefix = str(int(parse_lfdi(lfdi)[: _SFDI_BITS // 4], 16))
    return int(prefix + str(check_digit(prefix)))


def identity_from_fingerprint(fingerprint: bytes) -> DeviceIdentity:
    """LFDI and SFDI of a certificate given its SHA-256 fingerprint."""
    lfdi = lfdi_from_fingerprint(fingerprint)
    return DeviceIdentity(lfdi=lfdi, sfdi=sfdi_from_lfdi(lfdi))


def fingerprint_of(data: bytes) -> bytes:
    """SHA-256 over the DER encoding of a certificate given as PEM (first certificate) or DER."""
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise IdentityError("certificate", f"{len(data)} bytes", f"is larger than {MAX_CERTIFICATE_BYTES} bytes")
    try:
        if _PEM_MARKER in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError("certificate", f"{len(data)} bytes", f"is neither a PEM nor a DER X.509 certificate ({exc})") from exc
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


def identity_from_certificate(data: bytes) -> DeviceIdentity:
    """LFDI and SFDI of a certificate given as PEM or DER bytes."""
    return identity_from_fingerprint(fingerprint_of(data))
