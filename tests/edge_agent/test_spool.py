"""The durable spool: one row per batch, seq never reused, cap drops the oldest (counted and audited),
corrupt rows quarantined, an older agent's per-reading spool converted."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge_agent.audit import AuditLog, decode_record, read_audit, verify
from edge_agent.batch import ReadingBatch
from edge_agent.metrics import AgentMetrics
from edge_agent.errors import AuditError, SpoolError
from edge_agent.spool import Spool
from tests.edge_agent.audit_helpers import AuditDisk, full_disk_switch


def _batch(i: int, n: int = 1) -> ReadingBatch:
    batch = ReadingBatch()
    for k in range(n):
        batch.add(1_764_000_000_000 + i, "tx1", f"p{k}", 50.0 + i + k, "degC", "good", f"SENSOR_{k:02d}")
    return batch


async def _add(spool: Spool, i: int, n: int = 1) -> int:
    """Append a batch of ``n`` readings; its first seq."""
    return (await spool.append(_batch(i, n))).seq_first


def _seqs(batches: list[ReadingBatch]) -> list[int]:
    return [b.seq_first + k for b in batches for k in range(len(b))]


def run(coro):
    return asyncio.run(coro)


def test_seq_is_monotonic_across_restarts_and_acked_rows(tmp_path: Path) -> None:
    async def first() -> list[int]:
        async with Spool(tmp_path, site="s1", fsync_batch=4) as spool:
            seqs = [await _add(spool, i) for i in range(10)]
            await spool.flush()
            rows = await spool.lease(100)
            assert _seqs(rows) == seqs
            assert await spool.ack(1, 10) == 10      # everything acked: the table is empty now
            assert spool.depth == 0
            return seqs

    async def second() -> list[int]:
        async with Spool(tmp_path, site="s1") as spool:
            return [await _add(spool, i) for i in range(3)]

    assert run(first()) == list(range(1, 11))
    assert run(second()) == [11, 12, 13]          # not 1..3: the counter is persisted, not max(seq)+1


def test_unacked_rows_are_leased_again_after_restart_in_order(tmp_path: Path) -> None:
    async def write() -> None:
        async with Spool(tmp_path, site="s1", fsync_batch=8) as spool:
            for i in range(20):
                await _add(spool, i)
            await spool.flush()
            leased = await spool.lease(5)
            await spool.ack(leased[0].seq_first, leased[-1].seq_last)
            await spool.lease(5)                  # leased but never acked: must come back

    async def read() -> list[int]:
        async with Spool(tmp_path, site="s1") as spool:
            assert spool.depth == 15
            out = []
            while batch := await spool.lease(4):
                out += _seqs(batch)
            return out

    run(write())
    assert run(read()) == list(range(6, 21))


def test_release_leases_hands_out_unacked_rows_again(tmp_path: Path) -> None:
    async def go() -> tuple[list[int], list[int]]:
        async with Spool(tmp_path, site="s1") as spool:
            for i in range(6):
                await _add(spool, i)
            await spool.flush()
            a = _seqs(await spool.lease(3))
            await spool.ack(a[0], a[-1])
            b = _seqs(await spool.lease(2))                 # 4, 5 in flight, then the link drops
            spool.release_leases()
            return b, _seqs(await spool.lease(10))

    in_flight, again = run(go())
    assert in_flight == [4, 5]
    assert again == [4, 5, 6]


def test_committed_rows_survive_sigkill(tmp_path: Path) -> None:
    """A child process appends and flushes, prints, then is SIGKILLed: every flushed row is there."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        from edge_agent.batch import ReadingBatch
        from edge_agent.spool import Spool
        async def main():
            spool = Spool({str(tmp_path)!r}, site="s1", fsync_batch=16)
            await spool.open()
            for i in range(100):
                batch = ReadingBatch()
                batch.add(i, "a", "p", float(i), "u", "good", "S")
                await spool.append(batch)
            await spool.flush()
            print("flushed", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"flushed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)

    async def read() -> list[int]:
        async with Spool(tmp_path, site="s1") as spool:
            rows = await spool.lease(1000)
            assert await _add(spool, 0) == 101
            return _seqs(rows)

    assert run(read()) == list(range(1, 101))


def test_full_spool_drops_the_oldest_counts_and_audits(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    audit_path = tmp_path / "audit.log"

    async def go() -> list[int]:
        audit = AuditLog(audit_path)
        async with Spool(tmp_path / "spool", site="s1", max_readings=10, fsync_batch=4, audit=audit,
                         metrics=metrics) as spool:
            for i in range(25):
                await _add(spool, i)
            await spool.flush()
            assert spool.depth == 10
            assert spool.dropped_total == 15
            return _seqs(await spool.lease(100))

    assert run(go()) == list(range(16, 26))        # the newest 10 stay
    assert registry.get_sample_value("ems_edge_spool_dropped_total") == 15
    assert registry.get_sample_value("ems_edge_spool_depth") == 10
    assert registry.get_sample_value("ems_edge_readings_accepted_total") == 25
    summary = verify(audit_path)
    assert summary.ok, summary.lines()
    assert summary.readings == 25
    assert summary.dropped_readings == 15          # every drop is in the audit log, with its seq range
    assert read_audit(audit_path).dropped == set(range(1, 16))


def test_corrupt_row_is_quarantined_not_dropped(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    audit_path = tmp_path / "audit.log"

    async def write() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            for i in range(5):
                await _add(spool, i)

    run(write())
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    data = db.execute("SELECT data FROM batches WHERE seq_first = 3").fetchone()[0]
    flipped = bytearray(data)
    flipped[5] ^= 0x01                              # one flipped bit in the stored reading
    db.execute("UPDATE batches SET data = ? WHERE seq_first = 3", (bytes(flipped),))
    db.commit()
    db.close()

    async def read() -> tuple[list[int], list[tuple[int, str]], int]:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path), metrics=metrics) as spool:
            rows = _seqs(await spool.lease(10))
            return rows, await spool.quarantined(), spool.depth

    rows, quarantined, depth = run(read())
    assert rows == [1, 2, 4, 5]
    assert [seq for seq, _ in quarantined] == [3]
    assert "checksum" in quarantined[0][1]
    assert depth == 4
    assert registry.get_sample_value("ems_edge_spool_quarantined_total") == 1
    summary = verify(audit_path)
    assert summary.ok and summary.quarantined == 1 and summary.readings == 5


def test_crash_between_commit_and_audit_is_reaudited(tmp_path: Path) -> None:
    """Rows committed to the spool but missing from the audit log get their records at the next start."""
    audit_path = tmp_path / "audit.log"

    async def write_without_audit() -> None:
        async with Spool(tmp_path / "spool", site="s1") as spool:
            for i in range(7):
                await _add(spool, i)

    async def reopen() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)):
            pass

    run(write_without_audit())
    run(reopen())
    run(reopen())                                   # idempotent: nothing audited twice
    summary = verify(audit_path)
    assert (summary.readings, summary.seq_min, summary.seq_max) == (7, 1, 7)


