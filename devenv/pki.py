"""A throw-away mTLS PKI for the demo, tests and benchmarks.

Real X.509 certificates made with ``cryptography``: an ECDSA P-256 root CA, a
server certificate for 127.0.0.1/localhost (serverAuth) and client
certificates (clientAuth), written as PEM files with private keys at mode 0600.
Production certificates come from the infra program (pulumi-tls); this is only
for local brokers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class LocalPki:
    """Paths of a generated PKI: ``ca`` is the CA certificate every peer trusts."""

    directory: Path
    ca: Path
    ca_key: Path
    server: CertPair

    def client(self, name: str, ou: str | None = None, *, valid_days: float = 90) -> CertPair:
        """A client certificate for CN ``name`` (subject OU ``ou`` if given), created on first use, reused after.

        ``valid_days`` below zero makes one that has already expired (for refusal tests).
        """
        stem = name if ou is None else f"{name}.{ou}"
        pair = CertPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        if not pair.cert.exists():
            _issue(pair, name, *self._signer(), server=False, ou=ou, valid_days=valid_days)
        return pair

    def _signer(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        return (x509.load_pem_x509_certificate(self.ca.read_bytes()),
                serialization.load_pem_private_key(self.ca_key.read_bytes(), None))  # type: ignore[return-value]

    def server_pair(self, stem: str) -> CertPair:
        """Another localhost server certificate of this CA (a renewal), with its own key: ``<stem>.crt``/``.key``."""
        pair = CertPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        if not pair.cert.exists():
            _issue(pair, "localhost", *self._signer(), server=True)
        return pair


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _issue(pair: CertPair, common_name: str, ca_cert: x509.Certificate,
           ca_key, *, server: bool, ou: str | None = None, valid_days: float = 90) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if ou is not None:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    start = now - dt.timedelta(minutes=5) if valid_days > 0 else now - dt.timedelta(days=2)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: str | os.PathLike[str], ca_name: str = "ems-dev-ca") -> LocalPki:
    """Create (or reuse, when already present) a CA and a localhost server certificate."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    ca = root / "ca.crt"
    ca_key_path = root / "ca.key"
    server = CertPair(root / "server.crt", root / "server.key")
    if not ca.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(ca_key_path, key)
        ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki = LocalPki(root, ca, ca_key_path, server)
    if not server.cert.exists():
        ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        _issue(server, "localhost", ca_cert, ca_key, server=True)
    return pki
