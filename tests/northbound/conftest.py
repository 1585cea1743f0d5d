"""Fixtures for the north-bound client: its certificate and the 2030.5 test server over CCM8 mutual TLS."""

from __future__ import annotations

from typing import Iterator

import pytest

from devenv.pki import CertPair, LocalPki
from devenv.sep2_server import Sep2TestServer


@pytest.fixture(scope="session")
def aggregator(pki: LocalPki) -> CertPair:
    """The platform's 2030.5 client certificate (ECDSA P-256, signed by the test CA)."""
    return pki.client("ems-northbound")


@pytest.fixture
def sep2_server(pki: LocalPki, aggregator: CertPair) -> Iterator[Sep2TestServer]:
    """A fresh 2030.5 server on 127.0.0.1 that offers only TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8."""
    with Sep2TestServer(pki, aggregator.cert) as server:
        yield server