def test_metrics_depth_and_oldest_age(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    now = [1000.0]

    async def go() -> None:
        async with Spool(tmp_path, site="s1", metrics=AgentMetrics(registry), clock=lambda: now[0]) as spool:
            for i in range(3):
                await _add(spool, i)
            await spool.flush()
            now[0] += 12.5
            spool.refresh_metrics()
            assert registry.get_sample_value("ems_edge_spool_oldest_unacked_age_seconds") == 12.5
            rows = await spool.lease(3)
            await spool.ack(rows[0].seq_first, rows[-1].seq_last)
            assert registry.get_sample_value("ems_edge_spool_depth") == 0
            assert registry.get_sample_value("ems_edge_spool_oldest_unacked_age_seconds") == 0

    run(go())


def test_bad_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_readings must be >= 1"):
        Spool(tmp_path, site="s1", max_readings=0)


def test_deleted_rows_are_zeroed_only_where_that_costs_no_write(tmp_path: Path) -> None:
    """Debian builds SQLite with SECURE_DELETE on, which zeroes every acked row's page and writes it again
    (WAL and checkpoint): the spool asks for FAST (2)."""
    async def go() -> int:
        async with Spool(tmp_path, site="s1") as spool:
            return spool._db.execute("PRAGMA secure_delete").fetchone()[0]     # type: ignore[union-attr]

    assert run(go()) == 2


def test_nothing_is_leased_before_it_is_committed(tmp_path: Path) -> None:
    """Written (fsync'd) before published: lease() only sees committed rows; the timer commits a partial batch."""
    async def go() -> tuple[list[int], list[int], int]:
        async with Spool(tmp_path, site="s1", fsync_batch=64, flush_interval_s=0.05) as spool:
            for i in range(10):
                await _add(spool, i)
            before = _seqs(await spool.lease(100))
            await asyncio.sleep(0.3)                  # the flush timer fires
            after = _seqs(await spool.lease(100))
            return before, after, spool.depth

    before, after, depth = run(go())
    assert before == [] and after == list(range(1, 11)) and depth == 10


def test_commits_hold_whole_groups_of_fsync_batch_readings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches arriving one at a time (devices polled at different phases) commit about fsync_batch
    readings at a time, never past it: not one commit per batch whenever the last fsync is done, nor
    990 + 99 readings, which the drain would send as a full message and a short one."""
    sizes = []
    commit = Spool._commit_sync

    def spy(self: Spool, rows: list, *args: object) -> object:
        sizes.append(sum(row[1] - row[0] + 1 for row in rows))
        return commit(self, rows, *args)

    monkeypatch.setattr(Spool, "_commit_sync", spy)

    async def go() -> list[int]:
        async with Spool(tmp_path, site="s1", fsync_batch=1000, flush_interval_s=30, min_commit_interval_s=0) as spool:
            for i in range(45):
                await _add(spool, i, 99)
                await asyncio.sleep(0.002)
                leased = await spool.lease(10_000)
                if leased:
                    spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
            return _seqs(await spool.lease(10_000))

    assert run(go()) == []                          # the last 5 batches waited for their group (or close)
    # Whole groups of 990 (two or more when a slow commit let the next fill meanwhile), never 990 + 99;
    # the last 5 batches were committed by close().
    assert sum(sizes) == 45 * 99 and all(n % 990 == 0 for n in sizes[:-1]) and sizes[-1] % 990 == 495, sizes
    assert len(sizes) >= 2, sizes


@pytest.mark.parametrize("pace", [0.05, 0.0])
def test_commits_are_paced_while_groups_fill_faster_than_min_commit_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pace: float) -> None:
    """Groups filling every few milliseconds commit together, at most one commit of new rows per
    ``min_commit_interval_s`` (whole groups each), none waiting past the pace; 0 commits each group at once."""
    starts: list[tuple[float, int]] = []        # (loop time the commit began, readings), commits of new rows
    commit = Spool._commit_sync

    def spy(self: Spool, rows: list, *args: object) -> object:
        if rows:
            starts.append((self._last_commit, sum(row[1] - row[0] + 1 for row in rows)))
        return commit(self, rows, *args)

    monkeypatch.setattr(Spool, "_commit_sync", spy)

    async def go() -> tuple[list[int], float]:
        async with Spool(tmp_path / str(pace), site="s1", fsync_batch=100, flush_interval_s=0.3,
                         min_commit_interval_s=pace) as spool:
            loop = asyncio.get_running_loop()
            arrived: dict[int, float] = {}
            started = loop.time()
            i = 0
            while loop.time() - started < 0.4:
                arrived[await _add(spool, i, 20)] = loop.time()   # 20k readings/s: under max_buffered (1600)
                i += 1
                await asyncio.sleep(0.001)
            await spool.flush()
            waits = []
            for commit_started, _ in starts:
                waits += [commit_started - t for seq, t in arrived.items() if t <= commit_started]
                arrived = {seq: t for seq, t in arrived.items() if t > commit_started}
            return _seqs(await spool.lease(100_000)), max(waits)

    seqs, longest_wait = run(go())
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 100
    gaps = [b[0] - a[0] for a, b in zip(starts, starts[1:-1])]     # the last is the closing flush()
    sizes = [n for _, n in starts[:-1]]
    if pace:
        assert min(gaps) >= pace - 0.003, gaps
        assert all(n % 100 == 0 for n in sizes), sizes                   # whole groups of fsync_batch
        assert len(starts) <= 0.4 / pace + 3, len(starts)
        assert longest_wait < 1.0, longest_wait                          # a generous bound under load
    else:       # a group commits as soon as it is full: some commits closer together than the pace above
        assert min(gaps) < 0.045, gaps


def test_commit_timers_run_on_the_agents_event_loop(tmp_path: Path) -> None:
    """On the agent's loop (uvloop here) too: a commit due at once (flush_interval_s=0) gets a timer for a
    time already past, which uvloop hands back as a plain Handle; the timers still commit every batch."""
    from edge_agent.event_loop import new_event_loop

    async def go() -> list[int]:
        async with Spool(tmp_path, site="s1", fsync_batch=1000, flush_interval_s=0, min_commit_interval_s=0) as spool:
            for i in range(3):
                await _add(spool, 2 * i, 3)
                await _add(spool, 2 * i + 1, 3)            # before the first one's timer ran
                await asyncio.sleep(0.01)
            leased: list[ReadingBatch] = []
            for _ in range(500):                  # the timers' commits, however slow the disk (no flush())
                leased += await spool.lease(100)
                if len(_seqs(leased)) >= 18:
                    break
                await asyncio.sleep(0.01)
            return _seqs(leased)

    loop = new_event_loop()
    try:
        assert loop.run_until_complete(go()) == list(range(1, 19))
    finally:
        loop.close()


def test_group_commit_keeps_accepting_while_the_disk_is_busy(tmp_path: Path) -> None:
    async def go() -> tuple[int, int]:
        async with Spool(tmp_path, site="s1", fsync_batch=8) as spool:
            for i in range(5000):
                await _add(spool, i)
            await spool.flush()
            rows = _seqs(await spool.lease(10_000))
            return len(rows), rows[-1]

    assert run(go()) == (5000, 5000)


def test_a_spool_belongs_to_one_site(tmp_path: Path) -> None:
    from edge_agent.errors import SpoolError

    async def open_as(site: str) -> None:
        async with Spool(tmp_path, site=site):
            pass

    run(open_as("sub-07"))
    with pytest.raises(SpoolError, match=r"holds readings of site 'sub-07', not 'sub-08'"):
        run(open_as("sub-08"))


def test_audit_fsyncs_are_batched_with_the_spool_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """640 readings with fsync_batch=64: a handful of audit fsyncs, not one per reading."""
    import edge_agent.audit as audit_module

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(audit_module.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])

    async def go() -> int:
        async with Spool(tmp_path / "spool", site="s1", fsync_batch=64, audit=AuditLog(tmp_path / "audit.log")) as spool:
            for i in range(640):
                await _add(spool, i)
            await spool.flush()
            return spool.depth

    assert run(go()) == 640
    assert 1 <= len(calls) <= 640 // 64 + 2, len(calls)
    assert verify(tmp_path / "audit.log").readings == 640


def test_a_batch_is_one_row_one_seq_range_and_one_audit_record(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"

    async def go() -> tuple[list[ReadingBatch], list[ReadingBatch], int]:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            appended = [await spool.append(_batch(i, n)) for i, n in enumerate((100, 1, 250))]
            await spool.flush()
            return appended, await spool.lease(10_000), spool.depth

    appended, leased, depth = run(go())
    assert [(b.seq_first, b.seq_last) for b in appended] == [(1, 100), (101, 101), (102, 351)]
    assert [(b.seq_first, b.seq_last, b.value, b.sensor) for b in leased] == \
        [(b.seq_first, b.seq_last, b.value, b.sensor) for b in appended]
    assert depth == 351
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    assert db.execute("SELECT seq_first, seq_last FROM batches ORDER BY seq_first").fetchall() == \
        [(1, 100), (101, 101), (102, 351)]
    records = [decode_record(line) for line in audit_path.read_bytes().splitlines()]
    # one record per batch; the point names once, in "pt" records before the first batch naming them
    # and a batch's shape defined once ("sh"), then named by number (one of fewer than 8 readings keeps "p")
    assert [r["k"] for r in records] == ["pt", "sh", "b", "b", "pt", "sh", "b"]
    assert records[0]["id"] == list(range(1, 101)) and records[4]["id"] == list(range(101, 251))
    shapes = {r["id"]: r["p"] for r in records if r["k"] == "sh"}
    assert [shapes[r["s"]] if "s" in r else r["p"] for r in records if r["k"] == "b"] == \
        [list(range(1, 101)), [1], list(range(1, 251))]
    summary = verify(audit_path)
    assert (summary.ok, summary.kinds["b"], summary.readings, summary.seq_min, summary.seq_max) == (True, 3, 351, 1, 351)
    readings = read_audit(audit_path).readings
    assert readings[102]["value"] == appended[2].value[0] and readings[351]["sensor"] == "SENSOR_249"


def test_lease_takes_whole_batches_and_ack_deletes_only_rows_inside_the_range(tmp_path: Path) -> None:
    async def go() -> None:
        async with Spool(tmp_path, site="s1") as spool:
            for i, n in enumerate((60, 60, 300, 10)):
                await spool.append(_batch(i, n))
            await spool.flush()
            first = await spool.lease(100)
            assert [len(b) for b in first] == [60]                 # a second batch would exceed 100
            second = await spool.lease(100)
            assert [len(b) for b in second] == [60]
            third = await spool.lease(100)
            assert [len(b) for b in third] == [300]                # larger than n alone: still handed out
            assert await spool.ack(1, 100) == 60                   # 61..120 reaches outside 1..100: stays
            assert spool.depth == 370
            assert await spool.ack(61, 420) == 360
            assert [b.seq_first for b in await spool.lease(100)] == [421]

    run(go())


def test_the_cap_drops_whole_batches_never_the_newest(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"

    async def go() -> tuple[int, list[int]]:
        async with Spool(tmp_path / "spool", site="s1", max_readings=100, audit=AuditLog(audit_path)) as spool:
            await spool.append(_batch(0, 40))
            await spool.flush()
            await spool.append(_batch(1, 40))
            await spool.flush()
            await spool.append(_batch(2, 150))         # alone above the cap: the older ones go, it stays
            await spool.flush()
            return spool.depth, [b.seq_first for b in await spool.lease(1000)]

    assert run(go()) == (150, [81])
    assert read_audit(audit_path).dropped == set(range(1, 81))


def test_a_spool_of_an_older_agent_is_converted_and_delivered(tmp_path: Path) -> None:
    """One row per reading in table ``spool`` (the format before batches): every reading comes out, in order."""
    import json
    import zlib

    tmp_path.mkdir(exist_ok=True)
    db = sqlite3.connect(tmp_path / "spool.db")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE owner (site TEXT NOT NULL);
        CREATE TABLE spool (seq INTEGER PRIMARY KEY, accepted_ms INTEGER NOT NULL, data BLOB NOT NULL,
                            crc INTEGER NOT NULL);
        CREATE TABLE quarantine (seq INTEGER NOT NULL, accepted_ms INTEGER, data BLOB, crc INTEGER,
                                 reason TEXT NOT NULL, quarantined_ms INTEGER NOT NULL);
        INSERT INTO owner VALUES ('s1');
        INSERT INTO meta VALUES ('next_seq', 8);
    """)
    for seq in (5, 6, 7):
        data = json.dumps([1000 + seq, "tx1", "oil_temp", 50.5 + seq, "degC", "good", "SENSOR_01"]).encode()
        db.execute("INSERT INTO spool VALUES (?, ?, ?, ?)", (seq, 99, data, zlib.crc32(data) ^ (seq == 6)))
    db.commit()
    db.close()

    async def go() -> tuple[list, list, int]:
        async with Spool(tmp_path, site="s1") as spool:
            rows = await spool.lease(100)
            return [(r.seq, r.ts_ms, r.value) for b in rows for r in b.readings()], await spool.quarantined(), \
                await _add(spool, 0)

    rows, quarantined, next_seq = run(go())
    assert rows == [(5, 1005, 55.5), (7, 1007, 57.5)]
    assert [seq for seq, _ in quarantined] == [6]                  # the corrupt one is quarantined, not lost
    assert next_seq == 8


