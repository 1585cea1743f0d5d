"""The audit log: CRC per record, verify finds the first corrupt record, torn tails repaired at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.audit import AuditLog, decode_record, encode_record, read_audit, verify
from edge_agent.batch import ReadingBatch
from edge_agent.errors import AuditError

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, n: int = 10) -> None:
    """``n`` one-reading batches (seq 1..n) and a drop record."""
    log = AuditLog(path, clock=lambda: 1_764_000_000.0)
    log.open()
    for seq in range(1, n + 1):
        batch = ReadingBatch()
        batch.add(1_764_000_000_000 + seq, "tx1", "oil_temp", 60.0 + seq, "degC", "good", "SENSOR_01")
        log.batch("s1", batch.sequenced(seq, 1_764_000_000_100))
    log.event("drop", site="s1", seq_first=1, seq_last=2, count=2)
    log.close()


def _verify_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", "audit", "verify", "--path", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_record_round_trip_and_crc() -> None:
    body = {"k": "drop", "site": "s1", "seq_first": 7, "seq_last": 8, "count": 2, "at_ms": 1}
    line = encode_record(body)
    assert line.endswith(b"\n") and line[8:9] == b" "
    assert decode_record(line[:-1]) == body
    with pytest.raises(ValueError, match="CRC mismatch"):
        decode_record(line[:-1].replace(b"7", b"8"))


def test_verify_counts_a_clean_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path)
    summary = verify(path)
    assert summary.ok
    assert (summary.records, summary.readings, summary.drops, summary.dropped_readings) == (11, 10, 1, 2)
    assert (summary.seq_min, summary.seq_max) == (1, 10)
    result = _verify_cli(path)
    assert result.returncode == 0, result.stderr
    assert "11 records, 10 readings (seq 1..10), 1 drop events (2 readings dropped" in result.stdout


def test_verify_finds_the_first_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path)
    data = bytearray(path.read_bytes())
    lines = data.split(b"\n")
    offset_of_line_5 = sum(len(line) + 1 for line in lines[:4])
    target = offset_of_line_5 + 40                  # inside the JSON of the 5th record
    data[target] ^= 0x04
    later = sum(len(line) + 1 for line in lines[:8]) + 30
    data[later] ^= 0x01                              # a second corruption further on: not the one reported
    path.write_bytes(bytes(data))

    summary = verify(path)
    assert not summary.ok
    assert summary.corrupt is not None
    assert (summary.corrupt.index, summary.corrupt.offset) == (4, offset_of_line_5)
    assert summary.records == 11                     # it still reads to the end and counts
    result = _verify_cli(path)
    assert result.returncode == 1
    assert f"CORRUPT: line 5 (byte offset {offset_of_line_5}): CRC mismatch" in result.stdout


def test_unreadable_log_is_one_line_exit_2(tmp_path: Path) -> None:
    result = _verify_cli(tmp_path / "missing.log")
    assert result.returncode == 2
    assert result.stderr.strip() == f"ems-edge audit: error: audit log {tmp_path / 'missing.log'}: cannot read " \
                                    "(No such file or directory)"
    with pytest.raises(AuditError):
        verify(tmp_path / "missing.log")


def test_torn_last_line_is_cut_and_recorded_at_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 3)
    whole = path.read_bytes()
    torn = encode_record({"k": "r", "seq": 4})[:20]   # power loss in the middle of a write
    path.write_bytes(whole + torn)
    assert not verify(path).ok                        # before repair: the torn record is reported

    log = AuditLog(path)
    log.open()
    assert log.last_seq == 3                          # the spool re-audits seq 4 if it was committed
    log.close()
    summary = verify(path)
    assert summary.ok and summary.repairs == 1 and summary.readings == 3
    assert path.read_bytes().startswith(whole)        # nothing before the torn record changed


def test_unwritable_location_is_an_audit_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AuditError, match=r"audit log .*file/audit.log: cannot open"):
        AuditLog(blocker / "audit.log").open()


def test_batch_records_count_every_reading_and_older_reading_records_still_read(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    older = encode_record({"k": "r", "site": "s1", "seq": 1, "ts_ms": 5, "asset": "tx1", "point": "p0",
                           "sensor": "S0", "value": 1.5, "unit": "kW", "q": "good", "at_ms": 6})
    path.write_bytes(older)                           # a log an agent wrote before batches
    log = AuditLog(path)
    log.open()
    assert log.last_seq == 1
    batch = ReadingBatch()
    for k in range(3):
        batch.add(10 + k, "tx1", f"p{k}", None if k == 1 else float(k), "kW", "stale" if k == 1 else "good", f"S{k}")
    log.batch("s1", batch.sequenced(2, 99))
    log.close()
    summary = verify(path)
    assert (summary.ok, summary.records, summary.readings, summary.seq_min, summary.seq_max) == (True, 2, 4, 1, 4)
    readings = read_audit(path).readings
    assert sorted(readings) == [1, 2, 3, 4]
    assert readings[3] == {"k": "r", "site": "s1", "seq": 3, "ts_ms": 11, "asset": "tx1", "point": "p1",
                           "sensor": "S1", "value": None, "unit": "kW", "q": "stale", "at_ms": 99}
    again = AuditLog(path)
    again.open()
    assert again.last_seq == 4
    again.close()


def test_a_write_cut_short_by_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    """ENOSPC after part of the buffered records reached the file: the part is cut off, the records stay
    buffered, and the next write puts them whole after the last good record (verify finds no torn line)."""
    import errno


    class HalfThenFull:                                 # the file as a disk that fills half-way through a write
        def __init__(self, fh: object) -> None:
            self.fh, self.full = fh, True

        def write(self, view: memoryview) -> int:
            if self.full:
                self.full = False
                self.fh.write(view[: len(view) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(view)

        def fileno(self) -> int:
            return self.fh.fileno()

        def close(self) -> None:
            self.fh.close()

    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.open()
    log.event("repair", bytes=1, at_offset=0)
    log.sync()
    log._fh = HalfThenFull(log._fh)
    log.event("repair", bytes=2, at_offset=0)
    with pytest.raises(AuditError):
        log.sync()
    log.sync()
    log.close()
    summary = verify(path)
    assert summary.corrupt is None and summary.repairs == 2, summary


def test_a_failed_fsync_writes_the_records_again_not_a_bare_fsync(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fsync Linux marks the pages clean: a retried bare fsync would succeed with the records
    perhaps never on disk. The file is cut back to its last durable size and the records written again."""
    import errno

    import edge_agent.audit as audit_module

    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.open()
    log.event("repair", bytes=1, at_offset=0)
    log.sync()
    durable = path.stat().st_size
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(audit_module.os, "fsync", fsync)
    log.event("repair", bytes=2, at_offset=0)
    log.event("repair", bytes=3, at_offset=0)
    with pytest.raises(AuditError, match="Input/output error"):
        log.sync()
    assert path.stat().st_size == durable              # cut back: the two records are buffered again
    log.sync()
    log.close()
    summary = verify(path)
    assert summary.corrupt is None and summary.repairs == 3 and len(calls) >= 2, summary


