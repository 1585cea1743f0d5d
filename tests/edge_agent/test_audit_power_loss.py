"""Power loss with holes in the audit log's unsynced region, and the order of audit fsyncs and deletes.

Audit records are written after each spool commit but fsync'd only before rows leave the spool, at
least every ``SYNC_INTERVAL_S`` / ``SYNC_BYTES``, and at close; the spool records in ``meta`` the
audit file's identity and the offset (and seq) of the last fsync, in the transaction that deletes rows.
A power loss can keep a later page of the unsynced region and lose an earlier one: these tests write
commits, zero, garble or tear records after the recorded offset (hypothesis chooses where), restart, and
check that ``verify`` finds every committed reading audited exactly once, the file cut at the first bad
record with a ``repair`` record saying where; and that no row is ever deleted while its record is not
durable (an fsync that fails keeps every row).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge_agent.audit as audit_module
from edge_agent.audit import AuditLog, decode_record, read_audit, verify
from edge_agent.batch import ReadingBatch
from edge_agent.errors import AuditError
from edge_agent.spool import Spool


def _batch(i: int, n: int = 3) -> ReadingBatch:
    batch = ReadingBatch()
    for k in range(n):
        batch.add(1_764_000_000_000 + i, "tx1", f"p{k}", 50.0 + i + k, "degC", "good", f"SENSOR_{k:02d}")
    return batch


def _meta(directory: Path) -> dict[str, int]:
    db = sqlite3.connect(directory / "spool" / "spool.db")
    try:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()


def _records(path: Path, start: int) -> list[tuple[int, int]]:
    """(offset, length with newline) of each line from ``start``."""
    return _records_of(path.read_bytes(), start)


def _records_of(data: bytes, start: int) -> list[tuple[int, int]]:
    out, offset = [], start
    for line in data[start:].split(b"\n")[:-1]:
        out.append((offset, len(line) + 1))
        offset += len(line) + 1
    return out


async def _abandon(spool: Spool) -> None:
    """The power goes: no close, no last fsync, nothing more written."""
    assert spool._executor is not None
    spool._executor.shutdown(wait=True)
    spool._executor = None
    if spool._timer is not None:
        spool._timer.cancel()
    assert spool.audit is not None and spool.audit._fh is not None and spool._db is not None
    spool.audit._fh.close()
    spool._db.close()


def _crash_with_unsynced_records(directory: Path, *, before: int = 3, after: int = 6, n: int = 3) -> tuple[int, int]:
    """Commits, an ack (audit fsync'd, its offset recorded in meta with the delete), then ``after`` more
    commits whose records are written but not fsync'd, and the power goes. Returns (the readings committed,
    the readings left in the spool)."""

    async def go() -> tuple[int, int]:
        spool = Spool(directory / "spool", site="s1", audit=AuditLog(directory / "audit.log"))
        await spool.open()
        for i in range(before):
            await spool.append(_batch(i))
            await spool.append(_batch(i, 2))
            await spool.flush()
        leased = await spool.lease(5)
        await spool.ack(leased[0].seq_first, leased[-1].seq_last)
        for i in range(before, before + after):
            await spool.append(_batch(i, n))
            await spool.flush()
        committed, depth = spool.next_seq - 1, spool.depth
        await _abandon(spool)
        return committed, depth

    return asyncio.run(go())


def _restart(directory: Path) -> tuple[int, int]:
    """Open and close the spool again; (its depth, the bytes its audit log's open checked)."""

    async def go() -> tuple[int, int]:
        audit = AuditLog(directory / "audit.log")
        async with Spool(directory / "spool", site="s1", audit=audit) as spool:
            return spool.depth, audit.scanned

    return asyncio.run(go())


def _damage(path: Path, offset: int, length: int, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "zero":
        data[offset:offset + length] = bytes(length)
    elif how == "garble":
        for k in range(offset + 9, offset + length - 1, 7):
            data[k] ^= 0x5A
    elif how == "torn":
        del data[offset + length // 2:]
    path.write_bytes(bytes(data))


def _check_audited_once_and_cut_at(directory: Path, committed: int, cut_at: int, before: bytes) -> None:
    audit_path = directory / "audit.log"
    summary = verify(audit_path)
    assert summary.ok, summary.lines()
    assert (summary.readings, summary.seq_min, summary.seq_max) == (committed, 1, committed), summary.lines()
    assert sorted(read_audit(audit_path).readings) == list(range(1, committed + 1))
    assert summary.repairs == 1
    data = audit_path.read_bytes()
    assert data[:cut_at] == before[:cut_at]            # nothing before the first bad record changed
    repair = decode_record(data[cut_at:].split(b"\n")[0])
    assert repair["k"] == "repair" and repair["at_offset"] == cut_at


@pytest.fixture(autouse=True)
def _no_timed_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1 s audit fsync would make what is unsynced depend on how fast the shared machine runs."""
    monkeypatch.setattr(audit_module, "SYNC_INTERVAL_S", 3600.0)


@pytest.mark.parametrize("how,which", [("zero", "middle"), ("garble", "middle"), ("torn", "last"),
                                       ("zero", "region"), ("zero", "first")])
def test_a_hole_in_the_unsynced_records_is_cut_and_its_readings_audited_again(tmp_path: Path, how: str,
                                                                              which: str) -> None:
    committed, depth = _crash_with_unsynced_records(tmp_path)
    audit_path = tmp_path / "audit.log"
    offset = _meta(tmp_path)["audit_offset"]
    region = _records(audit_path, offset)
    assert len(region) >= 6 and 0 < offset              # the later commits' records, none fsync'd
    before = audit_path.read_bytes()
    if which == "region":
        cut_at = offset
        _damage(audit_path, offset, len(before) - offset, how)
    else:
        at, length = region[{"first": 0, "middle": len(region) // 2, "last": -1}[which]]
        cut_at = at
        _damage(audit_path, at, length, how)
    assert _restart(tmp_path)[0] == depth                # the spool kept every unacked row
    _check_audited_once_and_cut_at(tmp_path, committed, cut_at, before)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_wherever_the_holes_fall_every_committed_reading_is_audited_once(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(audit_module, "SYNC_INTERVAL_S", 3600.0)
            committed, depth = _crash_with_unsynced_records(directory, after=data.draw(st.integers(1, 8)))
            audit_path = directory / "audit.log"
            region = _records(audit_path, _meta(directory)["audit_offset"])
            holes = sorted(data.draw(st.sets(st.integers(0, len(region) - 1), min_size=1, max_size=3)))
            before = audit_path.read_bytes()
            for index in reversed(holes):               # from the end: a torn one shortens the file
                how = data.draw(st.sampled_from(["zero", "garble", "torn" if index == len(region) - 1 else "zero"]))
                _damage(audit_path, *region[index], how)
            assert _restart(directory)[0] == depth
            _check_audited_once_and_cut_at(directory, committed, region[holes[0]][0], before)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_lost_page_in_the_unsynced_records_is_cut_at_the_first_record_it_touches(data: st.DataObject) -> None:
    """The page cache written back out of order: one 4 KiB page of the file (aligned as the disk has it) reads
    as zeros, the pages after it survived."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(audit_module, "SYNC_INTERVAL_S", 3600.0)
            committed, depth = _crash_with_unsynced_records(directory, after=12, n=150)
            audit_path = directory / "audit.log"
            offset = _meta(directory)["audit_offset"]
            size = audit_path.stat().st_size
            pages = range(offset // 4096 + 1, (size - 1) // 4096)  # whole pages inside the unsynced region
            assert len(pages) >= 3
            page = data.draw(st.sampled_from(pages))
            before = audit_path.read_bytes()
            _damage(audit_path, page * 4096, 4096, "zero")
            cut_at = next(at for at, length in _records_of(before, offset) if at + length > page * 4096)
            assert _restart(directory)[0] == depth
            _check_audited_once_and_cut_at(directory, committed, cut_at, before)


def test_a_restart_after_a_clean_shutdown_checks_nothing_beyond_the_recorded_offset(tmp_path: Path) -> None:
    async def write() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(tmp_path / "audit.log")) as spool:
            for i in range(20):
                await spool.append(_batch(i))
                await spool.flush()

    asyncio.run(write())
    audit_path = tmp_path / "audit.log"
    meta = _meta(tmp_path)
    stat = audit_path.stat()
    assert (meta["audit_offset"], meta["audit_seq"]) == (stat.st_size, 60)
    assert (meta["audit_dev"], meta["audit_ino"]) == (stat.st_dev, stat.st_ino)
    assert _restart(tmp_path) == (60, 0)                # nothing read beyond the durable offset
    assert verify(audit_path).readings == 60


def test_after_a_crash_only_the_region_after_the_recorded_offset_is_checked(tmp_path: Path) -> None:
    committed, _ = _crash_with_unsynced_records(tmp_path)
    offset = _meta(tmp_path)["audit_offset"]
    size = (tmp_path / "audit.log").stat().st_size
    assert _restart(tmp_path)[1] == size - offset > 0
    summary = verify(tmp_path / "audit.log")
    assert summary.ok and summary.repairs == 0 and summary.readings == committed == 33  # a process crash loses nothing


def test_records_are_not_fsyncd_per_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 commits without acks: the audit file is fsync'd at open and at close, not once per commit."""
    audit_path = tmp_path / "audit.log"
    calls = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if audit_path.exists() and os.path.samestat(os.fstat(fd), os.stat(audit_path)):
            calls.append(fd)
        real_fsync(fd)
    monkeypatch.setattr(audit_module.os, "fsync", fsync)

    async def go() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            for i in range(20):
                await spool.append(_batch(i))
                await spool.flush()
            assert len(calls) == 1                      # the open's
    asyncio.run(go())
    assert len(calls) == 2
    assert verify(audit_path).readings == 60


def test_no_row_is_deleted_while_the_audit_cannot_be_fsyncd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Acks and the size cap's drop wait for the audit fsync; with it failing, every row stays."""
    audit_path = tmp_path / "audit.log"
    failing = {"on": False}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if failing["on"] and os.path.samestat(os.fstat(fd), os.stat(audit_path)):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(audit_module.os, "fsync", fsync)

    def rows() -> int:
        db = sqlite3.connect(tmp_path / "spool" / "spool.db")
        try:
            return db.execute("SELECT COALESCE(SUM(seq_last - seq_first + 1), 0) FROM batches").fetchone()[0]
        finally:
            db.close()

    async def go() -> tuple[int, int]:
        async with Spool(tmp_path / "spool", site="s1", max_readings=12, audit=AuditLog(audit_path)) as spool:
            failing["on"] = True
            for i in range(8):                           # 24 readings against a cap of 12
                await spool.append(_batch(i))
                await spool.flush()                      # committed; the drop waits for the fsync
            assert rows() == 24 and spool.depth == 24 and spool.dropped_total == 0
            leased = await spool.lease(6)
            with pytest.raises(AuditError):
                await spool.ack(leased[0].seq_first, leased[-1].seq_last)   # its delete needs the fsync
            assert rows() == 24 and spool.depth == 18       # 6 acked, their delete waits
            failing["on"] = False
            await spool.append(_batch(8))
            await spool.flush()                          # the kept ack and the cap's drop, after the fsync
            return spool.depth, spool.dropped_total

    depth, dropped = asyncio.run(go())
    assert depth <= 12 and dropped == 27 - 6 - depth
    summary = verify(audit_path)
    assert summary.ok, summary.lines()
    assert summary.readings == 27 and summary.dropped_readings == dropped
    assert sorted(read_audit(audit_path).readings) == list(range(1, 28))


def test_a_cap_drop_of_rows_of_the_same_commit_follows_their_durable_records(tmp_path: Path) -> None:
    """The cap may drop rows of the commit that inserted them: their batch records and the ``drop`` record
    are fsync'd before the delete commits (they used to be written after the transaction)."""
    audit_path = tmp_path / "audit.log"
    seen: list[tuple[int, bytes]] = []

    async def go() -> None:
        audit = AuditLog(audit_path)
        async with Spool(tmp_path / "spool", site="s1", max_readings=6, audit=audit) as spool:
            assert spool._db is not None
            spool._db.set_trace_callback(lambda sql: seen.append((audit.mark().offset, audit_path.read_bytes()))
                                         if sql.startswith("DELETE FROM batches WHERE seq_first <=") else None)
            for i in range(5):
                await spool.append(_batch(i))            # one commit of 15 readings, the cap 6
            await spool.flush()
            assert spool.dropped_total == 9

    asyncio.run(go())
    assert len(seen) == 1
    durable, data = seen[0]
    snapshot = tmp_path / "at-delete.log"
    snapshot.write_bytes(data[:durable])                 # what a power loss at the delete would leave
    summary = verify(snapshot)
    assert summary.ok and summary.readings == 15 and summary.dropped_readings == 9


def test_a_replaced_audit_file_is_checked_whole_and_rows_above_the_recorded_seq_audited(tmp_path: Path) -> None:
    """The file the spool recorded was renamed away (no SIGHUP) and the power went: the new file at the path is
    not the one named in meta, so it is checked whole; rows up to the recorded seq have durable records (in
    the renamed file) and are not audited again, the ones above are."""
    committed, depth = _crash_with_unsynced_records(tmp_path)
    meta = _meta(tmp_path)
    audit_path = tmp_path / "audit.log"
    audit_path.rename(tmp_path / "audit.log.1")
    assert _restart(tmp_path)[0] == depth
    summary = verify(audit_path)
    assert summary.ok and (summary.seq_min, summary.seq_max) == (meta["audit_seq"] + 1, committed)
    assert _meta(tmp_path)["audit_ino"] == audit_path.stat().st_ino


def test_a_reopened_audit_file_is_recorded_at_once(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"

    async def go() -> None:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            await spool.append(_batch(0))
            await spool.flush()
            audit_path.rename(tmp_path / "audit.log.1")
            assert await spool.reopen_audit()
            assert _meta(tmp_path)["audit_ino"] == audit_path.stat().st_ino
            assert _meta(tmp_path)["audit_offset"] == audit_path.stat().st_size > 0    # the cont record

    asyncio.run(go())
    summary = verify([tmp_path / "audit.log.1", audit_path])
    assert summary.ok and summary.links == 1 and summary.readings == 3


def test_acked_rows_leave_with_the_periodic_audit_fsync_not_with_one_each(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Acks every 10 ms while rows stream in: their deletes wait for the audit's periodic fsync instead of
    forcing one each; idle, the acked rows still leave once it falls due."""
    monkeypatch.setattr(audit_module, "SYNC_INTERVAL_S", 0.3)
    audit_path = tmp_path / "audit.log"
    calls = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if audit_path.exists() and os.path.samestat(os.fstat(fd), os.stat(audit_path)):
            calls.append(time.monotonic())
        real_fsync(fd)
    monkeypatch.setattr(audit_module.os, "fsync", fsync)

    async def go() -> tuple[int, float, int]:
        async with Spool(tmp_path / "spool", site="s1", ack_interval_s=0.01, audit=AuditLog(audit_path)) as spool:
            start, opened = time.monotonic(), len(calls)
            for i in range(40):                         # committed in the background, as in the agent
                await spool.append(_batch(i))
                await asyncio.sleep(0.015)
                leased = await spool.lease(100)
                if leased:
                    spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
            streaming, elapsed = len(calls) - opened, time.monotonic() - start
            await spool.flush()                         # on a loaded machine the last batches may wait
            leased = await spool.lease(1000)
            if leased:
                spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
            for _ in range(100):                        # idle: the acks' own commit, once the fsync is due
                if not spool.depth:
                    break
                await asyncio.sleep(0.05)
            return streaming, elapsed, spool.depth

    streaming, elapsed, depth = asyncio.run(go())
    assert 1 <= streaming <= elapsed / 0.3 + 2, (streaming, elapsed)     # one per ack commit was ~40
    assert depth == 0
    summary = verify(audit_path)
    assert summary.ok and summary.readings == 120


def test_a_record_damaged_before_the_recorded_offset_is_reported_not_cut(tmp_path: Path) -> None:
    """The region before the offset was fsync'd: damage there is not a power loss's hole, and cutting it would
    throw away durable records. ``verify`` reports it (totals and the first corrupt record); the start leaves it."""
    committed, _ = _crash_with_unsynced_records(tmp_path)
    audit_path = tmp_path / "audit.log"
    offset = _meta(tmp_path)["audit_offset"]
    at, length = _records(audit_path, 0)[3]
    assert at + length < offset
    _damage(audit_path, at, length, "garble")
    _restart(tmp_path)
    summary = verify(audit_path)
    assert summary.repairs == 0 and summary.corrupt is not None and summary.corrupt.offset == at
    assert summary.readings < committed                  # the damaged record's readings are not counted
    assert audit_path.stat().st_size > offset


def test_reopen_fsyncs_the_folder_of_the_new_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new audit file's name (and logrotate's rename) survive a power loss: the folder is fsync'd."""
    audit_path = tmp_path / "logs" / "audit.log"
    folders: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            folders.append((st.st_dev, st.st_ino))
        real_fsync(fd)
    monkeypatch.setattr(audit_module.os, "fsync", fsync)
    log = AuditLog(audit_path)
    log.open()
    folder = os.stat(audit_path.parent)
    assert folders == [(folder.st_dev, folder.st_ino)]          # created: its name made durable
    log.event("repair", bytes=1, at_offset=0)
    log.sync()
    audit_path.rename(audit_path.with_name("audit.log.1"))
    folders.clear()
    assert log.reopen()
    log.close()
    assert (folder.st_dev, folder.st_ino) in folders
    assert verify([audit_path.with_name("audit.log.1"), audit_path]).links == 1


def _failing_audit_fsync(monkeypatch: pytest.MonkeyPatch, audit_path: Path) -> tuple[dict[str, bool], list[int]]:
    """os.fsync of the audit file raises EIO while ``failing["on"]``; ``tries`` counts those failures."""
    failing, tries = {"on": False}, []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if failing["on"] and os.path.samestat(os.fstat(fd), os.stat(audit_path)):
            tries.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(audit_module.os, "fsync", fsync)
    return failing, tries


def _spooled_seqs(directory: Path) -> list[int]:
    db = sqlite3.connect(directory / "spool.db")
    try:
        return [s for first, last in db.execute("SELECT seq_first, seq_last FROM batches ORDER BY seq_first")
                for s in range(first, last + 1)]
    finally:
        db.close()


def test_an_ack_waiting_for_a_failing_audit_fsync_does_not_hold_back_new_rows(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's fsync fails (EIO) with an ack pending: the new rows still commit at each group commit
    (the ack's delete waits), the disk is tried again with a back-off (not at every commit, each of which
    would write every buffered record again), and once the fsync works the ack's rows leave and every
    reading is audited once."""
    monkeypatch.setattr(audit_module, "SYNC_INTERVAL_S", 0.5)
    audit_path = tmp_path / "audit.log"
    failing, tries = _failing_audit_fsync(monkeypatch, audit_path)

    async def go() -> tuple[int, int]:
        async with Spool(tmp_path / "spool", site="s1", fsync_batch=30, audit=AuditLog(audit_path)) as spool:
            await spool.append(_batch(0))
            await spool.flush()
            failing["on"] = True
            leased = await spool.lease(10)
            spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
            deadline = time.monotonic() + 2.5           # the ack falls due after SYNC_INTERVAL_S
            i = 1
            while time.monotonic() < deadline:
                await spool.append(_batch(i))
                i += 1
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert spool._committed_seq >= 3 * i - 6, (spool._committed_seq, 3 * i)   # at most one group waits
            assert _spooled_seqs(tmp_path / "spool")[:3] == [1, 2, 3]                 # the ack's delete waits
            assert len(tries) <= 4, tries                   # 1 s, 2 s back-off: not one try per commit
            failing["on"] = False
            await spool.flush()
            return 3 * i, spool.depth

    accepted, depth = asyncio.run(go())
    assert depth == accepted - 3 and _spooled_seqs(tmp_path / "spool") == list(range(4, accepted + 1))
    assert verify(audit_path).ok and sorted(read_audit(audit_path).readings) == list(range(1, accepted + 1))


def test_close_commits_every_buffered_row_when_the_audit_cannot_be_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The audit's fsync fails (ENOSPC) with an ack pending and rows buffered: close commits the rows (their
    records go out at the next start's re-audit) and reports the failure in the log, not by raising (the
    stop completes); only the ack is lost (its rows are sent again)."""
    audit_path = tmp_path / "audit.log"
    failing, _ = _failing_audit_fsync(monkeypatch, audit_path)

    async def go() -> None:
        spool = Spool(tmp_path / "spool", site="s1", flush_interval_s=30, audit=AuditLog(audit_path))
        await spool.open()
        await spool.append(_batch(0))
        await spool.flush()
        failing["on"] = True
        leased = await spool.lease(10)
        spool.ack_nowait(leased[0].seq_first, leased[-1].seq_last)
        for i in range(1, 5):
            await spool.append(_batch(i))               # accepted: seqs 4..15, buffered
        await spool.close()                             # the audit log's own close cannot sync: logged

    asyncio.run(go())
    assert _spooled_seqs(tmp_path / "spool") == list(range(1, 16))
    assert any(r.levelname == "ERROR" and "the next start checks the audit log" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    failing["on"] = False

    async def restart() -> int:
        async with Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path)) as spool:
            return spool.depth
    assert asyncio.run(restart()) == 15
    assert verify(audit_path).ok and sorted(read_audit(audit_path).readings) == list(range(1, 16))


def _deliver_all_but_the_last(directory: Path, commits: int = 20) -> None:
    """``commits`` commits of 3 readings; every row but the last one's acked and deleted; a clean close."""

    async def go() -> None:
        async with Spool(directory / "spool", site="s1", audit=AuditLog(directory / "audit.log")) as spool:
            for i in range(commits):
                await spool.append(_batch(i))
                await spool.flush()
            leased = await spool.lease(3 * commits - 3)
            await spool.ack(leased[0].seq_first, leased[-1].seq_last)
            assert spool.depth == 3
    asyncio.run(go())


def test_a_copied_audit_file_is_matched_by_content_and_old_damage_is_reported_not_cut(tmp_path: Path) -> None:
    """The audit file copied back (a restore, a move to another disk: same bytes, another inode): the mark's
    position is found by the CRC of the record ending there, so a record damaged long ago in the fsync'd
    region is left for ``verify`` to report; cutting there deleted every later record, of rows long
    delivered and deleted, and ``verify`` then said OK."""
    _deliver_all_but_the_last(tmp_path)
    audit_path = tmp_path / "audit.log"
    at, length = _records(audit_path, 0)[3]
    _damage(audit_path, at, length, "garble")
    shutil.copy2(audit_path, tmp_path / "copy")
    (tmp_path / "copy").replace(audit_path)
    before = audit_path.read_bytes()
    assert _restart(tmp_path) == (3, 0)                 # nothing after the recorded offset to check
    assert audit_path.read_bytes() == before
    summary = verify(audit_path)
    assert summary.corrupt is not None and summary.corrupt.offset == at
    assert summary.readings == 57 and (summary.seq_min, summary.seq_max) == (1, 60)


def test_without_the_marks_position_only_the_region_that_can_be_unsynced_is_cut(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark in meta is damaged (or names a position the file lacks): the file is read whole, but only
    its last ``SYNC_BYTES`` can hold records written and not fsync'd (``sync_due`` fsyncs before a write
    would leave more): a torn record there is cut and its row audited again; a record damaged before it
    is durable damage, reported by ``verify``, not cut."""
    monkeypatch.setattr(audit_module, "SYNC_BYTES", 1000)
    _deliver_all_but_the_last(tmp_path)
    audit_path = tmp_path / "audit.log"
    records = _records(audit_path, 0)
    old_at, old_length = records[3]
    _damage(audit_path, old_at, old_length, "garble")
    last_at, last_length = records[-1]                 # the record of the row still spooled: seq 58..60
    assert decode_record(audit_path.read_bytes()[last_at:last_at + last_length - 1])["seq_first"] == 58
    _damage(audit_path, last_at, last_length, "torn")
    db = sqlite3.connect(tmp_path / "spool" / "spool.db")
    with db:
        db.execute("UPDATE meta SET value = -1 WHERE key = 'audit_offset'")
    db.close()
    before = audit_path.read_bytes()
    assert _restart(tmp_path)[0] == 3
    data = audit_path.read_bytes()
    assert data[:last_at] == before[:last_at]
    repair = decode_record(data[last_at:].split(b"\n")[0])
    assert repair["k"] == "repair" and repair["at_offset"] == last_at
    summary = verify(audit_path)
    assert summary.corrupt is not None and summary.corrupt.offset == old_at
    assert summary.readings == 57 and (summary.seq_min, summary.seq_max) == (1, 60)   # 58..60 audited again


def test_a_file_that_cannot_be_cut_back_after_a_failed_fsync_is_not_written_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync fails, then the ftruncate that takes back the unsynced records fails too: those records may
    stay in the file, so writing them again audited their rows twice. The log writes nothing more; the next
    start checks the region from the mark and audits again only the rows whose records are not there."""
    audit_path = tmp_path / "audit.log"
    failing, _ = _failing_audit_fsync(monkeypatch, audit_path)
    real_ftruncate = os.ftruncate

    def ftruncate(fd: int, length: int) -> None:
        if failing["on"]:
            raise OSError(errno.EIO, "Input/output error")
        real_ftruncate(fd, length)
    monkeypatch.setattr(audit_module.os, "ftruncate", ftruncate)

    async def go() -> None:
        spool = Spool(tmp_path / "spool", site="s1", audit=AuditLog(audit_path))
        await spool.open()
        await spool.append(_batch(0))
        await spool.flush()                             # its record written, not fsync'd
        failing["on"] = True
        leased = await spool.lease(10)
        with pytest.raises(AuditError):
            await spool.ack(leased[0].seq_first, leased[-1].seq_last)
        failing["on"] = False
        await spool.append(_batch(1))
        await spool.flush()                             # committed; the log writes nothing more
        with contextlib.suppress(AuditError):           # the log's own close cannot sync
            await spool.close()

    asyncio.run(go())
    batches = [body["seq_first"] for body in map(decode_record, audit_path.read_bytes().splitlines())
               if body["k"] == "b"]
    assert batches == [1]                               # written once (again, it was twice: 1, 1, 4)
    assert _restart(tmp_path)[0] == 6                   # no delete while the log could not be synced
    summary = verify(audit_path)
    assert summary.ok and summary.readings == 6 and (summary.seq_min, summary.seq_max) == (1, 6)
