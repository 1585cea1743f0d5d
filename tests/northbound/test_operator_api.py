"""The manual-command request parser (every refusal names field and value; fuzzed) and the north-bound's command
listener on its own: identity only from the gateway's headers, bounded bodies, the issuer in the command."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import ssl
import threading
import time
from typing import Any, Iterator

import pytest
from hypothesis import given, settings, strategies as st

from devenv.pki import CertPair, LocalPki, make_pki
from ems_contract.command import CONTROLS, MAX_WATTS, Command, CommandResult, decode_command, encode_command
from northbound.commands import Outcome
from northbound.errors import BrokerError
from northbound.manual_command import FIELDS, MAX_BODY_BYTES, ManualRequest, RequestError, parse_request
from northbound.metrics import NorthboundMetrics
from ems_runtime.server_tls import ServerTls
from northbound.operator_api import CommandDesk, OperatorApi

SITES = ("sub-07", "sub-08")
LIMITS = {"sites": SITES, "default_ttl_s": 300, "max_ttl_s": 3600}


def parse(doc: object) -> ManualRequest:
    return parse_request(json.dumps(doc).encode(), **LIMITS)  # type: ignore[arg-type]


def test_a_good_request_and_its_defaults() -> None:
    assert parse({"site": "sub-07", "control": "exp_lim_w", "value": 5000}) == ManualRequest("sub-07", "exp_lim_w", 5000.0, 300)
    assert parse({"site": "sub-08", "control": "connect", "value": False, "ttl_s": 3600.0}) == \
        ManualRequest("sub-08", "connect", False, 3600)
    assert parse({"site": "sub-07", "control": "imp_lim_w", "value": -MAX_WATTS}).value == -MAX_WATTS


@pytest.mark.parametrize(("body", "message"), [
    (b"", "body: '' is not JSON (Expecting value at character 0)"),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": Infinity}',
     "body: 'Infinity' is not JSON (NaN and Infinity are not allowed)"),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": 1e400}',
     "value: inf must be a finite number of watts, |value| <= 1e+09, for exp_lim_w"),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": ' + b"9" * 400 + b"}",
     "value: " + repr(int("9" * 400))[:77] + "... must be a finite number of watts, |value| <= 1e+09, for exp_lim_w"),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": true}',
     "value: True must be a finite number of watts, |value| <= 1e+09, for exp_lim_w"),
    (b'{"site": "sub-07", "control": "energize", "value": 0}', "value: 0 must be true or false for energize"),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": 1, "ttl_s": 3601}', "ttl_s: 3601 must be whole seconds, 1..3600"),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": 1, "ttl_s": 1.5}', "ttl_s: 1.5 must be whole seconds, 1..3600"),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": 1, "ttl_s": true}', "ttl_s: True must be whole seconds, 1..3600"),
    (b'{"site": "sub-09", "control": "exp_lim_w", "value": 1}', "site: 'sub-09' is not a site this client commands (sub-07, sub-08)"),
    (b'{"site": "sub-07", "control": "EXP_LIM_W", "value": 1}', "control: 'EXP_LIM_W' must be one of " + ", ".join(CONTROLS)),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": 1, "issuer": "root"}',
     "issuer: 'root' is not a known field (site, control, value, ttl_s)"),
    (b'{"control": "exp_lim_w", "value": 1}', "site: None is required"),
    (b'{"site": "sub-07", "control": "exp_lim_w", "value": 1, "value": 2}', "value: 2 appears twice in the body"),
    (b'{"site": ["sub-07"], "control": "exp_lim_w", "value": 1}',
     "body: '{\"site\": [\"sub-07\"], \"control\": \"exp_lim_w\", \"value\": 1}' nests deeper than 1 level: "
     "one flat JSON object is expected"),
    (b'"sub-07"', "body: 'sub-07' must be a JSON object"),
    (b'{"site": "sub\xc0-07"}', "body: b'e\": \"sub\\xc0-07\"}' is not valid UTF-8"),     # the bytes around it
    (b"[" * 5000, f"body: '5000 bytes' is larger than {MAX_BODY_BYTES} bytes"),
])
def test_every_refusal_names_the_field_and_the_value(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body, **LIMITS)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_brackets_inside_strings_are_not_nesting() -> None:
    with pytest.raises(RequestError, match=r"^site: '\[\{\\\\\"' is not a site id"):
        parse({"site": '[{\\"', "control": "exp_lim_w", "value": 1})


_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=12)
_field_values = {"site": st.sampled_from(SITES) | st.text(max_size=70) | _json,
                 "control": st.sampled_from(CONTROLS) | st.text(max_size=12) | _json,
                 "value": _scalar | _json, "ttl_s": st.integers(-5, 4000) | st.floats() | _json}


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    keys = draw(st.lists(st.sampled_from([*FIELDS, "device", "issuer"]), max_size=6))
    doc = {k: draw(_field_values.get(k, _json)) for k in keys}
    return json.dumps(doc, allow_nan=True).encode()


@settings(max_examples=600, deadline=None)
@given(body=st.one_of(st.binary(max_size=300), _documents(), _json.map(lambda d: json.dumps(d).encode())))
def test_any_body_is_a_request_the_contract_accepts_or_a_named_refusal(body: bytes) -> None:
    try:
        request = parse_request(body, **LIMITS)  # type: ignore[arg-type]
    except RequestError as exc:
        assert exc.field in (*FIELDS, "body") or exc.reason == f"is not a known field ({', '.join(FIELDS)})"
        assert len(exc.value) <= 80 and exc.reason
        return
    assert request.site in SITES and 1 <= request.ttl_s <= 3600
    command = Command(id="x", site=request.site, issued_ms=0, expires_ms=request.ttl_s * 1000, event=None,
                      control=request.control, value=request.value, issuer="cert:otto")
    assert decode_command(encode_command(command)) == command           # what passes, the contract carries


class _Sink:
    """Records what the desk issues on a real event loop in a thread; ``fail`` makes the broker refuse."""

    def __init__(self) -> None:
        self.issued: list[Command] = []
        self.fail: BrokerError | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def issue(self, command: Command) -> None:
        if self.fail is not None:
            raise self.fail
        self.issued.append(command)


GATEWAY_CN = "ems-api-gateway"


def _desk(sink: _Sink, metrics: NorthboundMetrics) -> CommandDesk:
    return CommandDesk(issue=sink.issue, loop=sink.loop, sites=SITES, metrics=metrics, default_ttl_s=300,
                       max_ttl_s=3600, publish_timeout_s=1.0, clock=lambda: 1_764_000_000.0)


class _Listener(OperatorApi):
    """The listener under test, with the client context of the gateway's certificate that the calls below use."""

    gateway: ssl.SSLContext


