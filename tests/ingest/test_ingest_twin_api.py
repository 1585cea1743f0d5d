"""The twin read API over real TLS: retained twin topics in, JSON out; PromQL passed through to Prometheus."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from devenv.mosquitto import free_port
from devenv.pki import make_pki
from ems_contract.telemetry import Reading, encode_twin, twin_topic
from ingest.mqtt import MqttLink, TlsFiles
from ingest.remote_write import RemoteWriter, Sample, series_labels
from ingest.twin_api import TWIN_SUBSCRIPTION, TwinApi
from ingest_support import EdgePublisher

pytestmark = pytest.mark.integration


def _api(broker, pki, prometheus, *, client_ca=None, client_cns=()) -> TwinApi:
    pair = pki.client("twin-api")
    link = MqttLink("127.0.0.1", broker.tls_port, TlsFiles(pki.ca, pair.cert, pair.key), "twin-api",
                    subscriptions=(TWIN_SUBSCRIPTION,), manual_ack=False, persistent=False)
    return TwinApi(link=link, query_url=prometheus.url, host="127.0.0.1", port=free_port(),
                   cert=pki.server.cert, key=pki.server.key, client_ca=client_ca, client_cns=client_cns)


def _get(api: TwinApi, path: str, context: ssl.SSLContext) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{api.port}{path}", context=context, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _wait(api: TwinApi, path: str, context: ssl.SSLContext, status: int = 200) -> dict:
    """The body of ``path`` once it answers ``status`` (10 s at most). A connection the server closes
    before answering (a listener at its connection cap frees the slot a moment after the held
    connection ends) is tried again, and is the error if it is still so at the deadline."""
    deadline = time.monotonic() + 10
    while True:
        try:
            got_status, body = _get(api, path, context)
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        if got_status == status or time.monotonic() > deadline:
            assert got_status == status, body
            return body
        time.sleep(0.1)


def test_latest_twin_state_and_promql_pass_through_over_tls(broker, pki, prometheus):
    edge = EdgePublisher(broker, pki, "edge-twin")
    points = {"oil_temp": {"value": 61.25, "unit": "degC", "quality": "good", "ts_ms": 1_000}}
    edge.client.publish(twin_topic("sub-07", "tx1"), encode_twin("sub-07", "tx1", 1_000, points), qos=1,
                        retain=True).wait_for_publish(10)      # retained before the API even starts
    now = int(time.time() * 1000)
    reading = Reading(1, now - 1000, "tx1", "oil_temp", 61.25, "degC")
    RemoteWriter(prometheus.remote_write_url).write([Sample(series_labels("sub-07", reading), reading.ts_ms,
                                                            reading.value, "sub-07", 1)])
    client = ssl.create_default_context(cafile=str(pki.ca))
    with _api(broker, pki, prometheus) as api:
        twin = _wait(api, "/v1/assets/sub-07/tx1", client)
        assert (twin["site"], twin["asset"], twin["points"]) == ("sub-07", "tx1", points)
        points2 = {"oil_temp": {"value": 62.0, "unit": "degC", "quality": "good", "ts_ms": 2_000}}
        edge.client.publish(twin_topic("sub-07", "tx1"), encode_twin("sub-07", "tx1", 2_000, points2), qos=1,
                            retain=True).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while _get(api, "/v1/assets/sub-07/tx1", client)[1]["ts_ms"] != 2_000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _get(api, "/v1/assets/sub-07/tx1", client)[1]["points"] == points2
        assert _get(api, "/v1/assets/sub-07", client) == (200, {"site": "sub-07", "assets": ["tx1"]})
        assert _get(api, "/v1/assets/sub-07/tx9", client)[0] == 404
        assert _get(api, "/v1/assets/bad%20site/tx1", client)[0] == 400
        assert _get(api, "/healthz", client) == (200, {"status": "ok"})

        query = urllib.parse.urlencode({"query": 'ems_reading{site="sub-07"}', "time": f"{now / 1000:.3f}"})
        status, body = _get(api, f"/v1/query?{query}", client)
        assert status == 200 and body["status"] == "success"
        [series] = body["data"]["result"]
        assert series["metric"]["asset"] == "tx1" and float(series["value"][1]) == 61.25
        status, body = _get(api, "/v1/query?query=sum(", client)
        assert status == 400 and body["errorType"] == "bad_data"      # Prometheus' own error, passed through
        assert _get(api, "/v1/query", client)[0] == 400
    edge.close()


def _client_context(pki, pair=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


def test_client_certificates_are_required_when_a_client_ca_is_set(broker, pki, prometheus, tmp_path):
    with _api(broker, pki, prometheus, client_ca=pki.ca) as api:
        anonymous = _client_context(pki)
        assert _wait(api, "/healthz", anonymous) == {"status": "ok"}          # the kubelet's probe has no certificate
        assert _get(api, "/livez", anonymous)[0] == 200
        for path in ("/v1/sites", "/v1/whoami", "/v1/assets/site-1", "/"):
            status, body = _get(api, path, anonymous)
            assert (status, body["error"]) == (403, "a client certificate is required (the API gateway's)"), path
        assert _get(api, "/v1/sites", _client_context(pki, pki.client("operator")))[0] == 200
        # A certificate of another CA fails the handshake itself.
        rogue = _client_context(pki, make_pki(tmp_path / "rogue", ca_name="rogue-ca").client("operator"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
            _get(api, "/v1/sites", rogue)
        untrusted = ssl.create_default_context()                   # the system trust store does not know our CA
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _get(api, "/healthz", untrusted)


def test_only_the_listed_client_cns_may_call(broker, pki, prometheus):
    with _api(broker, pki, prometheus, client_ca=pki.ca, client_cns=("ems-api-gateway",)) as api:
        gateway = _client_context(pki, pki.client("ems-api-gateway"))
        assert _wait(api, "/v1/sites", gateway) == {"sites": []}
        status, body = _get(api, "/v1/whoami", _client_context(pki, pki.client("site-1")))
        assert (status, body["error"]) == (403, "certificate CN 'site-1' may not call this API")
        assert _get(api, "/v1/sites", _client_context(pki))[0] == 403
    with pytest.raises(ValueError, match="client_cns needs client_ca"):
        _api(broker, pki, prometheus, client_cns=("ems-api-gateway",))


def test_twin_api_command_serves_over_tls(tmp_path, broker, pki, prometheus):
    from devenv.demo_pipeline import IngestProcess
    from devenv.mosquitto import wait_for_port

    port = free_port()
    proc = IngestProcess(tmp_path / "twin", broker=broker, pki=pki, prometheus=prometheus, client_id="twin-cli",
                         twin_api_port=port)
    proc.start("twin-api")
    try:
        wait_for_port(port, 15, proc.proc)
        context = ssl.create_default_context(cafile=str(pki.ca))
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=5) as resp:
                    assert json.load(resp) == {"status": "ok"}
                    break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, proc.tail()
                time.sleep(0.1)
        proc.proc.terminate()
        assert proc.proc.wait(10) == 0
    finally:
        proc.stop()


def test_a_tsdb_answer_above_the_cap_is_refused_not_relayed(broker, pki, prometheus):
    pair = pki.client("twin-api-capped")
    link = MqttLink("127.0.0.1", broker.tls_port, TlsFiles(pki.ca, pair.cert, pair.key), "twin-api-capped",
                    subscriptions=(TWIN_SUBSCRIPTION,), manual_ack=False, persistent=False)
    api = TwinApi(link=link, query_url=prometheus.url, host="127.0.0.1", port=free_port(), cert=pki.server.cert,
                  key=pki.server.key, max_query_answer_bytes=4096)
    client = ssl.create_default_context(cafile=str(pki.ca))
    with api:
        # 1,000 points of one series: about 20 KB of JSON from Prometheus, five times the cap.
        status, body = _get(api, "/v1/query_range?query=vector(1)&start=0&end=999&step=1", client)
        assert (status, body["errorType"]) == (502, "too_large") and "4096 bytes" in body["error"], body
        big = "label_replace(vector(1), \"x\", \"" + "y" * 5000 + "\", \"\", \"\")"
        status, body = _get(api, f"/v1/query?{urllib.parse.urlencode({'query': big})}", client)
        assert (status, body["errorType"]) == (502, "too_large"), body
        status, body = _get(api, "/v1/query_range?query=vector(1)&start=0&end=9&step=1", client)
        assert status == 200 and len(body["data"]["result"][0]["values"]) == 10
        assert _get(api, "/v1/query?query=sum(", client)[0] == 400            # the TSDB's own error, still relayed
