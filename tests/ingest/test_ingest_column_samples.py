"""A v2 message's samples built per column are exactly those the per-reading path builds from the same readings."""

from __future__ import annotations

import queue
import tempfile
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from ems_contract.telemetry import QUALITIES, Reading
from ems_contract.telemetry_v2 import Columns, decode_telemetry_columns, encode_batch_v2
from ingest.dedup import SeenSeqs
from ingest.metrics import IngestMetrics
from ingest.mqtt import Incoming
from ingest.worker import IngestWorker, _Item


class _Link:
    network_alive = True

    def __init__(self) -> None:
        self.incoming: queue.Queue[Incoming] = queue.Queue()


def _samples(batch, now_ms: int) -> tuple[list, dict]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as state:
        worker = IngestWorker(link=_Link(), writer=None, seen=SeenSeqs(state), metrics=IngestMetrics())  # type: ignore[arg-type]
        counts = {"duplicate": 0, "null": 0, "future_timestamp": 0, "too_old": 0}
        item = _Item(Incoming("ems/v1/s1/telemetry", b"", 1, 1, False, 0), batch, None)
        samples = list(worker._samples(item, now_ms, counts))
        worker.seen.close()
        return samples, counts


@st.composite
def readings(draw: st.DrawFn) -> list[Reading]:
    names = draw(st.lists(st.tuples(st.sampled_from(["tx1", "tx2"]), st.sampled_from(["a", "b", "c"]),
                                    st.sampled_from(["", "kW"])), min_size=1, max_size=6, unique=True))
    seq_first, base = draw(st.integers(1, 2**40)), int(time.time() * 1000) - 10_000
    out = []
    for i in range(draw(st.integers(1, 120))):
        asset, point, unit = draw(st.sampled_from(names))
        quality = draw(st.sampled_from(QUALITIES))
        value = None if quality in ("device_error", "stale") and draw(st.booleans()) else draw(
            st.floats(allow_nan=False, allow_infinity=False))
        out.append(Reading(seq_first + i, base + draw(st.integers(0, 5000)), asset, point, value, unit, quality))
    return out


@settings(max_examples=200, deadline=None)
@given(readings())
def test_per_column_and_per_reading_samples_are_the_same(rows: list[Reading]) -> None:
    now_ms = int(time.time() * 1000)
    columns = decode_telemetry_columns(encode_batch_v2("s1", rows, now_ms))
    assert isinstance(columns, Columns)
    by_column, counts = _samples(columns, now_ms)
    by_reading, reading_counts = _samples(columns.batch(), now_ms)
    assert by_column == by_reading and counts == reading_counts
    assert counts["null"] == sum(1 for r in rows if r.value is None)
    assert [(s.ts_ms, s.value, s.seq) for s in by_column] == [(r.ts_ms, r.value, r.seq) for r in rows
                                                             if r.value is not None]
