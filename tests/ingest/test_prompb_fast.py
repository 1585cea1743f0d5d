"""The column encoder of write requests writes exactly the bytes of the generated protobuf classes."""

from __future__ import annotations

import math

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.prompb import WriteRequest
from ingest.remote_write import Sample, _encode_one_by_one, encode_write_request, labels_of

INT64 = st.integers(-2**63, 2**63 - 1)
timestamps = INT64 | st.sampled_from([0, 1, 127, 128, 16_383, 16_384, 2**35, 1_764_152_400_123, -1, -2**63,
                                      2**63 - 1])
values = st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, -1.7976931348623157e308])
label_text = st.text(max_size=12).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


def _plain(body: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(body))


@st.composite
def sample_lists(draw: st.DrawFn) -> list[Sample]:
    """Samples over a few label sets (some equal but distinct objects, empty values), any times and values."""
    names = draw(st.lists(st.tuples(label_text, label_text), min_size=1, max_size=6))
    label_sets = [labels_of("s", asset, "p", "good", unit) for asset, unit in names]
    label_sets += [tuple(labels) for labels in label_sets]                 # equal tuples, other objects
    return [Sample(draw(st.sampled_from(label_sets)), draw(timestamps), draw(values), "s", i)
            for i in range(draw(st.integers(1, 120)))]


@settings(max_examples=400, deadline=None)
@given(sample_lists())
def test_the_bytes_are_the_generated_encoders(samples: list[Sample]) -> None:
    assert _plain(encode_write_request(samples)) == _plain(_encode_one_by_one(samples))


@st.composite
def uniform_sample_lists(draw: st.DrawFn) -> list[Sample]:
    """Samples whose records all have one layout (non-zero values, timestamps of one varint width,
    negative ones being 10 bytes), the encoder's unmasked path."""
    width = draw(st.integers(1, 10))
    stamps = (st.integers(1, 127) if width == 1 else st.integers(-2**63, -1) if width == 10
              else st.integers(2 ** (7 * (width - 1)), 2 ** (7 * width) - 1))
    label_sets = [labels_of("s", asset, "p", "good", "kW") for asset in draw(st.lists(label_text, min_size=1, max_size=4))]
    return [Sample(draw(st.sampled_from(label_sets)), draw(stamps), draw(values.filter(lambda v: v != 0.0 or
                                                                                     math.copysign(1, v) < 0)), "s", i)
            for i in range(draw(st.integers(1, 80)))]


@settings(max_examples=300, deadline=None)
@given(uniform_sample_lists())
def test_the_bytes_of_one_layout_requests_are_the_generated_encoders(samples: list[Sample]) -> None:
    assert _plain(encode_write_request(samples)) == _plain(_encode_one_by_one(samples))


def test_a_decoded_request_holds_every_sample_once_grouped_and_in_time_order() -> None:
    a, b = labels_of("s", "tx1", "oil", "good", "degC"), labels_of("s", "tx1", "load", "good", "")
    samples = [Sample(a, 3000, 3.5, "s", 3), Sample(b, 1000, -0.0, "s", 1), Sample(a, 1000, 0.0, "s", 2),
               Sample(tuple(b), 0, 1e308, "s", 4), Sample(a, -5, math.nan, "s", 5)]
    request = WriteRequest()
    request.ParseFromString(_plain(encode_write_request(samples)))
    got = [(tuple((l.name, l.value) for l in ts.labels), [(s.timestamp, s.value) for s in ts.samples])
           for ts in request.timeseries]
    assert [labels for labels, _ in got] == [a, b]
    assert got[0][1][:2] == [(-5, got[0][1][0][1]), (1000, 0.0)] and math.isnan(got[0][1][0][1])
    assert got[0][1][2] == (3000, 3.5)
    assert got[1][1] == [(0, 1e308), (1000, -0.0)] and math.copysign(1, got[1][1][1][1]) == -1


@pytest.mark.parametrize("sample, error", [
    (Sample(labels_of("s", "a", "p", "good", "kW"), 2**63, 1.0, "s", 1), (ValueError, OverflowError)),
    (Sample(labels_of("s", "a", "p", "good", "kW"), 1, "1.5", "s", 1), TypeError),
    (Sample(labels_of("s", "a", "p", "good", "kW"), 1.5, 1.0, "s", 1), TypeError),
    (Sample(labels_of("s", "a", "p", "good", "k\ud800"), 1, 1.0, "s", 1), UnicodeError),
])
def test_a_sample_protobuf_cannot_carry_is_an_error_as_with_the_generated_classes(sample: Sample, error) -> None:
    ok = Sample(labels_of("s", "a", "p", "good", "kW"), 5, 2.0, "s", 2)
    for encode in (encode_write_request, _encode_one_by_one):
        with pytest.raises(error):
            encode([ok, sample])