@pytest.mark.parametrize("memory_readings", [1, 7, 65_536])
def test_leases_are_the_same_whether_batches_are_held_in_memory_or_read_back(tmp_path: Path,
                                                                            memory_readings: int) -> None:
    """lease() serves recent batches from memory and older ones from the database: the same rows
    in the same order either way, acked rows never again, the cap's drops never, contents intact."""

    async def go() -> list[list[int]]:
        async with Spool(tmp_path / "spool", site="s1", max_readings=40, fsync_batch=4,
                         memory_readings=memory_readings) as spool:
            for i in range(12):
                await _add(spool, i, n=3)               # 36 readings, seqs 1..36
            await spool.flush()
            leases = [_seqs(await spool.lease(7)), _seqs(await spool.lease(7))]
            assert await spool.ack(1, 6) == 6
            spool.release_leases()                       # a reconnect: unacked rows go out again
            rows = await spool.lease(9)
            assert [(r.value, r.sensor) for r in rows][:1] == [([52.0, 53.0, 54.0], ["SENSOR_00", "SENSOR_01",
                                                                                    "SENSOR_02"])]
            leases.append(_seqs(rows))
            for i in range(12, 16):
                await _add(spool, i, n=3)               # seqs 37..48: the cap (40) drops 7..9
            await spool.flush()
            leases.append(_seqs(await spool.lease(100)))
            spool.release_leases()
            leases.append(_seqs(await spool.lease(100)))
            assert await spool.ack(10, 48) == 39 and spool.depth == 0
            spool.release_leases()
            leases.append(_seqs(await spool.lease(100)))
            return leases

    assert run(go()) == [list(range(1, 7)), list(range(7, 13)), list(range(7, 16)), list(range(16, 49)),
                         list(range(10, 49)), []]


