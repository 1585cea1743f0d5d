"""Remote write to a managed TSDB: bearer token or basic auth from files, a tenant header, rotation, and no leaks.

The receiver is a local HTTP(S) server that records each request's headers; the HTTPS one
serves the devenv PKI's 127.0.0.1 certificate and the writer verifies it against the CA.
"""

from __future__ import annotations

import base64
import http.server
import ssl
import threading
from pathlib import Path
from typing import ClassVar, Iterator

import pytest

from devenv.pki import LocalPki
from ems_contract.telemetry import Reading
from ingest.config import parse_config
from ingest.errors import ConfigError, TsdbUnavailable
from ingest.remote_write import RemoteWriteAuth, RemoteWriter, Sample, series_labels

TOKEN = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXRva2VuLTE.sig"
PASSWORD = "pä:ss wörd"


def _sample() -> Sample:
    reading = Reading(1, 1000, "tx1", "oil_temp", 61.25, "degC")
    return Sample(series_labels("s1", reading), 1000, 61.25, "s1", 1)


class _Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"                    # kept-alive connections, as a real TSDB
    answers: ClassVar[list[int]] = []
    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(dict(self.headers))
        status = type(self).answers.pop(0) if type(self).answers else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(context: ssl.SSLContext | None = None) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.seen.clear()
    _Receiver.answers = []
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_port}/api/v1/push"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[str]:
    yield from _serve()


@pytest.fixture
def tls_receiver(pki: LocalPki) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    yield from _serve(context)


