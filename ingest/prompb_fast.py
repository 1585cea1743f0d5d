"""A ``WriteRequest`` serialised by columns: the bytes ``ingest.prompb.WriteRequest`` would write.

The generated classes add one ``Sample`` message per sample (one upb call and one Python object
each); here the samples of a request go through numpy as columns instead: every sample is the
fixed-layout record ::

    0x12 <len>                    TimeSeries.samples (field 2), length-delimited; len < 128 always
      0x09 <8 bytes LE double>    Sample.value (field 1), left out when its bits are zero (+0.0)
      0x10 <varint of the int64>  Sample.timestamp (field 2), left out when 0

built for all samples at once and masked down to the bytes that are written (no mask when every
record has the same layout, the usual request: every value non-zero and every timestamp a
varint of one width). What is left per
series (its labels, cached, and its length prefix) is Python. The omissions are proto3's
implicit presence as upb applies it: ``-0.0`` has non-zero bits and is written, ``+0.0`` is not;
a negative timestamp is a 10-byte varint. ``tests/ingest/test_prompb_fast.py`` checks the bytes
against the generated encoder, hostile values included.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["serialize_write_request", "labels_bytes"]

Labels = tuple[tuple[str, str], ...]

_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)             # the 7-bit groups of a 64-bit varint
_GROUP = np.arange(10)
_RECORD = 22                                                # 2 + 9 (value) + 1 + 10 (timestamp) bytes
_CONTINUED = [np.array([0x80] * (w - 1) + [0], np.uint8) if w else None for w in range(11)]   # per varint width
_MAX_CACHED_LABELS = 100_000
_label_cache: dict[Labels, bytes] = {}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


def labels_bytes(labels: Labels) -> bytes:
    """``TimeSeries.labels`` (field 1) of one series; empty strings are left out, as proto3 does.

    Raises TypeError for a name or value that is not a str, UnicodeEncodeError for one that is not
    valid Unicode (a lone surrogate)."""
    cached = _label_cache.get(labels)
    if cached is not None:
        return cached
    parts = []
    for name, value in labels:
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"label names and values must be str (got {type(name).__name__}, {type(value).__name__})")
        name_b, value_b = name.encode("utf-8"), value.encode("utf-8")
        label = (_field(b"\x0a", name_b) if name_b else b"") + (_field(b"\x12", value_b) if value_b else b"")
        parts.append(_field(b"\x0a", label))
    encoded = b"".join(parts)
    if len(_label_cache) >= _MAX_CACHED_LABELS:
        _label_cache.clear()
    _label_cache[labels] = encoded
    return encoded


def serialize_write_request(series: Sequence[Labels], sid: np.ndarray, ts: np.ndarray,
                            values: np.ndarray) -> bytes:
    """The serialised ``WriteRequest`` of samples ``i`` = (``series[sid[i]]``, ``ts[i]``, ``values[i]``).

    ``sid`` (intp), ``ts`` (int64) and ``values`` (float64) must already be ordered as the request
    lists them: by series index ascending, then as the samples appear within a series.
    """
    n = len(ts)
    u = ts.view(np.uint64)
    if n:
        low, width = int(u.min()), _varint_width(int(u.max()))
        if low and _varint_width(low) == width and np.count_nonzero(values.view(np.uint64)) == n:
            return _serialize_uniform(series, sid, u, values, width)
    groups = u[:, None] >> _SHIFTS                                         # (n, 10)
    width = 1 + np.count_nonzero(groups[:, 1:], axis=1)                   # varint bytes: 1..10
    has_value = values.view(np.uint64) != 0
    has_ts = u != 0
    records = np.empty((n, _RECORD), np.uint8)
    records[:, 0] = 0x12
    records[:, 1] = has_value * 9 + has_ts * (1 + width)
    records[:, 2] = 0x09
    records[:, 3:11] = values.astype("<f8").view(np.uint8).reshape(n, 8)
    records[:, 11] = 0x10
    records[:, 12:] = (groups & 0x7F).astype(np.uint8) | (_GROUP < (width - 1)[:, None]) * np.uint8(0x80)
    keep = np.empty((n, _RECORD), bool)
    keep[:, :2] = True
    keep[:, 2:11] = has_value[:, None]
    keep[:, 11] = has_ts
    keep[:, 12:] = has_ts[:, None] & (_GROUP < width[:, None])
    # the byte offset where each series' samples end: sid is sorted, so series k is one block
    ends = np.cumsum(2 + records[:, 1].astype(np.int64))[np.cumsum(np.bincount(sid, minlength=len(series))) - 1]
    return _join_series(series, records[keep].tobytes(), ends)


def _varint_width(n: int) -> int:
    """Bytes of the varint of ``n`` (0 <= n < 2**64): 1..10."""
    return max(1, (n.bit_length() + 6) // 7)


def _serialize_uniform(series: Sequence[Labels], sid: np.ndarray, u: np.ndarray, values: np.ndarray,
                       width: int) -> bytes:
    """``serialize_write_request`` when every record has the same layout, the usual request: every
    value's bits non-zero and every timestamp a non-zero varint of ``width`` bytes. The records are
    then one (n, 12 + width) array written as it is, with no mask to build and apply."""
    n = len(u)
    size = 12 + width
    records = np.empty((n, size), np.uint8)
    records[:, 0] = 0x12
    records[:, 1] = size - 2
    records[:, 2] = 0x09
    records[:, 3:11] = values.astype("<f8").view(np.uint8).reshape(n, 8)
    records[:, 11] = 0x10
    records[:, 12:] = ((u[:, None] >> _SHIFTS[:width]) & 0x7F).astype(np.uint8) | _CONTINUED[width]
    return _join_series(series, records.tobytes(), np.cumsum(np.bincount(sid, minlength=len(series))) * size)


def _join_series(series: Sequence[Labels], data: bytes, ends: np.ndarray) -> bytes:
    """The ``TimeSeries`` fields: series ``k`` is its labels and the sample records ``data[ends[k-1]:ends[k]]``."""
    parts = []
    start = 0
    for labels, end in zip(series, ends.tolist()):
        parts.append(_field(b"\x0a", labels_bytes(labels) + data[start:end]))
        start = end
    return b"".join(parts)