def test_audit_records_lost_to_power_loss_are_reaudited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit records are written after each spool commit and fsync'd before rows leave the spool: a power
    loss takes the unsynced tail of the audit file, and leaves every reading whose record it took still in
    the spool, audited again at the next start — each reading once. (Holes inside the unsynced region:
    ``test_audit_power_loss``.)"""
    import edge_agent.audit as audit_module

    audit_path = tmp_path / "audit.log"
    durable = [0]                                    # the audit file's size at its last fsync
    power = {"going": False}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.samestat(os.fstat(fd), os.stat(audit_path)):
            if power["going"]:
                return                               # the power goes before this fsync completes
            durable[0] = os.fstat(fd).st_size
        real_fsync(fd)

    monkeypatch.setattr(audit_module.os, "fsync", fsync)

    async def until_power_loss() -> None:
        spool = Spool(tmp_path / "spool", site="s1", fsync_batch=4, audit=AuditLog(audit_path))
        await spool.open()
        for i in range(12):
            await _add(spool, i)
        await spool.flush()
        leased = await spool.lease(6)
        assert await spool.ack(leased[0].seq_first, leased[-1].seq_last) == 6     # 1..6 leave the spool
        for i in range(12, 20):
            await _add(spool, i)
        power["going"] = True
        await spool.flush()                              # 13..20 committed, their records not fsync'd
        spool._executor.shutdown(wait=True)              # the power goes: no close, no last fsync

    run(until_power_loss())
    assert 0 < durable[0] < audit_path.stat().st_size
    with audit_path.open("r+b") as fh:                   # the page cache is gone with the power
        fh.truncate(durable[0])

    async def restart() -> int:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            return spool.depth

    assert run(restart()) == 14
    summary = verify(audit_path)
    assert summary.ok and (summary.readings, summary.seq_min, summary.seq_max) == (20, 1, 20)


def test_acks_ride_on_the_next_commit_and_acked_rows_are_not_leased_again(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    commits: list[tuple[int, int]] = []
    original = Spool._commit_sync

    def counting(self, rows, records, acks, new_points, new_shapes, retry=True):
        commits.append((len(rows), len(acks)))
        return original(self, rows, records, acks, new_points, new_shapes, retry)

    monkeypatch.setattr(Spool, "_commit_sync", counting)

    async def go() -> tuple[list[int], int, list[int]]:
        async with Spool(tmp_path, site="s1") as spool:
            for i in range(4):
                await _add(spool, i)
            await spool.flush()
            leased = await spool.lease(2)
            await _add(spool, 9)                        # buffered: its commit is due
            spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
            spool.release_leases()                      # a reconnect before the delete: 1..2 stay acked
            again = _seqs(await spool.lease(10))
            await spool.flush()
            return again, spool.depth, [seq for (seq,) in sqlite3.connect(tmp_path / "spool.db").execute(
                "SELECT seq_first FROM batches ORDER BY seq_first")]

    again, depth, stored = run(go())
    assert again == [3, 4]                              # 5 was not committed yet when leased
    assert (depth, stored) == (3, [3, 4, 5])
    assert commits == [(4, 0), (1, 1)]                  # the delete went with the next rows: one transaction


def test_an_ack_while_the_spool_closes_is_dropped(tmp_path: Path) -> None:
    async def go() -> int:
        spool = Spool(tmp_path, site="s1")
        await spool.open()
        await _add(spool, 0)
        closing = asyncio.ensure_future(spool.close())
        await asyncio.sleep(0)                          # close() began: its last commit is running
        spool.ack_nowait(1, 1)                          # no commit on the closing database
        with pytest.raises(SpoolError, match="not open"):
            await spool.ack(1, 1)
        await closing
        async with Spool(tmp_path, site="s1") as again:
            return again.depth                          # the lost ack only means a re-send

    assert run(go()) == 1


def test_a_caller_cancelled_during_a_commit_does_not_jam_the_spool(tmp_path: Path) -> None:
    # A caller of flush() (a poller at shutdown, an append at max_buffered) is cancelled during the commit.
    # The I/O thread still commits: the spool must account for it, not buffer those batches again (every
    # later commit would then fail on their seqs and nothing more would be accepted).
    async def go() -> tuple[list[int], int]:
        async with Spool(tmp_path, site="s1", flush_interval_s=10, memory_readings=1) as spool:
            for i in range(5):
                await _add(spool, i)
            await spool.flush()
            leased = await spool.lease(100)
            spool.ack_nowait(leased[0].seq_first, leased[0].seq_last)
            for i in range(5, 8):
                await _add(spool, i)
            original = spool._commit_sync

            def slow(*args: object) -> object:          # a commit on a slow card
                time.sleep(0.2)
                return original(*args)
            spool._commit_sync = slow                   # type: ignore[method-assign]
            spool.release_leases()
            sender = asyncio.create_task(spool.flush())
            await asyncio.sleep(0.05)
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
            spool._commit_sync = original               # type: ignore[method-assign]
            await _add(spool, 9)
            await spool.flush()
            await spool.flush()
            seqs = [b.seq_first for b in await spool.lease(100)]
            return seqs, spool.depth
    seqs, depth = asyncio.run(go())
    assert seqs == [2, 3, 4, 5, 6, 7, 8, 9] and depth == 8


def test_a_backlog_lease_skips_acked_rows_without_a_commit_of_its_own(tmp_path: Path) -> None:
    """Replaying a backlog from the table while acks wait for their commit: the acked rows are not leased
    again, and the lease does not commit (it did: a commit and an audit fsync per lease during catch-up)."""
    async def go() -> tuple[list[int], int, int]:
        async with Spool(tmp_path, site="s1", flush_interval_s=10, memory_readings=1,
                         audit=AuditLog(tmp_path / "audit.log")) as spool:
            for i in range(6):
                await _add(spool, i)
            await spool.flush()
            leased = await spool.lease(100)
            spool.ack_nowait(leased[0].seq_first, leased[2].seq_last)     # 1..3 acked, DELETE pending
            spool.release_leases()                                        # a reconnect: lease again
            commits = []
            original = spool._commit_sync

            def counting(*args: object) -> object:
                commits.append(args)
                return original(*args)
            spool._commit_sync = counting                                 # type: ignore[method-assign]
            again = await spool.lease(100)
            return [b.seq_first for b in again], len(commits), (spool.depth, spool._depth)
    seqs, commits, depth = asyncio.run(go())
    assert seqs == [4, 5, 6] and commits == 0 and depth == (3, 6)    # 1..3 acked, still in the table


def test_an_audit_write_failing_after_the_commit_does_not_jam_the_spool(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full on the audit's file after SQLite committed: the commit stands (its batches are not buffered
    again, which failed every later commit on their seqs), the records go out with the next write, and
    no row leaves the spool while the audit cannot be synced."""
    from edge_agent.errors import AuditError

    audit_path = tmp_path / "audit.log"
    failing = {"on": False}
    original = AuditLog.sync

    def sync(self: AuditLog) -> None:
        if failing["on"]:
            raise AuditError(f"audit log {self.path}: write failed (No space left on device)")
        original(self)
    monkeypatch.setattr(AuditLog, "sync", sync)

    async def go() -> tuple[list[int], int]:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path), flush_interval_s=0.05) as spool:
            await _add(spool, 0, 3)
            await spool.flush()
            failing["on"] = True
            await _add(spool, 1, 3)
            await spool.flush()                         # committed; its record stays buffered
            with pytest.raises(AuditError):
                await spool.ack(1, 3)                   # a delete needs the audit synced first; the ack is kept
            assert (spool.depth, spool._depth) == (3, 6)       # acked, not deleted
            failing["on"] = False
            await _add(spool, 2, 3)
            await spool.flush()                         # the kept ack rides on this commit
            leased = await spool.lease(100)
            return [b.seq_first for b in leased], spool.depth
    seqs, depth = asyncio.run(go())
    assert seqs == [4, 7] and depth == 6
    contents = read_audit(audit_path)
    assert sorted(contents.readings) == list(range(1, 10))
    assert verify(audit_path).corrupt is None


