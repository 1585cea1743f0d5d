"""The operator page served by the twin API: its endpoints and headers, and the page itself in a real headless Chromium.

The browser test runs the whole pipeline (``devenv.live_pipeline``) with a real Alertmanager,
raises an alert during the test, stops the edge agent so the values hold still, then checks
that the page shows every point of tx1 with the value the simulator's reading has in the TSDB,
the thermal state, a trend plot and the alert, without a console error; it saves a screenshot
(path printed; also copied to out/operator-page.png).
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as paho
import pytest
from hypothesis import given, strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from browser_support import AlertmanagerProcess, HeadlessChromium
from devenv.live_pipeline import SITE, LivePipeline
from ems_contract.telemetry import encode_twin, twin_topic
from ingest import operator_page
from ingest.operator_page import PageError, range_query_params

ROOT = Path(__file__).resolve().parents[2]


def _range(**values: str) -> dict[str, list[str]]:
    return {k: [v] for k, v in values.items()}


def test_range_query_params_name_the_field_and_value() -> None:
    ok = _range(query="up", start="100", end="1900", step="15")
    assert range_query_params(ok) == {"query": "up", "start": "100", "end": "1900", "step": "15"}
    cases = [
        ({**ok, "step": ["0"]}, r"step must be above 0 \(got '0'\)"),
        ({**ok, "start": ["yesterday"]}, r"start must be a number .* \(got 'yesterday'\)"),
        ({**ok, "end": ["nan"]}, r"end must be finite \(got 'nan'\)"),
        ({**ok, "end": ["50"]}, r"end must not be before start 100 \(got '50'\)"),
        ({**ok, "step": ["1"]}, r"step gives 1800 points; at most 1100 are served \(got '1'\)"),
        ({k: v for k, v in ok.items() if k != "query"}, r"query must be given exactly once \(got \[\]\)"),
        ({**ok, "query": ["up", "up"]}, r"query must be given exactly once"),
    ]
    for params, message in cases:
        with pytest.raises(PageError, match=message):
            range_query_params(params)


@given(st.dictionaries(st.sampled_from(["query", "start", "end", "step", "x"]),
                       st.lists(st.text(max_size=30), max_size=3)))
def test_range_query_params_raise_only_page_errors(params: dict[str, list[str]]) -> None:
    try:
        range_query_params(params)
    except PageError:
        pass


def test_static_files_are_the_listed_ones_and_the_vendored_library_keeps_its_licence() -> None:
    files = operator_page.static_files()
    assert set(files) == set(operator_page.STATIC)
    assert b"MIT License" in files["/ui/vendor/uplot/LICENSE"][0]
    assert b"innerHTML" not in files["/ui/app.js"][0]       # data is rendered with textContent only


def test_no_alertmanager_means_no_alerts() -> None:
    assert operator_page.firing_alerts(None, 1.0) == {"configured": False, "alerts": []}


# --- the running page -------------------------------------------------------------------------------------------


def _get(base: str, path: str, context: ssl.SSLContext) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"{base}{path}", context=context, timeout=10) as resp:  # nosec B310 # test's 127.0.0.1
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def page_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LivePipeline, AlertmanagerProcess]]:
    workdir = tmp_path_factory.mktemp("operator-page")
    alertmanager = AlertmanagerProcess(workdir / "alertmanager").start()
    try:
        with LivePipeline(workdir, alertmanager_url=alertmanager.url) as live:
            live.wait_for_data()
            yield live, alertmanager
    finally:
        alertmanager.stop()


@pytest.mark.integration
def test_page_endpoints_and_headers(page_stack: tuple[LivePipeline, AlertmanagerProcess]) -> None:
    live, _ = page_stack
    context = ssl.create_default_context(cafile=str(live.pki.ca))
    status, headers, body = _get(live.twin_api_url, "/", context)
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/ui/app.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/ui/../ingest/twin_api.py", "/ui/%2e%2e/config.py", "/ui/app.js.map", "/index.html"):
        assert _get(live.twin_api_url, path, context)[0] == 404, path
    status, headers, body = _get(live.twin_api_url, "/v1/sites", context)
    assert status == 200 and SITE in json.loads(body)["sites"] and "Content-Security-Policy" in headers
    status, _, body = _get(live.twin_api_url, "/v1/query_range?query=up&start=0&end=100000&step=1", context)
    assert status == 400 and "step gives 100000 points" in json.loads(body)["error"]
    end = time.time()
    status, _, body = _get(live.twin_api_url, f"/v1/query_range?query=up&start={end - 60}&end={end}&step=5", context)
    assert status == 200 and json.loads(body)["data"]["result"], body[:300]
    status, _, body = _get(live.twin_api_url, "/v1/alerts", context)
    assert status == 200 and json.loads(body)["configured"] is True


def _publish_hostile_twin(live: LivePipeline) -> None:
    """A site's retained twin whose unit is markup and whose point shows a PLC fault: the page shows both as text."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="hostile-site", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", live.broker.plain_port)
    client.loop_start()
    points = {"p1": {"value": 1.5, "unit": "<img src=x onerror=window.pwned=1>", "quality": "good", "ts_ms": 1_000,
                     "fault": {"code": "E04", "text": "over-voltage <b>", "severity": "critical", "since_ms": 1_000}}}
    client.publish(twin_topic("zz-hostile", "a1"), encode_twin("zz-hostile", "a1", 1_000, points), qos=1,
                   retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


_PAGE_STATE = """JSON.stringify({
  status: document.getElementById('status').textContent,
  title: document.getElementById('asset-title').textContent,
  sites: [...document.querySelectorAll('#sites button')].map(b => b.textContent),
  rows: [...document.querySelectorAll('#points tbody tr')].map(tr => [...tr.cells].map(td => td.textContent)),
  thermal: [...document.querySelectorAll('#thermal-values dd[data-field]')].map(dd => dd.dataset.field),
  alerts: [...document.querySelectorAll('#alerts li')].map(li => li.dataset.alertname || li.textContent),
  faults: [...document.querySelectorAll('#faults li')].map(li => li.textContent),
  canvas: !!document.querySelector('#plot canvas'),
  plotted: [...document.querySelectorAll('#plot .u-legend .u-series .u-label')].map(l => l.textContent),
  images: document.images.length, pwned: !!window.pwned,
})"""


def _number(text: str) -> float | None:
    return None if text == "—" else float(text.replace(",", ""))


@pytest.mark.integration
def test_page_in_headless_chromium(page_stack: tuple[LivePipeline, AlertmanagerProcess], tmp_path: Path) -> None:
    live, alertmanager = page_stack
    alertmanager.raise_alert({"alertname": "EmsPlcFaultCode", "severity": "critical", "site": SITE,
                              "asset": "tx1", "device": "tx1-relay", "code": "E04"},
                             {"summary": "tx1-relay reports E04 over-voltage"})
    _publish_hostile_twin(live)
    # Hold the values still: the agent flushes its spool on SIGTERM; then the ingest and twin settle.
    live.agent.stop()
    time.sleep(3)
    browser = HeadlessChromium(tmp_path / "chromium", trusted_cert=live.pki.server.cert).start()
    try:
        browser.navigate(f"{live.twin_api_url}/#site={SITE}&asset=tx1")
        state = json.loads(browser.wait_for(
            f"(() => {{ const s = {_PAGE_STATE}; const o = JSON.parse(s);"
            " return o.status.startsWith('updated') && o.rows.length && o.canvas && o.thermal.length"
            " && o.alerts.includes('EmsPlcFaultCode') ? s : ''; })()"))
        shot = browser.screenshot(tmp_path / "operator-page.png")
        print(f"\noperator page screenshot: {shot}")
        (ROOT / "out").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "out" / "operator-page.png")
        browser.navigate(f"{live.twin_api_url}/#site=zz-hostile&asset=a1")
        # The asset's own faults are drawn with its rows (the site's TSDB faults follow), so rows mean faults too.
        hostile = json.loads(browser.wait_for(
            f"(() => {{ const s = {_PAGE_STATE}; const o = JSON.parse(s);"
            " return o.title === 'zz-hostile / a1' && o.rows.length ? s : ''; })()"))
        errors = list(browser.errors)
    finally:
        browser.stop()

    assert state["status"].startswith("updated"), state["status"]
    assert SITE in state["sites"]
    assert {"top_oil_degC", "hot_spot_degC", "ageing_rate", "loss_of_life_h"} <= set(state["thermal"])
    # Every value on the page is the simulator's latest reading of that point as the TSDB stored it.
    client = live.prometheus.client()
    stored = {}
    for item in client.query(f'last_over_time(ems_reading{{site="{SITE}", asset="tx1"}}[10m])'):
        point = item["metric"]["point"]
        ts = client.query(f'timestamp(last_over_time(ems_reading{{site="{SITE}", asset="tx1", point="{point}", '
                          f'quality="{item["metric"]["quality"]}"}}[10m]))')
        stored.setdefault(point, []).append((float(ts[0]["value"][1]), float(item["value"][1]), item["metric"]))
    shown = {row[0]: row for row in state["rows"]}
    assert set(shown) == set(stored), (sorted(shown), sorted(stored))
    for point, samples in stored.items():
        _, value, labels = max(samples, key=lambda s: s[0])
        name, text, unit, quality, _ = shown[point]
        assert quality.split()[0] == labels["quality"] and unit == labels.get("unit", ""), shown[point]
        assert _number(text) == pytest.approx(value, abs=5e-4, rel=1e-3), (point, text, value)
    assert {"oil_temp", "winding_temp", "ambient_temp"} <= set(state["plotted"]), state["plotted"]
    assert "EmsPlcFaultCode" in state["alerts"]
    # The hostile unit is text on the page, not an element.
    assert hostile["rows"][0][2] == "<img src=x onerror=window.pwned=1>" and hostile["images"] == 0
    assert not hostile["pwned"]
    assert hostile["rows"][0][3] == "good E04" and hostile["faults"] == ["E04 over-voltage <b>a1 p1"], hostile
    assert errors == [], errors


