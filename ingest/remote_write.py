"""Readings → Prometheus remote-write 1.0 (protobuf ``WriteRequest`` + snappy block compression).

Every reading with a value becomes one float sample of the series::

    ems_reading{site="sub-07", asset="tx1", point="oil_temp", unit="degC", quality="good"}  61.25  @ts_ms

The timestamp is the reading's ``ts_ms`` (time of measurement), never rewritten.
Readings whose value is null (quality ``device_error``/``stale``) have no sample.

``RemoteWriter`` is the HTTP boundary: it owns ``http.client`` and maps every
outcome to success, ``TsdbUnavailable`` (retry later: connection errors,
timeouts, 429, 5xx, and 401/403/404-style answers of a misconfigured endpoint,
which say nothing about the data) or ``TsdbRejected`` (permanent: 400, 409,
413, 422, and the 500 "too old sample" that Prometheus 2.42 returns for samples
older than its out-of-order window). Prometheus applies a request atomically (one bad sample
rolls back the whole request), so the caller bisects a rejected batch to find
the bad samples (``ingest.worker``).

Managed stores (Mimir, Cortex, Thanos Receive, a managed Prometheus) want credentials and a
tenant: ``RemoteWriteAuth`` adds a bearer token or basic auth, read from files (Kubernetes
Secrets mounted as files), and an optional tenant header. The files are read whenever a
connection opens, and a 401/403 closes the connection, so a rotated Secret applies without a
restart. Credentials never appear in an error, a log line or a ``repr``.
"""

from __future__ import annotations

import base64
import http.client
import operator
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from itertools import repeat
from typing import Sequence

import cramjam
import numpy as np

from ems_contract.telemetry import Reading
from ingest.errors import TsdbRejected, TsdbUnavailable
from ingest.prompb import WriteRequest
from ingest.prompb_fast import serialize_write_request
from ingest.samples import Labels, Sample, SampleBatch, SampleColumns

__all__ = ["METRIC", "RemoteWriteAuth", "Sample", "labels_of", "series_labels", "encode_write_request", "RemoteWriter"]

METRIC = "ems_reading"
# Prometheus 2.42 answers these with HTTP 500 although retrying can never help.
_PERMANENT_5XX = ("too old sample", "out of bounds")
# Statuses that reject the samples themselves (bad data, duplicate timestamp, too large): bisect and dead-letter.
_REJECTS_DATA = frozenset({400, 409, 413, 422})


MAX_SECRET_BYTES = 4096
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


@dataclass(frozen=True)
class RemoteWriteAuth:
    """Credentials and tenant for the remote-write endpoint; at most one of bearer token and basic auth.

    | field | header |
    |---|---|
    | ``bearer_token_file`` | ``Authorization: Bearer <file's first line>`` (visible ASCII) |
    | ``basic_username`` + ``basic_password_file`` | ``Authorization: Basic base64(user:password)`` (UTF-8, no control characters) |
    | ``tenant`` | ``<tenant_header>: <tenant>``; the header defaults to ``X-Scope-OrgID`` (Mimir, Cortex; Thanos: ``THANOS-TENANT``) |

    A file holds the secret on its first line (one trailing newline is dropped), at most 4 KiB.
    """

    bearer_token_file: Path | None = None
    basic_username: str | None = None
    basic_password_file: Path | None = None
    tenant: str | None = None
    tenant_header: str = "X-Scope-OrgID"

    def __post_init__(self) -> None:
        if self.bearer_token_file is not None and (self.basic_username is not None or self.basic_password_file is not None):
            raise ValueError("bearer_token_file and basic auth exclude each other")
        if (self.basic_username is None) != (self.basic_password_file is None):
            raise ValueError("basic auth needs both basic_username and basic_password_file")
        if self.basic_username is not None and (":" in self.basic_username or _CONTROL.search(self.basic_username)
                                                or not 0 < len(self.basic_username) <= 256):
            raise ValueError("basic_username must be 1..256 characters without ':' or control characters")
        if self.tenant is not None and not (_VISIBLE_ASCII.fullmatch(self.tenant) and len(self.tenant) <= 256):
            raise ValueError("tenant must be 1..256 visible ASCII characters")
        if not _HEADER_NAME.fullmatch(self.tenant_header):
            raise ValueError("tenant_header must be an HTTP header name")

    def headers(self) -> dict[str, str]:
        """The headers to send, with the secrets read now. Raises TsdbUnavailable naming the file, never its content."""
        out: dict[str, str] = {}
        if self.bearer_token_file is not None:
            token = _read_secret(self.bearer_token_file, "bearer_token_file")
            if not _VISIBLE_ASCII.fullmatch(token):
                raise TsdbUnavailable(f"bearer_token_file {self.bearer_token_file}: the token must be visible ASCII on one line")
            out["Authorization"] = f"Bearer {token}"
        if self.basic_username is not None and self.basic_password_file is not None:
            password = _read_secret(self.basic_password_file, "basic_password_file")
            if _CONTROL.search(password):
                raise TsdbUnavailable(f"basic_password_file {self.basic_password_file}: the password has control characters")
            pair = base64.b64encode(f"{self.basic_username}:{password}".encode()).decode("ascii")
            out["Authorization"] = f"Basic {pair}"
        if self.tenant is not None:
            out[self.tenant_header] = self.tenant
        return out