def test_a_sqlite_error_after_the_commit_never_buffers_committed_rows_again(tmp_path: Path) -> None:
    """A read error in the size cap's SELECT (or the oldest row's age) after the rows' COMMIT: the commit
    stands (buffering its batches again failed every later commit on their seqs, UNIQUE, for ever); the
    cap drops at the next commit."""
    audit_path = tmp_path / "audit.log"

    failing = {"SELECT seq_first, seq_last FROM batches WHERE seq_first <": 1,
               "SELECT accepted_ms FROM batches ORDER BY": 1}

    class FailingReads:
        """The spool's connection, one of whose reads after the commit fails once per statement kind."""

        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db
            self.failing = failing

        def __getattr__(self, name: str) -> object:
            return getattr(self.db, name)

        def execute(self, sql: str, *args: object) -> object:
            for start, left in self.failing.items():
                if sql.startswith(start) and left:
                    self.failing[start] -= 1
                    raise sqlite3.OperationalError("disk I/O error")
            return self.db.execute(sql, *args)

    async def go() -> tuple[int, int, int]:
        async with Spool(tmp_path / "spool", site="s1", max_readings=6, audit=AuditLog(audit_path)) as spool:
            spool._db = FailingReads(spool._db)         # type: ignore[assignment]
            for i in range(3):
                await _add(spool, i, 3)
            await spool.flush()                         # 9 readings over the cap of 6: its SELECT fails
            leased = await spool.lease(3)
            spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
            await spool.flush()                         # an ack deletes rows: the age's SELECT fails
            for i in range(3, 6):
                await _add(spool, i, 3)
                await spool.flush()
            assert not spool._buffer and not any(failing.values())
            return spool._committed_seq, spool.depth, spool.dropped_total

    committed, depth, dropped = run(go())
    assert committed == 18 and depth <= 6 and dropped == 18 - 3 - depth
    contents = read_audit(audit_path)
    assert verify(audit_path).ok and sorted(contents.readings) == list(range(1, 19))


def test_acked_rows_whose_delete_waits_are_not_counted_in_the_depth_or_the_oldest_age(tmp_path: Path) -> None:
    """Acked rows stay in the table until the audit's periodic fsync (about 1 s): at 100k readings/s the
    depth gauge counted ~95k of them, next to the EmsEdgeSpoolDepthHigh alert. They leave the depth, its
    gauge and the oldest-unacked age at the ack; the agent's shutdown wait (depth 0) ends then too."""
    registry = CollectorRegistry()
    now = [1000.0]

    async def go() -> None:
        async with Spool(tmp_path, site="s1", metrics=AgentMetrics(registry), clock=lambda: now[0],
                         audit=AuditLog(tmp_path / "audit.log"), ack_interval_s=30) as spool:
            for i in range(3):
                await _add(spool, i, 3)
                await spool.flush()
                now[0] += 10
            leased = await spool.lease(3)
            spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
            spool.refresh_metrics()
            assert spool.depth == 6 and registry.get_sample_value("ems_edge_spool_depth") == 6
            assert registry.get_sample_value("ems_edge_spool_oldest_unacked_age_seconds") == 20   # the 2nd batch's
            leased = await spool.lease(6)
            spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
            spool.refresh_metrics()
            assert spool.depth == 0 and registry.get_sample_value("ems_edge_spool_depth") == 0
            assert spool.oldest_age_s() == 0
            stored = sqlite3.connect(tmp_path / "spool.db").execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            assert stored == 3                          # the deletes wait (audit not fsync'd, ack_interval_s)
            await spool.flush()
            assert spool.depth == 0 and spool._depth == 0 and spool._acked_pending == 0

    run(go())


def test_depth_read_during_a_commit_never_counts_a_deleted_ack_twice(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit lowers the table's count on the I/O thread; the loop may read ``depth`` before it has
    the commit's result (the agent's shutdown waits on it, then stops the drain). Read right after the
    commit's own bookkeeping, the depth is the true number of unacked readings: with an ack's readings
    subtracted twice it read 1 of 6, and the shutdown cut in-flight rows' acks (rows left in the spool)."""
    seen: list[int] = []
    commit = Spool._commit_sync

    def spy(self: Spool, *args: object) -> object:
        result = commit(self, *args)
        seen.append(self.depth)          # on the I/O thread: the loop has not seen the result yet
        return result

    monkeypatch.setattr(Spool, "_commit_sync", spy)

    async def go() -> int:
        async with Spool(tmp_path, site="s1", min_commit_interval_s=0) as spool:
            for i in range(10):
                await _add(spool, i)
            await spool.flush()
            leased = await spool.lease(100)
            spool.ack_nowait(leased[0].seq_first, leased[4].seq_last)        # 5 acked, 5 unacked
            await _add(spool, 10)
            await spool.flush()                                             # deletes the 5, adds 1
            return spool.depth

    assert run(go()) == 6
    assert seen[-1] == 6, seen


def _fast_audit_retries(monkeypatch: pytest.MonkeyPatch, bound: int) -> None:
    import edge_agent.audit as audit_module
    monkeypatch.setattr(audit_module, "MAX_BUFFERED_BYTES", bound)
    monkeypatch.setattr(audit_module, "RETRY_MIN_S", 0.01)
    monkeypatch.setattr(audit_module, "RETRY_MAX_S", 0.02)


def _audited_before_dropped(path: Path) -> None:
    """Every seq a ``drop`` record names was audited by a ``b`` record earlier in the file."""
    seen: set[int] = set()
    for line in path.read_bytes().splitlines():
        body = decode_record(line)
        if body["k"] == "b":
            seen.update(range(body["seq_first"], body["seq_last"] + 1))
        elif body["k"] == "drop":
            assert set(range(body["seq_first"], body["seq_last"] + 1)) <= seen, body