_LINE = st.lists(st.sampled_from([b"a", b"b", b"-", b"0"]), max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINE, max_size=30), torn=_LINE, picks=st.lists(st.integers(0, 29), max_size=6),
       others=st.lists(_LINE, max_size=3), chunk=st.integers(1, 17), first=st.integers(0, 30))
def test_find_lines_finds_exactly_the_whole_lines_from_the_offset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[bytes], torn: bytes, picks: list[int],
        others: list[bytes], chunk: int, first: int) -> None:
    """``AuditLog.find_lines`` against splitting the whole file: lines cut by chunk boundaries, lines longer
    than any wanted one, a torn last line (never found), a start offset; appends still go to the end."""
    import edge_agent.audit as audit_module
    monkeypatch.setattr(audit_module, "_SCAN_CHUNK", chunk)
    content = b"".join(line + b"\n" for line in lines) + torn
    path = tmp_path / "find.log"
    path.write_bytes(content)
    records = [lines[i] + b"\n" for i in picks if i < len(lines)] + [line + b"\n" for line in others]
    start = sum(len(line) + 1 for line in lines[:first])
    log = AuditLog(path)
    log._fh = os.fdopen(os.open(path, os.O_RDWR | os.O_APPEND), "r+b", buffering=0)
    try:
        found = log.find_lines(records, start)
        log._fh.write(b"Z")
    finally:
        log._fh.close()
    wanted = {record[:-1] for record in records}
    assert found == {line + b"\n" for line in content[start:].split(b"\n")[:-1] if line in wanted}
    assert path.read_bytes() == content + b"Z"


def test_an_open_logs_the_first_damaged_records_it_reads_past_then_their_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A file whose recorded position is not in it is checked whole; damage before its last ``SYNC_BYTES``
    is durable, read past and reported: a file of garbage lines must not write one log line each."""
    import edge_agent.audit as audit_module
    from edge_agent.audit import AuditMark
    path = tmp_path / "audit.log"
    _write(path, 3)
    path.write_bytes(b"0000beef garbage\n" * 50 + path.read_bytes())
    monkeypatch.setattr(audit_module, "SYNC_BYTES", 64)
    log = AuditLog(path)
    log.open(AuditMark(identity=(0, 0), offset=10**9, seq=0, crc=0))     # a position this file does not have
    log.close()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert sum("is damaged" in m for m in errors) == 3, errors
    assert sum("50 damaged records in all" in m for m in errors) == 1, errors
    assert log.last_seq == 3