@pytest.fixture
def listener(pki: LocalPki) -> Iterator[tuple[_Listener, _Sink, NorthboundMetrics]]:
    sink, metrics = _Sink(), NorthboundMetrics()
    desk = _desk(sink, metrics)
    tls = ServerTls(pki.server.cert, pki.server.key, pki.ca, (GATEWAY_CN,), require_client=True)
    api = _Listener("127.0.0.1", 0, desk, tls, cert_check_s=0)
    api.gateway = _client(pki, pki.client(GATEWAY_CN))
    api.start()
    yield api, sink, metrics
    api.stop()
    sink.loop.call_soon_threadsafe(sink.loop.stop)
    sink.thread.join(5)


OPERATOR = {"X-Ems-User": "cert:otto", "X-Ems-Role": "operator", "X-Ems-Auth": "mtls"}


def _client(pki: LocalPki, pair: CertPair | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


def _connection(api: _Listener, context: ssl.SSLContext | None = None) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", api.port, timeout=10, context=context or api.gateway)


def _call(api: _Listener, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    conn = _connection(api, context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_listener_issues_with_the_gateways_identity_and_reports_the_outcome(listener) -> None:
    api, sink, metrics = listener
    status, doc = _call(api, "POST", "/v1/commands", b'{"site": "sub-07", "control": "exp_lim_w", "value": 7000}', OPERATOR)
    assert status == 202, doc
    [command] = sink.issued
    assert (command.issuer, command.event, command.value, command.expires_ms - command.issued_ms) == \
        ("cert:otto", None, 7000.0, 300_000)
    assert _call(api, "GET", f"/v1/commands/{command.id}", headers=OPERATOR)[1]["status"] == "pending"
    api.desk.observe(Outcome(command, CommandResult(command.id, "sub-07", 1, "failed", "device timeout", None)))
    status, doc = _call(api, "GET", f"/v1/commands/{command.id}", headers={**OPERATOR, "X-Ems-Role": "admin"})
    assert (status, doc["status"], doc["reason"], doc["issuer"]) == (200, "failed", "device timeout", "cert:otto")
    assert metrics.registry.get_sample_value("ems_northbound_manual_commands_total",
                                             {"role": "operator", "outcome": "published"}) == 1


@pytest.mark.parametrize("headers", [{}, {**OPERATOR, "X-Ems-Role": "root"}, {**OPERATOR, "X-Ems-Auth": ""},
                                     {**OPERATOR, "X-Ems-User": "otto otto"}, {**OPERATOR, "X-Ems-User": ""}])
def test_no_identity_from_the_gateway_is_401(listener, headers: dict[str, str]) -> None:
    api, sink, metrics = listener
    assert _call(api, "POST", "/v1/commands", b'{"site": "sub-07", "control": "connect", "value": true}', headers)[0] == 401
    assert _call(api, "GET", "/v1/commands/abc", headers=headers)[0] == 401
    assert sink.issued == []
    assert metrics.registry.get_sample_value("ems_northbound_manual_commands_total",
                                             {"role": "none", "outcome": "unauthenticated"}) == 1


def test_viewers_bad_bodies_and_broker_refusals_issue_nothing(listener) -> None:
    api, sink, _ = listener
    body = b'{"site": "sub-07", "control": "connect", "value": true}'
    assert _call(api, "POST", "/v1/commands", body, {**OPERATOR, "X-Ems-Role": "viewer"})[0] == 403
    assert _call(api, "GET", "/v1/commands/abc", headers={**OPERATOR, "X-Ems-Role": "viewer"})[0] == 403
    status, doc = _call(api, "POST", "/v1/commands", b'{"site": "sub-07", "control": "connect", "value": "yes"}', OPERATOR)
    assert (status, doc["field"], doc["value"]) == (400, "value", "'yes'")
    status, doc = _call(api, "POST", "/v1/commands", b"x" * (MAX_BODY_BYTES + 1), OPERATOR)
    assert (status, doc["field"]) == (413, "body")
    conn = _connection(api)
    conn.putrequest("POST", "/v1/commands")
    for name, value in {**OPERATOR, "Transfer-Encoding": "chunked"}.items():
        conn.putheader(name, value)
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    assert _call(api, "POST", "/v1/commands/abc", body, OPERATOR)[0] == 405
    assert _call(api, "GET", "/metrics", headers=OPERATOR)[0] == 404
    assert sink.issued == []
    sink.fail = BrokerError("no_subscribers", "PUBACK 16: no site is subscribed")
    status, doc = _call(api, "POST", "/v1/commands", body, OPERATOR)
    assert (status, doc["kind"]) == (503, "no_subscribers")
    assert _call(api, "GET", f"/v1/commands/{doc['id']}", headers=OPERATOR)[1]["status"] == "not_published"


def test_only_the_gateways_certificate_is_served_whatever_headers_it_forges(listener, pki, tmp_path) -> None:
    api, sink, metrics = listener
    body = b'{"site": "sub-07", "control": "connect", "value": true}'
    forged = {**OPERATOR, "X-Ems-Role": "admin"}
    # No certificate, or one of another CA: the handshake itself is refused.
    for context in (_client(pki, None), _client(pki, make_pki(tmp_path / "rogue", ca_name="rogue-ca").client(GATEWAY_CN))):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _call(api, "POST", "/v1/commands", body, forged, context=context)
    # Plain HTTP is not spoken at all.
    plain = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("POST", "/v1/commands", body=body, headers=forged)
        plain.getresponse()
    plain.close()
    # A valid certificate of the platform CA that is not the gateway's (an operator's, a site's, the north-bound's
    # own): 403 before any header is believed.
    for who in ("otto", "sub-07", "ems-northbound"):
        for method, path, data in (("POST", "/v1/commands", body), ("GET", "/v1/commands/abc", None)):
            status, doc = _call(api, method, path, data, forged, context=_client(pki, pki.client(who, "operator")))
            assert status == 403 and "may not call" in doc["error"], (who, method, doc)
    assert sink.issued == []
    assert metrics.registry.get_sample_value("ems_northbound_manual_commands_total",
                                             {"role": "none", "outcome": "wrong_caller"}) == 6
    assert _call(api, "POST", "/v1/commands", body, OPERATOR)[0] == 202          # the gateway's certificate: served


def test_a_renewed_server_certificate_serves_new_connections_without_a_restart(pki, tmp_path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"       # as the kubelet projects the Secret
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    sink = _Sink()
    api = _Listener("127.0.0.1", 0, _desk(sink, NorthboundMetrics()),
                    ServerTls(cert, key, pki.ca, (GATEWAY_CN,), require_client=True), cert_check_s=0.05)
    api.gateway = _client(pki, pki.client(GATEWAY_CN))
    api.start()

    def served() -> bytes:
        conn = _connection(api)
        try:
            conn.connect()
            return conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        finally:
            conn.close()
    try:
        assert served() == ssl.PEM_cert_to_DER_cert(pki.server.cert.read_text())
        renewed = pki.server_pair("northbound-commands-renewed")
        shutil.copy(renewed.key, tmp_path / "next.key")
        shutil.copy(renewed.cert, tmp_path / "next.crt")
        os.replace(tmp_path / "next.key", key)
        os.replace(tmp_path / "next.crt", cert)
        deadline = time.monotonic() + 20
        while api.tls.certificate_switches < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served() == ssl.PEM_cert_to_DER_cert(renewed.cert.read_text())
        assert _call(api, "GET", "/v1/commands/abc", headers=OPERATOR)[0] == 404       # still the gateway's alone
    finally:
        api.stop()
        sink.loop.call_soon_threadsafe(sink.loop.stop)
        sink.thread.join(5)