def test_alertmanager_url_is_checked_by_the_config_parser() -> None:
    from ingest.config import parse_config
    from ingest.errors import ConfigError

    def parsed(url: str):
        raw = {"broker": {"host": "mqtt", "tls": False}, "tsdb": {"remote_write_url": "http://tsdb:9090/api/v1/write"},
               "state": {"dir": "/tmp"}, "twin_api": {"cert": "c.crt", "key": "c.key", "alertmanager_url": url}}
        return parse_config(raw, check_files=False)

    assert parsed("http://alertmanager.ems.svc:9093").twin_api.alertmanager_url == "http://alertmanager.ems.svc:9093"
    with pytest.raises(ConfigError, match=r"twin_api\.alertmanager_url.*file:///etc/passwd"):
        parsed("file:///etc/passwd")


class _FakeAlertmanager:
    """127.0.0.1 HTTP server answering /api/v2/alerts with a fixed body (to test hostile answers)."""

    def __init__(self, body: bytes) -> None:
        import http.server
        import threading

        payload = body

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("body, error", [
    (b"{}", "not a list of alerts"),
    (b"not json", "Expecting value"),
    (b" " * (operator_page.MAX_ALERTS_BYTES + 1), "more than"),
])
def test_a_bad_alertmanager_answer_is_an_error_not_a_crash(body: bytes, error: str) -> None:
    fake = _FakeAlertmanager(body)
    try:
        with pytest.raises(ValueError, match=error):
            operator_page.firing_alerts(fake.url, 5.0)
    finally:
        fake.close()


