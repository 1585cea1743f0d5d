"""Remote-write encoding (protobuf + snappy) and the mapping of HTTP outcomes to retry/permanent."""

from __future__ import annotations

import http.server
import threading
from typing import ClassVar

import cramjam
import pytest

from devenv.mosquitto import free_port
from ems_contract.telemetry import Reading
from ingest.errors import TsdbRejected, TsdbUnavailable
from ingest.metrics import RateWindow
from ingest.prompb import WriteRequest
from ingest.remote_write import RemoteWriter, Sample, encode_write_request, series_labels


def _sample(seq: int, ts: int, value: float, point: str = "oil_temp") -> Sample:
    reading = Reading(seq, ts, "tx1", point, value, "degC")
    return Sample(series_labels("s1", reading), ts, value, "s1", seq)


def test_write_request_groups_series_sorts_samples_and_keeps_timestamps() -> None:
    body = encode_write_request([_sample(2, 2000, 2.5), _sample(1, 1000, 1.5), _sample(3, 1500, 9.0, "load")])
    request = WriteRequest()
    request.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
    series = {tuple((l.name, l.value) for l in ts.labels): [(s.timestamp, s.value) for s in ts.samples]
              for ts in request.timeseries}
    assert series == {
        (("__name__", "ems_reading"), ("asset", "tx1"), ("point", "oil_temp"), ("quality", "good"), ("site", "s1"),
         ("unit", "degC")): [(1000, 1.5), (2000, 2.5)],
        (("__name__", "ems_reading"), ("asset", "tx1"), ("point", "load"), ("quality", "good"), ("site", "s1"),
         ("unit", "degC")): [(1500, 9.0)],
    }


class _Answers(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[tuple[int, bytes]]] = []     # shared by the per-request handler instances
    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(dict(self.headers))
        status, body = type(self).answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tsdb_stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Answers.seen.clear()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, body, error", [
    (204, b"", None),
    (503, b"tsdb overloaded", TsdbUnavailable),
    (500, b"some storage error", TsdbUnavailable),
    (429, b"slow down", TsdbUnavailable),
    (500, b"too old sample\n", TsdbRejected),           # Prometheus 2.42's answer beyond the OOO window
    (400, b"out of bounds", TsdbRejected),
    (400, b"duplicate sample for timestamp", TsdbRejected),
    (413, b"request too large", TsdbRejected),
    (401, b"unauthorized", TsdbUnavailable),          # a config problem: keep the data and retry
    (404, b"remote write receiver needs to be enabled", TsdbUnavailable),
])
def test_http_outcomes_map_to_retry_or_permanent(tsdb_stub, status: int, body: bytes, error) -> None:
    _Answers.answers = [(status, body)]
    writer = RemoteWriter(f"http://127.0.0.1:{tsdb_stub.server_port}/api/v1/write", timeout_s=2)
    if error is None:
        assert writer.write([_sample(1, 1000, 1.0)]) >= 0
    else:
        with pytest.raises(error) as info:
            writer.write([_sample(1, 1000, 1.0)])
        assert info.value.status == status and body.decode().strip() in str(info.value)
    headers = _Answers.seen[-1]
    assert headers["Content-Encoding"] == "snappy"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    writer.close()


def test_connection_refused_is_transient() -> None:
    writer = RemoteWriter(f"http://127.0.0.1:{free_port()}/api/v1/write", timeout_s=1)
    with pytest.raises(TsdbUnavailable, match="ConnectionRefusedError"):
        writer.write([_sample(1, 1000, 1.0)])


def test_rate_window_averages_over_the_last_minute() -> None:
    now = [1000.0]
    window = RateWindow(60, clock=lambda: now[0])
    now[0] += 10
    for _ in range(10):
        window.add(5)
    assert window.rate() == pytest.approx(50 / 10)      # young process: divide by its age
    now[0] += 100
    window.add(120)
    assert window.rate() == pytest.approx(120 / 60)     # the first 50 fell out of the window


class _ClosesAfterOne(http.server.BaseHTTPRequestHandler):
    """Answers HTTP/1.1 keep-alive style, then drops the connection (as an idle timeout would)."""

    protocol_version = "HTTP/1.1"
    requests = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        self.send_response(204)
        self.end_headers()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_kept_alive_connection_closed_by_the_server_is_retried_once_at_once() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ClosesAfterOne)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        writer = RemoteWriter(f"http://127.0.0.1:{server.server_port}/api/v1/write", timeout_s=2)
        for _ in range(3):
            writer.write([_sample(1, 1000, 1.0)])          # no TsdbUnavailable for a stale connection
        assert _ClosesAfterOne.requests == 3
    finally:
        server.shutdown()
        server.server_close()