def _secret(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(0o600)
    return path


def test_bearer_token_and_tenant_over_verified_tls(tmp_path: Path, tls_receiver: str, pki: LocalPki) -> None:
    auth = RemoteWriteAuth(bearer_token_file=_secret(tmp_path, "token", TOKEN + "\n"), tenant="grid-ops")
    writer = RemoteWriter(tls_receiver, ca=pki.ca, timeout_s=5, auth=auth)
    writer.write([_sample()])
    [headers] = _Receiver.seen
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-Scope-OrgID"] == "grid-ops"
    assert headers["Content-Encoding"] == "snappy" and headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    writer.close()


def test_basic_auth_with_a_utf8_password_and_a_thanos_tenant_header(tmp_path: Path, receiver: str) -> None:
    auth = RemoteWriteAuth(basic_username="ems", basic_password_file=_secret(tmp_path, "password", PASSWORD + "\r\n"),
                           tenant="dc1", tenant_header="THANOS-TENANT")
    RemoteWriter(receiver, timeout_s=5, auth=auth).write([_sample()])
    [headers] = _Receiver.seen
    scheme, encoded = headers["Authorization"].split(" ")
    assert scheme == "Basic" and base64.b64decode(encoded).decode() == f"ems:{PASSWORD}"
    assert headers["THANOS-TENANT"] == "dc1" and "X-Scope-OrgID" not in headers


def test_without_auth_no_authorization_header_is_sent(receiver: str) -> None:
    RemoteWriter(receiver, timeout_s=5).write([_sample()])
    assert "Authorization" not in _Receiver.seen[0] and "X-Scope-OrgID" not in _Receiver.seen[0]


def test_a_rotated_token_applies_after_a_401_without_a_restart(tmp_path: Path, receiver: str) -> None:
    token = _secret(tmp_path, "token", "old-token")
    writer = RemoteWriter(receiver, timeout_s=5, auth=RemoteWriteAuth(bearer_token_file=token))
    writer.write([_sample()])
    token.write_text("new-token\n")                  # the Secret's file changes under the running worker
    writer.write([_sample()])                        # same connection: the token it opened with
    _Receiver.answers = [401]
    with pytest.raises(TsdbUnavailable) as info:     # kept for retry, never dead-lettered
        writer.write([_sample()])
    assert info.value.status == 401
    writer.write([_sample()])                        # the retry opens a new connection and reads the file again
    assert [h["Authorization"] for h in _Receiver.seen] == ["Bearer old-token"] * 3 + ["Bearer new-token"]


@pytest.mark.parametrize("content, reason", [
    (b"", "exactly one non-empty line"),
    (b"first\nsecond\n", "exactly one non-empty line"),
    (b"x" * 5000, "larger than 4096 bytes"),
    (b"\xff\xfe", "not UTF-8"),
    (b"to ken", "visible ASCII on one line"),
])
def test_a_bad_token_file_is_a_transient_error_that_never_shows_the_secret(tmp_path: Path, receiver: str,
                                                                           content: bytes, reason: str) -> None:
    path = _secret(tmp_path, "token", content)
    writer = RemoteWriter(receiver, timeout_s=5, auth=RemoteWriteAuth(bearer_token_file=path))
    with pytest.raises(TsdbUnavailable, match=reason) as info:
        writer.write([_sample()])
    assert str(path) in str(info.value)
    for fragment in (b"first", b"second", b"xxxx", b"to ken"):
        assert fragment.decode() not in str(info.value).replace(str(path), "")
    assert _Receiver.seen == []                      # nothing was sent without its credentials


def test_a_missing_secret_file_is_transient_and_named(tmp_path: Path, receiver: str) -> None:
    writer = RemoteWriter(receiver, timeout_s=5, auth=RemoteWriteAuth(basic_username="ems",
                                                                     basic_password_file=tmp_path / "gone"))
    with pytest.raises(TsdbUnavailable, match=r"basic_password_file .*gone: cannot be read"):
        writer.write([_sample()])


def test_the_auth_object_shows_no_secret(tmp_path: Path) -> None:
    auth = RemoteWriteAuth(bearer_token_file=_secret(tmp_path, "token", TOKEN))
    assert TOKEN not in repr(auth) and TOKEN not in str(auth)


# --------------------------------------------------------------------------- the [tsdb] config


def _raw(tmp_path: Path, **tsdb: str) -> dict:
    for name in ("ca.crt", "tls.crt", "tls.key", "token", "password"):
        (tmp_path / name).write_text("x")
    return {"broker": {"host": "mqtt.ems.svc", "ca": "ca.crt", "cert": "tls.crt", "key": "tls.key"},
            "tsdb": {"remote_write_url": "https://mimir.example.net/api/v1/push", **tsdb},
            "state": {"dir": "/var/lib/ems-ingest"}}


def test_config_reads_bearer_basic_and_tenant_settings(tmp_path: Path) -> None:
    bearer = parse_config(_raw(tmp_path, bearer_token_file="token", tenant_id="grid-ops"), tmp_path).tsdb.auth
    assert bearer == RemoteWriteAuth(bearer_token_file=tmp_path / "token", tenant="grid-ops")
    basic = parse_config(_raw(tmp_path, basic_auth_username="ems", basic_auth_password_file="password",
                              tenant_id="dc1", tenant_header="THANOS-TENANT"), tmp_path).tsdb.auth
    assert basic == RemoteWriteAuth(basic_username="ems", basic_password_file=tmp_path / "password", tenant="dc1",
                                    tenant_header="THANOS-TENANT")
    assert parse_config(_raw(tmp_path), tmp_path).tsdb.auth is None
    # A tenant alone may go to an in-cluster store over plain HTTP.
    plain = _raw(tmp_path, tenant_id="grid-ops")
    plain["tsdb"]["remote_write_url"] = "http://mimir.ems.svc:8080/api/v1/push"
    assert parse_config(plain, tmp_path).tsdb.auth == RemoteWriteAuth(tenant="grid-ops")


@pytest.mark.parametrize("tsdb, field, reason, value", [
    ({"bearer_token_file": "token", "basic_auth_username": "ems", "basic_auth_password_file": "password"},
     "tsdb.bearer_token_file", "excludes basic_auth_username and basic_auth_password_file", "token"),
    ({"basic_auth_username": "ems"}, "tsdb.basic_auth_password_file", "is required with the other basic auth setting", "ems"),
    ({"basic_auth_password_file": "password"}, "tsdb.basic_auth_username", "is required with the other basic auth setting",
     "password"),
    ({"basic_auth_username": "e:ms", "basic_auth_password_file": "password"}, "tsdb.basic_auth_username",
     "must not contain ':'", "e:ms"),
    ({"tenant_id": "grid ops"}, "tsdb.tenant_id", "must be 1..256 visible ASCII characters", "grid ops"),
    ({"tenant_id": "t", "tenant_header": "X Org"}, "tsdb.tenant_header", "must be an HTTP header name", "X Org"),
    ({"bearer_token_file": "missing-token"}, "tsdb.bearer_token_file", "must be an existing file", "missing-token"),
])
def test_config_errors_name_the_field_the_value_and_the_rule(tmp_path: Path, tsdb: dict, field: str, reason: str,
                                                             value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(tmp_path, **tsdb), tmp_path)
    text = str(info.value)
    assert text.startswith(f"{field}: {reason}") and value in text, text


def test_credentials_are_refused_over_plain_http(tmp_path: Path) -> None:
    raw = _raw(tmp_path, bearer_token_file="token")
    raw["tsdb"]["remote_write_url"] = "http://mimir.example.net/api/v1/push"
    with pytest.raises(ConfigError, match=r"^tsdb\.remote_write_url: .*must be https:// when credentials are set"):
        parse_config(raw, tmp_path)