def _read_secret(path: Path, field: str) -> str:
    """The first line of a secret file: bounded, UTF-8, not empty. The content never reaches a message."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise TsdbUnavailable(f"{field} {path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_SECRET_BYTES:
        raise TsdbUnavailable(f"{field} {path}: larger than {MAX_SECRET_BYTES} bytes")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TsdbUnavailable(f"{field} {path}: not UTF-8") from None
    if not text or "\n" in text or "\r" in text:
        raise TsdbUnavailable(f"{field} {path}: must hold the secret on exactly one non-empty line")
    return text


_LABELS, _TS, _VALUE = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)
_FLOAT, _INT = {float}, {int}


def series_labels(site: str, reading: Reading) -> Labels:
    """The label set of a reading's series, sorted by name as remote-write requires."""
    return labels_of(site, reading.asset, reading.point, reading.quality, reading.unit)


def labels_of(site: str, asset: str, point: str, quality: str, unit: str) -> Labels:
    """The label set of one series, sorted by name as remote-write requires."""
    return (("__name__", METRIC), ("asset", asset), ("point", point), ("quality", quality), ("site", site),
            ("unit", unit))


def encode_write_request(samples: Sequence[Sample]) -> bytes:
    """The snappy-compressed protobuf body for ``samples`` (a list of ``Sample`` or a ``SampleBatch``):
    one time series per label set, each with its samples in time order (stable). A list's series
    come in the order their label sets first appear; a batch's in the order of its parts' label
    tables (Prometheus takes series in any order).

    Raises ValueError, TypeError, OverflowError or UnicodeError for a sample protobuf cannot carry.
    """
    columns = _request_columns(samples)
    if columns is None:
        return _encode_one_by_one(samples)
    series, sid, ts, values = columns
    order = np.lexsort((ts, sid))                          # by series, then time; stable
    body = serialize_write_request(series, sid[order], ts[order], values[order])
    return bytes(cramjam.snappy.compress_raw(body))


def _request_columns(samples: Sequence[Sample]) -> tuple[list[Labels], np.ndarray, np.ndarray, np.ndarray] | None:
    """``(series, series index, ts_ms, value)`` of every sample, the series being the distinct label
    sets; None when there is no sample, or a row's value is not exactly a float or its time not
    exactly an int (numpy would turn a str or a bool into a number: the generated classes then
    decide, with their own checks and errors).

    Each sample is a key into one table of label sets: a ``SampleColumns`` brings its own table
    (placed once per request however many messages share it) and its keys ``p * width + q``; the
    rows of every list part share one table of their distinct label objects. The columns are
    joined by list.extend and turned into arrays once per request.
    """
    parts = samples.parts if isinstance(samples, SampleBatch) else [samples]
    table: list[Labels] = []
    placed: dict[int, int] = {}              # id(SampleColumns.table) → its offset (the parts keep it alive)
    p: list[int] = []
    q: list[int] = []
    dt: list[int] = []
    values: list[float] = []
    row_labels: list[Labels] = []
    counts, widths, offsets, bases, rows = [], [], [], [], []
    for part in parts:
        if isinstance(part, SampleColumns):
            offset = placed.get(id(part.table))
            if offset is None:
                offset = placed[id(part.table)] = len(table)
                table.extend(part.table)
            p.extend(part.p)
            q.extend(part.q)
            dt.extend(part.dt)
            values.extend(part.values)
            widths.append(part.width)
            offsets.append(offset)
            bases.append(part.base_ms)
            rows.append(False)
        else:
            row_values, stamps = list(map(_VALUE, part)), list(map(_TS, part))
            if set(map(type, row_values)) != _FLOAT or set(map(type, stamps)) != _INT:
                return None
            row_labels.extend(map(_LABELS, part))
            p.extend(repeat(0, len(stamps)))             # the keys of rows are set below
            q.extend(repeat(0, len(stamps)))
            dt.extend(stamps)
            values.extend(row_values)
            widths.append(0)
            offsets.append(0)
            bases.append(0)
            rows.append(True)
        counts.append(len(part))
    if not p:
        return None
    n = len(p)
    keys = (np.fromiter(p, np.intp, n) * np.repeat(np.array(widths, np.intp), counts) + np.fromiter(q, np.intp, n)
            + np.repeat(np.array(offsets, np.intp), counts))
    ts = np.fromiter(dt, np.int64, n) + np.repeat(np.array(bases, np.int64), counts)     # OverflowError beyond int64
    if row_labels:
        # distinct label objects first (a label tuple's hash is recomputed on every lookup, an int's
        # is not); equal tuples become one series below
        first = dict(zip(map(id, row_labels), row_labels))
        position = {key: i for i, key in enumerate(first, len(table))}
        table.extend(first.values())
        keys[np.repeat(np.array(rows, bool), counts)] = np.fromiter(map(position.__getitem__, map(id, row_labels)),
                                                                    np.intp, len(row_labels))
    used = np.zeros(len(table), bool)
    used[keys] = True
    entries = np.flatnonzero(used)               # in table order: a list's label sets as they first appear
    index: dict[Labels, int] = {}
    lookup = np.zeros(len(table), np.intp)
    lookup[entries] = [index.setdefault(table[entry], len(index)) for entry in entries.tolist()]
    return list(index), lookup[keys], ts, np.fromiter(values, np.float64, n)