def test_only_string_labels_and_known_annotations_of_well_formed_alerts_pass() -> None:
    alerts = [
        {"labels": {"alertname": "A", "severity": "critical", "n": 5, "x": "y" * 5000}, "startsAt": "2026-12-06T10:00:00Z",
         "annotations": {"summary": "s", "secret_note": "dropped", "runbook": 7}, "fingerprint": "f1"},
        {"labels": "not a dict"}, 42, {"labels": {"alertname": "B"}, "startsAt": 5},
    ]
    fake = _FakeAlertmanager(json.dumps(alerts + [{"labels": {"alertname": f"C{i}"}} for i in range(600)]).encode())
    try:
        got = operator_page.firing_alerts(fake.url, 5.0)
    finally:
        fake.close()
    assert got["configured"] is True and len(got["alerts"]) == operator_page.MAX_ALERTS - 2
    first = got["alerts"][0]
    assert first == {"labels": {"alertname": "A", "severity": "critical", "x": "y" * operator_page.MAX_LABEL_CHARS},
                     "annotations": {"summary": "s"}, "startsAt": "2026-12-06T10:00:00Z", "fingerprint": "f1"}
    assert {"labels": {"alertname": "B"}, "annotations": {}, "startsAt": "", "fingerprint": ""} in got["alerts"]
