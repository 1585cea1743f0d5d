"""Hostile twins and connections against the real twin API, broker and TLS: it keeps serving."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time

import pytest

from ems_contract.telemetry import encode_twin, twin_topic
from devenv.mosquitto import free_port
from ingest.config import parse_config
from ingest.twin_api import MAX_TWIN_BYTES, TwinApi, build
from test_ingest_twin_api import _api, _get, _wait
from ingest_support import EdgePublisher
from tests.slow_client import over_a_cap_of_one, trickle

pytestmark = pytest.mark.integration

GOOD = {"oil_temp": {"value": 61.25, "unit": "degC", "quality": "good", "ts_ms": 1_000}}


def _twin_text(site: str, asset: str, **overrides: object) -> str:
    doc = json.loads(encode_twin(site, asset, 1_000, GOOD))
    doc.update(overrides)
    return json.dumps(doc)


HOSTILE_TWINS: list[tuple[str, bytes]] = [
    ("nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000),
    ("points nested 10,000 deep", _twin_text("sub-evil", "tx1").replace(
        '"points": {', '"points": {"deep": ' + "[" * 10_000 + "]" * 10_000 + ', ').encode()),
    ("thermal nested 50 deep", _twin_text("sub-evil", "tx1", thermal={}).replace(
        '"thermal": {}', '"thermal": ' + '{"a":' * 50 + "1" + "}" * 50).encode()),
    ("value with 400 digits", _twin_text("sub-evil", "tx1").replace("61.25", "1" + "0" * 400).encode()),
    ("lone surrogate in a key", _twin_text("sub-evil", "tx1").replace('"oil_temp"', '"\\ud800"').encode()),
    ("lone surrogate in a value", _twin_text("sub-evil", "tx1").replace('"degC"', '"\\udc00"').encode()),
    ('"v": true', _twin_text("sub-evil", "tx1", v=True).encode()),
    ("ts_ms 2^64", _twin_text("sub-evil", "tx1", ts_ms=2**64).encode()),
    ("points a list", _twin_text("sub-evil", "tx1", points=[1, 2]).encode()),
    ("site of another topic", _twin_text("sub-other", "tx1").encode()),
    ("not JSON", b"\x01" * 60_000),
    ("oversized", b'{"pad": "' + b"x" * MAX_TWIN_BYTES + b'"}'),
    ("100,000 values", json.dumps({"v": 1, "site": "sub-evil", "asset": "tx1", "ts_ms": 1,
                                   "points": {"p": {"value": 1, "junk": [0] * 30_000}}}).encode()),
]


def test_hostile_retained_twins_are_ignored_and_the_api_keeps_serving(broker, pki, prometheus):
    edge = EdgePublisher(broker, pki, "edge-evil")
    for _, payload in HOSTILE_TWINS:                 # retained before the API starts: the first it reads
        edge.client.publish(twin_topic("sub-evil", "tx1"), payload, qos=1, retain=True).wait_for_publish(10)
    client = ssl.create_default_context(cafile=str(pki.ca))
    with _api(broker, pki, prometheus) as api:
        _wait(api, "/healthz", client)               # subscribed: live messages reach it from now on
        for _, payload in HOSTILE_TWINS:             # and while it runs
            edge.client.publish(twin_topic("sub-evil", "tx2"), payload, qos=1).wait_for_publish(10)
        edge.client.publish(twin_topic("sub-good", "tx1"), encode_twin("sub-good", "tx1", 1_000, GOOD), qos=1,
                            retain=True).wait_for_publish(10)
        twin = _wait(api, "/v1/assets/sub-good/tx1", client)
        assert twin["points"] == GOOD
        assert _get(api, "/v1/assets/sub-evil/tx1", client)[0] == 404
        assert _get(api, "/v1/assets/sub-evil/tx2", client)[0] == 404
        # the retained one is delivered once; the live ones once each
        assert api.store.rejected_total == 1 + len(HOSTILE_TWINS)
        assert _get(api, "/healthz", client) == (200, {"status": "ok"})
        assert _get(api, "/livez", client) == (200, {"status": "ok"})
    edge.close()


def test_a_site_keeps_at_most_its_cap_of_twins(broker, pki, prometheus):
    edge = EdgePublisher(broker, pki, "edge-many")
    client = ssl.create_default_context(cafile=str(pki.ca))
    with _api(broker, pki, prometheus) as api:
        _wait(api, "/healthz", client)
        api.store.max_assets_per_site = 5
        for i in range(8):
            asset = f"a{i}"
            edge.client.publish(twin_topic("sub-many", asset), encode_twin("sub-many", asset, 1_000, GOOD),
                                qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while api.store.rejected.get("too_many_assets", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _get(api, "/v1/assets/sub-many", client)[1]["assets"] == ["a0", "a1", "a2", "a3", "a4"]
        assert api.store.rejected == {"too_many_assets": 3}
        # deleting one (empty retained payload) frees a place
        edge.client.publish(twin_topic("sub-many", "a0"), b"", qos=1, retain=True).wait_for_publish(10)
        edge.client.publish(twin_topic("sub-many", "a7"), encode_twin("sub-many", "a7", 1_000, GOOD),
                            qos=1).wait_for_publish(10)
        body = _wait(api, "/v1/assets/sub-many/a7", client)
        assert body["asset"] == "a7"
    edge.close()


def test_a_dead_consumer_fails_healthz_and_livez(broker, pki, prometheus):
    client = ssl.create_default_context(cafile=str(pki.ca))
    with _api(broker, pki, prometheus) as api:
        _wait(api, "/healthz", client)
        api._stop.set()                              # the consumer thread ends, as if it had died
        api._threads[0].join(5)
        assert _get(api, "/livez", client) == (503, {"status": "twin consumer not running"})
        assert _get(api, "/healthz", client)[0] == 503


def test_connections_beyond_the_cap_are_closed_and_handshake_failures_log_no_traceback(broker, pki, prometheus,
                                                                                       caplog):
    caplog.set_level(logging.DEBUG, logger="ingest.twin_api")
    client = ssl.create_default_context(cafile=str(pki.ca))
    api: TwinApi = _api(broker, pki, prometheus)
    api.max_connections = 3
    api._server.slots.__init__(3)                    # noqa: PLC2801 - same semaphore object, new cap
    with api:
        _wait(api, "/healthz", client)
        idle = [socket.create_connection(("127.0.0.1", api.port), timeout=5) for _ in range(3)]  # hold the slots
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", api.port), timeout=5)
        assert extra.recv(1) == b"", "a connection beyond the cap was not closed"
        extra.close()
        for sock in idle:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not TLS: each handshake fails
            sock.close()
        time.sleep(0.3)
        assert _get(api, "/healthz", client) == (200, {"status": "ok"})
    assert api._server.refused >= 1
    noisy = [r for r in caplog.records if r.levelno >= logging.INFO and r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_a_request_trickled_byte_by_byte_is_closed_at_its_deadline(broker, pki, prometheus):
    client = ssl.create_default_context(cafile=str(pki.ca))
    api: TwinApi = _api(broker, pki, prometheus)
    api.request_timeout_s = 1.0
    with api:
        _wait(api, "/healthz", client)
        raw = socket.create_connection(("127.0.0.1", api.port), timeout=5)
        with client.wrap_socket(raw, server_hostname="localhost") as sock:
            closed, elapsed = trickle(sock, b"GET /v1/sites HTTP/1.1\r\nHost: localhost\r\n", b"X-Slow: " + b"a" * 40)
        assert closed and elapsed < 3.0, f"closed: {closed} after {elapsed:.1f} s (deadline 1 s)"
        assert _get(api, "/healthz", client) == (200, {"status": "ok"})


def test_the_cap_and_the_deadline_come_from_the_config_and_refusals_are_counted(broker, pki, prometheus, tmp_path):
    """``[twin_api] max_connections = 1`` and ``request_timeout_s = 3`` reach the server ``build`` makes. (3 s,
    not 1: on a loaded machine the held connection must not meet its deadline before the second is accepted.)"""
    pair = pki.client("twin-api")
    config = parse_config({
        "broker": {"host": "127.0.0.1", "port": broker.tls_port, "ca": str(pki.ca), "cert": str(pair.cert),
                   "key": str(pair.key), "client_id": "twin-api"},
        "tsdb": {"remote_write_url": f"{prometheus.url}/api/v1/write"},
        "state": {"dir": str(tmp_path / "unused")},
        "twin_api": {"host": "127.0.0.1", "port": free_port(), "cert": str(pki.server.cert),
                     "key": str(pki.server.key), "max_connections": 1, "request_timeout_s": 3},
    })
    client = ssl.create_default_context(cafile=str(pki.ca))
    with build(config) as api:
        _wait(api, "/healthz", client)
        refused, expired, waited, tries = over_a_cap_of_one(
            api.port, lambda: api.registry.get_sample_value("ems_twin_api_refused_connections_total"))
        assert refused, "a connection beyond max_connections = 1 was not closed"
        assert expired and waited < 6.0, f"the held connection was closed: {expired}, after {waited:.1f} s (3 s deadline)"
        assert api.registry.get_sample_value("ems_twin_api_refused_connections_total") == tries   # 1 unless the held one was refused first
        _wait(api, "/healthz", client)               # the slot is free again
