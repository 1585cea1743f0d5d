"""TLS 1.2 with TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 against the test server, over a real ECDSA P-256 PKI."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import pytest

from devenv.pki import CertPair, LocalPki, make_pki
from devenv.sep2_server import Sep2TestServer
from northbound import sep2, tls
from northbound.errors import ConfigError, TransportError
from northbound.transport import Sep2Transport


def _get_dcap(url: str, context: ssl.SSLContext) -> tuple[object, str | None]:
    async def go() -> tuple[object, str | None]:
        async with Sep2Transport(url, context, timeout=5) as transport:
            return await transport.get("dcap", "/dcap", sep2.DeviceCapability), transport.last_cipher
    return asyncio.run(go())


def test_client_offers_ccm8_first_and_only_tls12(pki: LocalPki, aggregator: CertPair) -> None:
    context = tls.client_context(pki.ca, aggregator.cert, aggregator.key)
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12[0] == tls.CCM8 == "ECDHE-ECDSA-AES128-CCM8"
    assert context.maximum_version == ssl.TLSVersion.TLSv1_2 and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_ccm8_negotiated_with_mutual_tls(sep2_server: Sep2TestServer, pki: LocalPki, aggregator: CertPair) -> None:
    dcap, cipher = _get_dcap(sep2_server.url, tls.client_context(pki.ca, aggregator.cert, aggregator.key))
    assert dcap.TimeLink.href == "/tm"
    assert cipher == tls.CCM8
    assert sep2_server.state.ciphers == {tls.CCM8}


def test_server_offers_nothing_but_ccm8(sep2_server: Sep2TestServer, pki: LocalPki, aggregator: CertPair) -> None:
    port = sep2_server.url.rsplit(":", 1)[1]

    def s_client(cipher: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-cipher", cipher,
             "-CAfile", str(pki.ca), "-cert", str(aggregator.cert), "-key", str(aggregator.key), "-brief"],
            input="", capture_output=True, text=True, timeout=30)

    assert "ECDHE-ECDSA-AES128-CCM8" in s_client("ECDHE-ECDSA-AES128-CCM8").stderr
    refused = s_client("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert refused.returncode != 0 and "handshake failure" in refused.stderr


def test_modern_suite_when_the_server_lacks_ccm8(pki: LocalPki, aggregator: CertPair) -> None:
    with Sep2TestServer(pki, aggregator.cert, ciphers=("ECDHE-ECDSA-AES128-GCM-SHA256",)) as server:
        _, cipher = _get_dcap(server.url, tls.client_context(pki.ca, aggregator.cert, aggregator.key))
    assert cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_server_from_another_ca_is_refused(sep2_server: Sep2TestServer, tmp_path, aggregator: CertPair) -> None:
    other = make_pki(tmp_path / "other")
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        _get_dcap(sep2_server.url, tls.client_context(other.ca, aggregator.cert, aggregator.key))


def test_client_from_another_ca_is_refused(sep2_server: Sep2TestServer, pki: LocalPki, tmp_path) -> None:
    stranger = make_pki(tmp_path / "other").client("stranger")
    with pytest.raises(TransportError):
        _get_dcap(sep2_server.url, tls.client_context(pki.ca, stranger.cert, stranger.key))
    assert sep2_server.state.requests == []


def test_unknown_client_of_the_right_ca_gets_403(sep2_server: Sep2TestServer, pki: LocalPki) -> None:
    other = pki.client("not-the-aggregator")
    with pytest.raises(TransportError, match="HTTP 403"):
        _get_dcap(sep2_server.url, tls.client_context(pki.ca, other.cert, other.key))


def test_bad_files_are_config_errors(pki: LocalPki, aggregator: CertPair, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"client.cert cannot be loaded with its key"):
        tls.client_context(pki.ca, aggregator.cert, pki.server.key)
    (tmp_path / "ca.pem").write_text("junk")
    with pytest.raises(ConfigError, match=r"server.ca cannot be loaded as a CA bundle"):
        tls.client_context(tmp_path / "ca.pem", aggregator.cert, aggregator.key)