def test_records_held_while_the_audit_file_is_full_are_bounded_and_their_rows_audited_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's disk full for a long spell (ENOSPC on every write): new rows still commit, the records
    held stay under ``MAX_BUFFERED_BYTES`` (batch records and their definitions let go, the command record
    buffered before that kept), no acked row leaves the spool. The disk then takes two writes (the command
    record, one chunk of rows audited again) and is full again: the audit is behind again, past that
    chunk. Once the disk takes writes, every reading is audited exactly once and the acks delete."""
    from edge_agent.errors import AuditError

    import edge_agent.spool as spool_module

    _fast_audit_retries(monkeypatch, 4096)
    monkeypatch.setattr(spool_module, "SYNC_BYTES", 16384)     # the catch-up's share per commit: several commits
    audit_path = tmp_path / "audit.log"

    async def go() -> tuple[int, bool, int, int, int, int, int]:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path), flush_interval_s=0.01) as spool:
            audit = spool.audit
            assert audit is not None
            for i in range(2):
                await _add(spool, i, 3)
                await spool.flush()
            first = await spool.lease(100)
            await spool.ack(first[0].seq_first, first[-1].seq_last)    # records durable, rows deleted
            disk = audit._fh = AuditDisk(audit._fh)                    # type: ignore[assignment]
            disk.writes = 0
            with pytest.raises(AuditError, match="No space left"):
                await spool.audit_event("cmd", {"id": "c1", "decision": "accepted", "reason": None})
            for i in range(2, 160):     # about 40 KB of records; the first 10-reading shape: 'pt' and 'sh' let go
                await _add(spool, i, 10 if i % 10 == 0 else 3)
                await spool.flush()
                await asyncio.sleep(0.001)
            leased = await spool.lease(100_000)
            with pytest.raises(AuditError):
                await spool.ack(leased[0].seq_first, leased[-1].seq_last)   # the delete waits for the audit
            held, behind, in_table = audit._buffered_bytes, audit.behind, spool._depth
            assert held <= 4096 and sum(map(len, audit._buffer)) == held
            durable = audit.durable_seq
            disk.writes = 2
            await asyncio.sleep(0.05)                                   # past the back-off
            await _add(spool, 160, 3)
            await spool.flush()
            assert audit.behind and audit.durable_seq > durable, (audit.behind, audit.durable_seq, durable)
            disk.writes = None
            await asyncio.sleep(0.05)
            commits = 0
            while audit.behind and commits < 50:                        # a share of the backlog per commit
                await _add(spool, 161 + commits, 10)                    # point form: points and shape defined again
                await spool.flush()
                commits += 1
            await spool.flush()                                         # the ack deletes
            return held, behind, in_table, spool._depth, spool._next_seq - 1, audit.durable_seq, commits

    held, behind, in_table, depth, last, durable, commits = run(go())
    assert 2 <= commits < 50
    assert behind and in_table == last - 6 - 3 - 10 * commits and depth == 3 + 10 * commits   # leased, acked, deleted
    assert durable >= in_table                                  # once their records were durable
    assert sorted(read_audit(audit_path).readings) == list(range(1, last + 1))
    summary = verify(audit_path)
    assert summary.corrupt is None and summary.readings == last and summary.kinds["cmd"] == 1, summary
    assert summary.kinds["pt"] >= 2 and summary.kinds["sh"] == 1       # defined again after the let-go


def test_the_size_cap_drops_only_rows_audited_first_while_the_audit_file_was_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the cap while the audit is behind: nothing is dropped (the rows have no durable record); once it
    takes writes the rows are audited again, then dropped under a ``drop`` record that follows their records."""
    _fast_audit_retries(monkeypatch, 2048)
    audit_path = tmp_path / "audit.log"

    async def go() -> tuple[int, int, int]:
        async with Spool(tmp_path / "spool", site="s1", max_readings=150, audit=AuditLog(audit_path),
                         flush_interval_s=0.01) as spool:
            audit = spool.audit
            assert audit is not None
            disk = audit._fh = AuditDisk(audit._fh)                    # type: ignore[assignment]
            disk.writes = 0
            for i in range(80):
                await _add(spool, i, 3)
                await spool.flush()
            assert audit.behind and spool.dropped_total == 0 and spool._depth == 240
            disk.writes = None
            await asyncio.sleep(0.05)
            await _add(spool, 80, 3)
            await spool.flush()
            return spool.dropped_total, spool._depth, spool._next_seq - 1

    dropped, depth, last = run(go())
    assert dropped > 0 and depth <= 150 and dropped + depth == last
    contents = read_audit(audit_path)
    assert sorted(contents.readings) == list(range(1, last + 1))
    _audited_before_dropped(audit_path)
    assert verify(audit_path).corrupt is None


def test_an_agent_stopped_while_its_audit_file_is_full_audits_the_rows_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped while behind (the batch records let go): the next start audits every spooled row above the
    file's last record once."""
    _fast_audit_retries(monkeypatch, 2048)
    audit_path = tmp_path / "audit.log"

    async def full_spell() -> bool:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path), flush_interval_s=0.01) as spool:
            assert spool.audit is not None
            await _add(spool, 0, 3)
            await spool.flush()
            disk = spool.audit._fh = AuditDisk(spool.audit._fh)       # type: ignore[assignment]
            disk.writes = 0
            for i in range(1, 60):
                await _add(spool, i, 3)
                await spool.flush()
            return spool.audit.behind

    async def restart() -> int:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            return spool.depth

    assert run(full_spell())
    assert run(restart()) == 180
    assert sorted(read_audit(audit_path).readings) == list(range(1, 181))
    summary = verify(audit_path)
    assert summary.corrupt is None and summary.readings == 180