def _encode_one_by_one(samples: Sequence[Sample]) -> bytes:
    """``encode_write_request`` through the generated classes (one message object per sample)."""
    by_series: dict[Labels, list[Sample]] = {}
    for sample in samples:
        by_series.setdefault(sample.labels, []).append(sample)
    request = WriteRequest()
    for labels, items in by_series.items():
        series = request.timeseries.add()
        for name, value in labels:
            series.labels.add(name=name, value=value)
        for item in sorted(items, key=lambda s: s.ts_ms):
            series.samples.add(value=item.value, timestamp=item.ts_ms)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


class RemoteWriter:
    """POSTs write requests to one remote-write URL over a kept-alive HTTP(S) connection."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, ca: Path | None = None,
                 user_agent: str = "ems-ingest/0.1", auth: RemoteWriteAuth | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"remote write URL must be http(s)://host[:port]/path (got {url!r})")
        self.url = url
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port or (443 if self._https else 80)
        self._path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        self._timeout = timeout_s
        self._ssl = ssl.create_default_context(cafile=str(ca) if ca else None) if self._https else None
        self._headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                         "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": user_agent}
        self._auth = auth
        self._auth_headers: dict[str, str] = {}
        self._conn: http.client.HTTPConnection | None = None
        self._reused = False

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            # Credentials are read per connection: a rotated Secret applies from the next one.
            self._auth_headers = self._auth.headers() if self._auth is not None else {}
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                         context=self._ssl)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def write(self, samples: Sequence[Sample]) -> float:
        """Write ``samples`` in one request; returns the seconds it took. Raises TsdbUnavailable/TsdbRejected."""
        try:
            body = encode_write_request(samples)
        except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
            # A sample protobuf cannot carry (validation should make this unreachable): permanent for
            # these samples, so the caller's bisection isolates and dead-letters the culprit.
            raise TsdbRejected(f"sample cannot be encoded: {type(exc).__name__}: {str(exc)[:200]}") from exc
        started = time.perf_counter()
        try:
            status, detail = self._post(body)
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            if not self._reused:
                self.close()
                raise TsdbUnavailable("connection closed by the TSDB") from None
            # a kept-alive connection the server closed while idle: one immediate retry on a fresh one
            self.close()
            try:
                status, detail = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise TsdbUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TsdbUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return time.perf_counter() - started
        if status in _REJECTS_DATA or (status >= 500 and any(marker in detail for marker in _PERMANENT_5XX)):
            raise TsdbRejected(detail or "no detail", status)
        # 429, 5xx, and the 4xx of a misconfigured endpoint (401, 403, 404, ...): the data is fine,
        # so keep it and retry rather than dead-letter everything until someone fixes the config.
        if status in (401, 403):
            self.close()  # the retry opens a new connection, with the credentials read again
        raise TsdbUnavailable(detail or "no detail", status)

    def _post(self, body: bytes) -> tuple[int, str]:
        self._reused = self._conn is not None
        conn = self._connection()
        conn.request("POST", self._path, body=body, headers={**self._headers, **self._auth_headers})
        resp = conn.getresponse()
        detail = resp.read(2048).decode(errors="replace").strip()
        if resp.will_close:
            self.close()
        return resp.status, detail

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
