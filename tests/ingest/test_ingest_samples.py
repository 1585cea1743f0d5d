"""A request's samples kept as columns (``SampleColumns`` in a ``SampleBatch``) read as the same
``Sample`` tuples and encode to a request holding exactly those samples, as the generated classes do."""

from __future__ import annotations

import math

import cramjam
from hypothesis import given, settings
from hypothesis import strategies as st

from ems_contract.telemetry import QUALITIES
from ingest.prompb import WriteRequest
from ingest.remote_write import _encode_one_by_one, encode_write_request, labels_of
from ingest.samples import Sample, SampleBatch, SampleColumns

WIDTH = len(QUALITIES)
values = st.floats(allow_nan=False) | st.sampled_from([0.0, -0.0, 5e-324, -1.7976931348623157e308])


def _series(body: bytes) -> dict[tuple, list[tuple[int, float]]]:
    """A request's series by label set, each with its (ts, value) in the request's order."""
    request = WriteRequest()
    request.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
    out: dict[tuple, list[tuple[int, float]]] = {}
    for ts in request.timeseries:
        labels = tuple((label.name, label.value) for label in ts.labels)
        assert labels not in out, f"series {labels} written twice"
        out[labels] = [(s.timestamp, s.value) for s in ts.samples]
    return out


@st.composite
def columns(draw: st.DrawFn, tables: list[list]) -> SampleColumns:
    table = draw(st.sampled_from(tables))
    n = draw(st.integers(1, 60))
    points = len(table) // WIDTH
    seq_first = draw(st.integers(1, 2**40))
    return SampleColumns(table, WIDTH, draw(st.lists(st.integers(0, points - 1), min_size=n, max_size=n)),
                         draw(st.lists(st.integers(0, WIDTH - 1), min_size=n, max_size=n)),
                         draw(st.integers(0, 2**62)), draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)),
                         draw(st.lists(values, min_size=n, max_size=n)), "s1", range(seq_first, seq_first + n))


@st.composite
def batches(draw: st.DrawFn) -> SampleBatch:
    """Parts of rows and of columns; tables shared between parts, and equal label sets in different tables."""
    names = draw(st.lists(st.tuples(st.sampled_from(["tx1", "tx2"]), st.sampled_from(["a", "b", "c"])),
                          min_size=1, max_size=4, unique=True))
    tables = [[labels_of("s1", asset, point, quality, "kW") for asset, point in names for quality in QUALITIES]
              for _ in range(2)]
    parts: list = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            parts.append(draw(columns(tables)))
        else:
            parts.append([Sample(draw(st.sampled_from(tables[0])), draw(st.integers(-2**40, 2**40)), draw(values),
                                 "s1", i) for i in range(draw(st.integers(0, 30)))])
    return SampleBatch(parts)


@settings(max_examples=300, deadline=None)
@given(batches())
def test_a_batch_encodes_to_the_samples_it_reads_as(batch: SampleBatch) -> None:
    rows = list(batch)
    assert len(rows) == len(batch) and all(type(row) is Sample for row in rows)
    got = _series(encode_write_request(batch))
    assert got == _series(_encode_one_by_one(rows))
    for samples in got.values():
        assert [ts for ts, _ in samples] == sorted(ts for ts, _ in samples)


def test_columns_read_as_the_samples_they_describe() -> None:
    table = [labels_of("s1", "tx1", point, quality, "kW") for point in ("a", "b") for quality in QUALITIES]
    part = SampleColumns(table, WIDTH, [1, 0, 1], [0, 2, 0], 1000, [5, 0, 7], [1.5, -0.0, 2.0], "s1", range(10, 13))
    assert list(part) == [Sample(table[WIDTH], 1005, 1.5, "s1", 10), Sample(table[2], 1000, -0.0, "s1", 11),
                          Sample(table[WIDTH], 1007, 2.0, "s1", 12)]
    assert part[1].seq == 11 and len(part) == 3
    batch = SampleBatch([[], part, [Sample(table[0], 1, 0.5, "s1", 1)]])
    assert len(batch) == 4 and batch[3].seq == 1 and len(batch.parts) == 2
    series = _series(encode_write_request(batch))
    assert series[table[WIDTH]] == [(1005, 1.5), (1007, 2.0)]
    assert math.copysign(1, series[table[2]][0][1]) == -1