def test_an_agent_started_while_its_audit_file_is_full_starts_and_audits_the_rows_once_it_can(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows missing from the audit log at start (records let go before a stop) and a disk still full: the
    spool opens anyway (polling goes on), behind; once the file takes writes the rows are audited, once."""
    _fast_audit_retries(monkeypatch, 2048)
    audit_path = tmp_path / "audit.log"

    async def full_spell() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path), flush_interval_s=0.01) as spool:
            assert spool.audit is not None
            disk = spool.audit._fh = AuditDisk(spool.audit._fh)       # type: ignore[assignment]
            disk.writes = 0
            for i in range(40):
                await _add(spool, i, 3)
                await spool.flush()
            assert spool.audit.behind

    disks: list[AuditDisk] = []
    original = Spool._reaudit_sync

    def reaudit_on_a_full_disk(self: Spool, **kwargs: object) -> tuple[int, bool]:
        if not disks:
            assert self.audit is not None
            disks.append(AuditDisk(self.audit._fh))
            disks[0].writes = 0
            self.audit._fh = disks[0]                                   # type: ignore[assignment]
        return original(self, **kwargs)

    async def restart() -> tuple[bool, bool, int]:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path), flush_interval_s=0.01) as spool:
            assert spool.audit is not None
            behind_at_start = spool.audit.behind
            disks[0].writes = None
            await asyncio.sleep(0.05)
            await _add(spool, 40, 3)
            await spool.flush()
            return behind_at_start, spool.audit.behind, spool._depth

    run(full_spell())
    monkeypatch.setattr(Spool, "_reaudit_sync", reaudit_on_a_full_disk)
    behind_at_start, behind_after, depth = run(restart())
    assert behind_at_start and not behind_after and depth == 123
    assert sorted(read_audit(audit_path).readings) == list(range(1, 124))
    summary = verify(audit_path)
    assert summary.corrupt is None and summary.readings == 123


def _batch_records_per_seq(path: Path) -> dict[int, int]:
    """How many ``b`` records of the file audit each seq (a reading audited twice counts 2)."""
    counts: dict[int, int] = {}
    for line in path.read_bytes().splitlines():
        body = decode_record(line)
        if body["k"] == "b":
            for seq in range(body["seq_first"], body["seq_last"] + 1):
                counts[seq] = counts.get(seq, 0) + 1
    return counts


@pytest.mark.parametrize("stopped_while_full", [False, True])
def test_an_agent_started_with_a_torn_audit_tail_and_a_quarantined_row_on_a_full_disk_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_while_full: bool) -> None:
    """A crash left a torn record at the audit's tail and a spool row with an unusable seq range, and the
    audit's disk is full at the next start: the ``repair`` and ``quar`` records do not fit. The spool opens
    anyway (the tail cut, both records held), rows keep committing (the batch records let go past the
    bound), and once the file takes writes, in that run or after a stop while still full, the held
    records and every row's record land in order: ``verify`` finds no corrupt record, one repair, one
    quarantine, and the file audits every reading exactly once (none of the records kept at the cut again)."""
    _fast_audit_retries(monkeypatch, 512)
    audit_path = tmp_path / "audit.log"
    full = full_disk_switch(monkeypatch)

    async def before_the_crash() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            for i in range(5):
                await _add(spool, i, 2)

    run(before_the_crash())
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    db.execute("UPDATE batches SET seq_last = 'x' WHERE seq_first = 5")
    db.commit()
    db.close()
    whole = audit_path.read_bytes()
    audit_path.write_bytes(whole + b"0123abcd {\"k\":\"b\",\"seq_fi")       # the crash tore a record

    async def restart() -> tuple[int, bool, bool]:
        full[0] = True
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path),
                         flush_interval_s=0.01) as spool:
            assert spool.audit is not None
            size_while_full = audit_path.stat().st_size
            for i in range(5, 10):
                await _add(spool, i, 2)
                await spool.flush()
            still_full = audit_path.stat().st_size == size_while_full
            behind = spool.audit.behind
            if not stopped_while_full:
                full[0] = False
                await asyncio.sleep(0.05)                               # the back-off ends
                await _add(spool, 10, 2)
                await spool.flush()
            return size_while_full, still_full, behind

    async def start_with_space() -> None:
        full[0] = False
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            await _add(spool, 10, 2)

    size_while_full, still_full, behind = run(restart())
    assert size_while_full == len(whole) and still_full                # the torn tail cut, nothing written while full
    assert behind                                                       # the held batch records were let go
    if stopped_while_full:
        run(start_with_space())
    summary = verify(audit_path)
    assert summary.corrupt is None and summary.repairs == 1 and summary.quarantined == 1, summary
    assert _batch_records_per_seq(audit_path) == {seq: 1 for seq in range(1, 23)}
    kinds = [decode_record(line)["k"] for line in audit_path.read_bytes().splitlines()]
    assert kinds.index("repair") < kinds.index("quar") < len(kinds) - kinds[::-1].index("b") - 1


def _transactions(statements: list[str]) -> list[list[str]]:
    """The statements SQLite ran, cut into transactions (BEGIN … COMMIT)."""
    out: list[list[str]] = []
    for statement in statements:
        if statement.startswith("BEGIN"):
            out.append([])
        elif out and statement != "COMMIT":
            out[-1].append(statement)
    return out


@pytest.mark.parametrize("deleter", ["ack", "drop", "quarantine"])
def test_held_audit_records_leave_the_table_with_the_mark_of_the_fsync_that_made_them_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deleter: str) -> None:
    """The records taken back from ``audit_held`` at a start on a full disk stay in the table until an fsync
    made them durable, then leave it once, in the transaction that records the audit's new position (a
    crash between the two would have them written again at the next start): here the ack's (which
    fsyncs the audit before its delete) or the size cap's drop (which fsyncs its ``drop`` record first),
    with one DELETE; later transactions and the close delete nothing more. After a quarantine (a row
    found corrupt when leased, its record durable already: its transaction records no new position),
    the next commit that records one is that transaction."""
    from edge_agent.audit import encode_record

    audit_path = tmp_path / "audit.log"

    async def first() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            await _add(spool, 0, 2)

    run(first())
    held = [encode_record({"k": "repair", "bytes": n, "at_offset": 0, "at_ms": 1_764_000_000_000}) for n in (7, 8)]
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    db.executemany("INSERT INTO audit_held (record) VALUES (?)", [(r,) for r in held])
    db.commit()
    db.close()
    statements: list[str] = []
    full = full_disk_switch(monkeypatch)

    async def again() -> None:
        full[0] = True
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path),
                         max_readings=3 if deleter == "drop" else 1_000_000) as spool:
            spool._db.set_trace_callback(statements.append)     # the I/O thread is idle between calls
            full[0] = False
            if deleter == "quarantine":             # the first run's row, read back from the table: its CRC fails
                other = sqlite3.connect(tmp_path / "spool" / "spool.db")
                other.execute("UPDATE batches SET crc = crc + 1 WHERE seq_first = 1")
                other.commit()
                other.close()
                assert await spool.lease(10) == []
                assert spool.quarantined_total == 1
            first_seq = await _add(spool, 1, 2)
            await spool.flush()                 # drop: 4 readings over a cap of 3, the oldest row goes
            if deleter == "ack":
                assert await spool.ack(1, first_seq + 1) == 4    # deletes rows: the audit is fsync'd first
            await _add(spool, 2, 1)
            await spool.flush()

    run(again())
    deleting = [t for t in _transactions(statements) if any(s.startswith("DELETE FROM audit_held") for s in t)]
    assert len(deleting) == 1, deleting
    (transaction,) = deleting
    assert [s for s in transaction if s.startswith("DELETE FROM audit_held")] == ["DELETE FROM audit_held WHERE n <= 2"]
    assert any("'audit_offset'" in s for s in transaction), transaction        # the new mark, in the same one
    deleted = {"ack": "DELETE FROM batches WHERE seq_first >= 1", "drop": "DELETE FROM batches WHERE seq_first <= 2",
               "quarantine": "INSERT INTO batches (seq_first, seq_last, accepted_ms, data, crc) VALUES (3, 4,"}[deleter]
    assert any(s.startswith(deleted) for s in transaction), transaction
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    assert db.execute("SELECT COUNT(*) FROM audit_held").fetchone()[0] == 0
    db.close()
    lines = audit_path.read_bytes().splitlines(keepends=True)
    assert [lines.count(record) for record in held] == [1, 1]


def test_held_audit_records_in_the_spool_are_checked_written_first_once_and_deleted(tmp_path: Path) -> None:
    """``audit_held`` is read back as hostile input: a whole, CRC-checked event record goes first into the
    audit log, once (the table is emptied once it is durable); torn, corrupt, oversized, non-event or
    non-bytes entries are left out with an error, and nothing else is affected."""
    from edge_agent.audit import batch_record, encode_record

    audit_path = tmp_path / "audit.log"

    async def first() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            await _add(spool, 0, 2)

    run(first())
    good = encode_record({"k": "repair", "bytes": 7, "at_offset": 0, "at_ms": 1_764_000_000_000})
    one = ReadingBatch()
    one.add(1, "a", "p", 1.0, "u", "good", "s")
    batch = batch_record("s1", one.sequenced(9, 1))
    body = decode_record(batch[:-1])
    site_first = encode_record({"site": body.pop("site"), **body})      # a whole batch record, "k" not first
    cont = encode_record({"k": "cont", "prev_crc": "0badc0de", "last_seq": 1, "at_ms": 1})
    hostile = [good[:-5] + b"\n", b"0000beef not a record\n", b"x" * 70_000 + b"\n", batch, site_first, cont,
               "text, not bytes", good[:-1], good]
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    db.executemany("INSERT INTO audit_held (record) VALUES (?)", [(r,) for r in hostile])
    db.commit()
    db.close()
    size_before = audit_path.stat().st_size

    async def again() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            await _add(spool, 1, 2)

    run(again())
    run(again())                                                        # taken back once only
    added = audit_path.read_bytes()[size_before:].splitlines(keepends=True)
    assert added[0] == good and added.count(good) == 1, added[:3]
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    assert db.execute("SELECT COUNT(*) FROM audit_held").fetchone()[0] == 0
    db.close()
    summary = verify(audit_path)
    assert summary.corrupt is None and summary.repairs == 1 and summary.readings == 6, summary


def test_held_audit_records_made_durable_just_before_a_sigkill_are_not_written_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop while the audit file is full keeps a ``cmd`` record in ``audit_held``. The next run starts on
    the still-full disk, the disk frees, a command's record fsyncs the held one with it, and the agent is
    SIGKILLed before any transaction deletes it from the table: the start after finds it in the file
    after the recorded position and does not write it again (each command audited once)."""
    _fast_audit_retries(monkeypatch, 1 << 20)
    audit_path = tmp_path / "audit.log"
    full = full_disk_switch(monkeypatch)
    cmd = {"decision": "rejected", "reason": "x", "bytes": 1, "sha256": "0" * 64}

    async def stop_while_full() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            full[0] = True
            with pytest.raises(AuditError):
                await spool.audit_event("cmd", {"id": "c1", **cmd})

    run(stop_while_full())
    script = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        import pytest
        import edge_agent.audit as audit_module
        from edge_agent.audit import AuditLog
        from edge_agent.spool import Spool
        from tests.edge_agent.audit_helpers import full_disk_switch
        mp = pytest.MonkeyPatch()
        mp.setattr(audit_module, "RETRY_MIN_S", 0.01)
        full = full_disk_switch(mp)
        async def main():
            full[0] = True
            spool = Spool({str(tmp_path / "spool")!r}, site="s1", audit=AuditLog({str(audit_path)!r}))
            await spool.open()
            full[0] = False
            await asyncio.sleep(0.05)
            await spool.audit_event("cmd", {{"id": "c2", **{cmd!r}}})
            os.kill(os.getpid(), signal.SIGKILL)          # before any transaction deletes audit_held's row
        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True,
                          timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]

    async def start_again() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)):
            pass

    full[0] = False
    run(start_again())
    ids = [body["id"] for body in map(decode_record, audit_path.read_bytes().splitlines()) if body["k"] == "cmd"]
    assert ids == ["c1", "c2"], ids
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    assert db.execute("SELECT COUNT(*) FROM audit_held").fetchone()[0] == 0
    db.close()


