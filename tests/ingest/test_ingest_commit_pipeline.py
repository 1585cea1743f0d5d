"""The pipelined dedup commit: batch N's seqs become durable on the commit thread while batch N+1 is
written, and N is acknowledged only after that — a crash in between rewrites identical samples.

The worker runs in-process here with a recording link and writer (the real SeenSeqs on disk), so the
test can hold the durable write at the exact point that matters; the last test sends the rewrite to
a real Prometheus.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from devenv.prometheus import PrometheusServer
from ems_contract.telemetry import Reading, telemetry_topic
from ems_contract.telemetry_v2 import encode_batch_v2
from ingest.dedup import SeenSeqs
from ingest.metrics import IngestMetrics
from ingest.mqtt import Incoming
from ingest.remote_write import RemoteWriter
from ingest.worker import IngestWorker
from ingest_support import stored

SITE = "sub-pipe"


class _Link:
    """Stands in for MqttLink: a queue in, the PUBACKed message ids out."""

    network_alive = True

    def __init__(self) -> None:
        self.incoming: queue.Queue[Incoming] = queue.Queue()
        self.acked: list[int] = []

    def ack(self, message: Incoming) -> bool:
        self.acked.append(message.mid)
        return True

    def unsubscribe_all(self) -> None:
        pass


class _Writer:
    """Records every request's samples as (labels, ts_ms, value); optionally forwards to a real TSDB."""

    def __init__(self, real: RemoteWriter | None = None) -> None:
        self.requests: list[list[tuple]] = []
        self.real = real

    def write(self, samples) -> float:
        if self.real is not None:
            self.real.write(samples)
        self.requests.append([(s.labels, s.ts_ms, s.value) for s in samples])
        return 0.0


class _GatedSeen(SeenSeqs):
    """SeenSeqs whose durable write waits for ``gate`` and then may fail like a crashed disk."""

    def __init__(self, state_dir: Path, *, fail: bool = False) -> None:
        super().__init__(state_dir)
        self.gate = threading.Event()
        self.fail = fail
        self.persisting = threading.Event()

    def persist(self, rows) -> None:
        self.persisting.set()
        assert self.gate.wait(30), "test never opened the gate"
        if self.fail:
            raise OSError("simulated crash before the dedup commit reached the disk")
        super().persist(rows)


def _message(mid: int, seq_first: int, base_ms: int, count: int = 50) -> Incoming:
    readings = [Reading(seq, base_ms + seq, f"tx{seq % 3}", f"p{seq % 5}", seq * 0.25, "kW")
                for seq in range(seq_first, seq_first + count)]
    return Incoming(telemetry_topic(SITE), encode_batch_v2(SITE, readings, base_ms), mid, 1, False, 0)


def _worker(link: _Link, writer: _Writer, seen: SeenSeqs) -> IngestWorker:
    return IngestWorker(link=link, writer=writer, seen=seen,  # type: ignore[arg-type]
                        metrics=IngestMetrics(CollectorRegistry()), max_readings=50, max_delay_s=0.0)


def test_a_batch_is_acked_only_after_its_seqs_are_durable_and_acks_keep_batch_order(tmp_path: Path) -> None:
    base_ms = int(time.time() * 1000) - 60_000
    link, writer, seen = _Link(), _Writer(), _GatedSeen(tmp_path)
    worker = _worker(link, writer, seen)
    first, second = _message(1, 1, base_ms), _message(2, 51, base_ms)

    worker.process([worker._decode(first)])
    assert len(writer.requests) == 1 and len(writer.requests[0]) == 50      # in the TSDB ...
    assert seen.persisting.wait(10) and link.acked == []                   # ... durable write pending: no ack

    # batch 2 is written while batch 1's commit is still on its way to disk, and waits for it
    second_done = threading.Thread(target=worker.process, args=([worker._decode(second)],))
    second_done.start()
    deadline = time.monotonic() + 10
    while len(writer.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(writer.requests) == 2
    time.sleep(0.2)
    assert link.acked == [] and second_done.is_alive()
    assert SeenSeqs(tmp_path).intervals(SITE) == []                       # nothing on disk yet

    seen.gate.set()
    second_done.join(10)
    assert link.acked == [1]                                                # batch 1 durable → acked
    worker._finish_commit()
    assert link.acked == [1, 2]
    assert SeenSeqs(tmp_path).intervals(SITE) == [(1, 100)]


def test_crash_between_the_remote_write_and_the_dedup_commit_rewrites_the_same_samples(tmp_path: Path) -> None:
    base_ms = int(time.time() * 1000) - 60_000
    link, writer, seen = _Link(), _Writer(), _GatedSeen(tmp_path, fail=True)
    worker = _worker(link, writer, seen)
    worker.process([worker._decode(_message(7, 1, base_ms))])
    seen.gate.set()
    with pytest.raises(OSError, match="simulated crash"):
        worker._finish_commit()
    assert link.acked == []                                       # the broker keeps and redelivers it
    assert SeenSeqs(tmp_path).intervals(SITE) == []

    # the restarted worker reads the file, gets the redelivered copy and writes exactly the same samples
    link2, writer2 = _Link(), _Writer()
    worker2 = _worker(link2, writer2, SeenSeqs(tmp_path))
    worker2.process([worker2._decode(_message(7, 1, base_ms))])
    worker2._finish_commit()
    assert sorted(writer2.requests[0]) == sorted(writer.requests[0])
    assert link2.acked == [7]
    assert SeenSeqs(tmp_path).intervals(SITE) == [(1, 50)]

    # a further copy (the broker redelivers once more) is now recognised and writes nothing
    worker2.process([worker2._decode(_message(7, 1, base_ms))])
    worker2._finish_commit()
    assert len(writer2.requests) == 1 and link2.acked == [7, 7]


def test_the_rewrite_after_a_crash_is_stored_once_by_prometheus(tmp_path: Path, prometheus: PrometheusServer) -> None:
    base_ms = int(time.time() * 1000) - 60_000
    real = RemoteWriter(prometheus.remote_write_url)
    writer = _Writer(real)
    seen = _GatedSeen(tmp_path, fail=True)
    worker = _worker(_Link(), writer, seen)
    worker.process([worker._decode(_message(3, 1, base_ms))])
    seen.gate.set()
    with pytest.raises(OSError):
        worker._finish_commit()
    link2 = _Link()
    worker2 = _worker(link2, writer, SeenSeqs(tmp_path))
    worker2.process([worker2._decode(_message(3, 1, base_ms))])
    worker2._finish_commit()
    assert link2.acked == [3] and len(writer.requests) == 2

    got = stored(prometheus, SITE, base_ms, base_ms + 100)
    samples = sorted(s for series in got.values() for s in series)
    assert samples == [(base_ms + seq, seq * 0.25) for seq in range(1, 51)]    # each reading once
    real.close()
