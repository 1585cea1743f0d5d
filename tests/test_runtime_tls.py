"""``ems_runtime.tls.broker_client_context``: one broker client context, bad files as the caller's config error."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from devenv.pki import LocalPki
from edge_agent.errors import ConfigError as EdgeConfigError
from ems_runtime.tls import broker_client_context
from ingest.errors import ConfigError as IngestConfigError
from ingest.mqtt import MqttLink, TlsFiles
from northbound.errors import ConfigError as NorthboundConfigError


class _Refused(Exception):
    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(field, value, reason)
        self.field, self.value, self.reason = field, value, reason


def test_good_files_give_a_verifying_client_context(pki: LocalPki) -> None:
    pair = pki.client("edge-site1")
    context = broker_client_context(pki.ca, pair.cert, pair.key, _Refused)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs(), "the CA file was not loaded"


def test_unreadable_ca_names_broker_ca_and_the_file(pki: LocalPki, tmp_path: Path) -> None:
    pair = pki.client("edge-site1")
    with pytest.raises(_Refused) as caught:
        broker_client_context(tmp_path / "absent-ca.crt", pair.cert, pair.key, _Refused)
    assert (caught.value.field, caught.value.value) == ("broker.ca", tmp_path / "absent-ca.crt")
    assert caught.value.reason == "is not a readable PEM CA certificate (No such file or directory)"
    assert isinstance(caught.value.__cause__, OSError)


def test_key_of_another_certificate_names_both_files(pki: LocalPki) -> None:
    pair, other = pki.client("edge-site1"), pki.client("edge-site2")
    with pytest.raises(_Refused) as caught:
        broker_client_context(pki.ca, pair.cert, other.key, _Refused)
    assert (caught.value.field, caught.value.value) == ("broker.cert", pair.cert)
    assert caught.value.reason == (f"and broker.key {str(other.key)!r} are not a readable, matching PEM certificate "
                                   f"and key (key values mismatch)")


@pytest.mark.parametrize("error", [EdgeConfigError, IngestConfigError, NorthboundConfigError])
def test_each_package_gets_its_own_config_error_naming_the_file(error: type[Exception], pki: LocalPki,
                                                                 tmp_path: Path) -> None:
    pair = pki.client("edge-site1")
    with pytest.raises(error, match=r"^broker\.cert\b") as caught:
        broker_client_context(pki.ca, pair.cert, tmp_path / "missing.key", error)
    assert str(pair.cert) in str(caught.value) and str(tmp_path / "missing.key") in str(caught.value)


def test_ingest_link_with_a_missing_key_is_a_config_error(pki: LocalPki, tmp_path: Path) -> None:
    pair = pki.client("ingest-0")
    with pytest.raises(IngestConfigError, match=r"^broker\.cert: and broker\.key '.*missing\.key' are not a readable"):
        MqttLink("127.0.0.1", 1, TlsFiles(pki.ca, pair.cert, tmp_path / "missing.key"), "ingest-0",
                 subscriptions=(), manual_ack=True, persistent=False)