def test_held_records_past_what_a_start_takes_back_come_back_over_later_starts_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start takes back the oldest held records only (here 2 at a time). Taken back on a still-full disk
    and handed over again at the stop, they keep their rows, before those not taken back and the stop's
    own; on a disk with room they are written and the next start takes the next ones: each written once,
    oldest first."""
    import edge_agent.spool as spool_module
    _fast_audit_retries(monkeypatch, 1 << 20)
    monkeypatch.setattr(spool_module, "_MAX_HELD_RECORDS", 2)
    audit_path = tmp_path / "audit.log"
    full = full_disk_switch(monkeypatch)
    cmd = {"decision": "rejected", "reason": "x", "bytes": 1, "sha256": "0" * 64}

    async def run_once(ids: list[str], *, full_at_start: bool) -> None:
        full[0] = full_at_start
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            full[0] = True
            for command_id in ids:
                with pytest.raises(AuditError):
                    await spool.audit_event("cmd", {"id": command_id, **cmd})
            full[0] = bool(ids) or full_at_start

    def table() -> list[str]:
        db = sqlite3.connect(tmp_path / "spool" / "spool.db")
        rows = [decode_record(record[:-1])["id"] for (record,) in db.execute("SELECT record FROM audit_held ORDER BY n")]
        db.close()
        return rows

    def in_file() -> list[str]:
        return [body["id"] for body in map(decode_record, audit_path.read_bytes().splitlines()) if body["k"] == "cmd"]

    run(run_once(["c1", "c2", "c3"], full_at_start=False))
    assert table() == ["c1", "c2", "c3"] and in_file() == []
    run(run_once(["c4"], full_at_start=True))               # c1, c2 taken back but not written: kept in place
    assert table() == ["c1", "c2", "c3", "c4"] and in_file() == []
    run(run_once([], full_at_start=False))                  # room: c1, c2 written; c3, c4 wait
    assert in_file() == ["c1", "c2"] and table() == ["c3", "c4"]
    run(run_once([], full_at_start=False))
    assert in_file() == ["c1", "c2", "c3", "c4"] and table() == []


def test_event_records_of_an_audit_log_that_could_not_be_cut_back_are_kept_for_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write whose file cannot even be cut back leaves the log writing nothing more in this run
    (it may hold a part of what it wrote). The event records of that run are kept in ``audit_held`` all the
    same and the next start writes each once: a command carried out is never missing from the audit."""
    _fast_audit_retries(monkeypatch, 1 << 20)
    audit_path = tmp_path / "audit.log"
    full = full_disk_switch(monkeypatch)
    cmd = {"decision": "rejected", "reason": "x", "bytes": 1, "sha256": "0" * 64}
    real_ftruncate = os.ftruncate

    def ftruncate(fd: int, length: int) -> None:
        raise OSError(5, "Input/output error")

    async def broken_run() -> bool:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            assert spool.audit is not None
            full[0] = True
            monkeypatch.setattr(os, "ftruncate", ftruncate)
            for command_id in ("c1", "c2"):
                with pytest.raises(AuditError):
                    await spool.audit_event("cmd", {"id": command_id, **cmd})
            monkeypatch.setattr(os, "ftruncate", real_ftruncate)
            return spool.audit.broken

    assert run(broken_run())
    full[0] = False

    async def start() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)):
            pass

    run(start())
    ids = [body["id"] for body in map(decode_record, audit_path.read_bytes().splitlines()) if body["k"] == "cmd"]
    assert ids == ["c1", "c2"], ids


def test_an_audit_file_that_cannot_be_read_for_held_records_stops_the_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking held records back needs the audit file read after the recorded position: when that read
    fails the open fails (nothing decided, no newer position recorded), rather than write them twice."""
    import edge_agent.audit as audit_module
    _fast_audit_retries(monkeypatch, 1 << 20)
    audit_path = tmp_path / "audit.log"
    full = full_disk_switch(monkeypatch)

    async def stop_while_full() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            full[0] = True
            with pytest.raises(AuditError):
                await spool.audit_event("cmd", {"id": "c1", "decision": "rejected", "reason": "x", "bytes": 1,
                                                "sha256": "0" * 64})

    run(stop_while_full())
    full[0] = False

    def unreadable(self: AuditLog, records: list[bytes], start: int) -> set[bytes]:
        raise AuditError(f"audit log {self.path}: cannot read (Input/output error)")

    monkeypatch.setattr(audit_module.AuditLog, "find_lines", unreadable)
    with pytest.raises(AuditError, match="cannot read"):
        run(Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)).open())
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    assert db.execute("SELECT COUNT(*) FROM audit_held").fetchone()[0] == 1
    db.close()


def test_a_drop_record_withdrawn_after_the_log_broke_is_not_kept_for_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size cap's ``drop`` record cannot be written and the file cannot be cut back: the rows are not
    dropped and the record is withdrawn; it must not come back from ``audit_held`` at the next start,
    announcing a drop of rows that are still spooled (and will be published)."""
    import errno

    import edge_agent.audit as audit_module
    _fast_audit_retries(monkeypatch, 1 << 20)
    audit_path = tmp_path / "audit.log"
    full = full_disk_switch(monkeypatch)
    real_event = audit_module.AuditLog.event

    def event(self: AuditLog, kind: str, **fields: object) -> bytes:
        if kind == "drop":
            full[0] = True

            def ftruncate(fd: int, length: int) -> None:
                raise OSError(errno.EROFS, "Read-only file system")
            monkeypatch.setattr(os, "ftruncate", ftruncate)
        return real_event(self, kind, **fields)

    async def over_the_cap() -> bool:
        async with Spool(tmp_path / "spool", site="s1", max_readings=2, audit=AuditLog(audit_path)) as spool:
            assert spool.audit is not None
            for i in range(2):
                await _add(spool, i)
                await spool.flush()
            monkeypatch.setattr(audit_module.AuditLog, "event", event)
            await _add(spool, 2)
            await spool.flush()
            return spool.audit.broken

    assert run(over_the_cap())
    monkeypatch.undo()

    async def start() -> list[int]:
        async with Spool(tmp_path / "spool", site="s1", max_readings=100, audit=AuditLog(audit_path)) as spool:
            return _seqs(await spool.lease(10))

    assert run(start()) == [1, 2, 3]
    assert [body for body in map(decode_record, audit_path.read_bytes().splitlines()) if body["k"] == "drop"] == []
