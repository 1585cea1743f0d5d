"""The audit log across rotation: reopen links the new file to the renamed one; verify checks the chain."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devenv.demo_edge import AgentProcess, SimulatorProcess, write_agent_config
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import LocalPki
from edge_agent.audit import AuditLog, decode_record, rotated_files, verify
from edge_agent.batch import ReadingBatch
from edge_agent.errors import AuditError
from tests.edge_agent.audit_helpers import full_disk_switch

ROOT = Path(__file__).resolve().parents[2]


def _batch(log: AuditLog, seq: int) -> None:
    batch = ReadingBatch()
    batch.add(1_764_000_000_000 + seq, "tx1", "oil_temp", 60.0 + seq, "degC", "good", "SENSOR_01")
    log.batch("s1", batch.sequenced(seq, 1_764_000_000_100))


def _rotating_log(path: Path, files: int, per_file: int = 5) -> list[Path]:
    """Write ``files`` files of ``per_file`` one-reading batches, rotated as logrotate does; oldest first."""
    log = AuditLog(path, clock=lambda: 1_764_000_000.0)
    log.open()
    seq = 0
    for number in range(files):
        for _ in range(per_file):
            seq += 1
            _batch(log, seq)
        log.sync()
        if number < files - 1:
            for older in range(files - 1, 0, -1):            # NAME.1 -> NAME.2, ... then NAME -> NAME.1
                if (path.parent / f"{path.name}.{older}").exists():
                    os.rename(path.parent / f"{path.name}.{older}", path.parent / f"{path.name}.{older + 1}")
            os.rename(path, path.parent / f"{path.name}.1")
            assert log.reopen() is True
    log.close()
    return rotated_files(path)


def test_reopen_starts_the_new_file_with_a_link_and_verify_follows_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "telemetry-audit.log"
    files = _rotating_log(path, files=3)
    assert [f.name for f in files] == [f"{path.name}.2", f"{path.name}.1", path.name]
    first_of_newest = decode_record(path.read_bytes().split(b"\n")[0])
    last_of_previous = files[1].read_bytes().rstrip(b"\n").split(b"\n")[-1]
    assert first_of_newest["k"] == "cont"
    assert first_of_newest["prev_crc"] == last_of_previous[:8].decode()
    assert first_of_newest["last_seq"] == 10
    summary = verify(files)
    assert summary.ok, summary.lines()
    assert (summary.readings, summary.seq_min, summary.seq_max, summary.links) == (15, 1, 15, 2)
    assert "every file continues the one before" in summary.lines()[-1]


def test_reopen_without_rotation_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.open()
    _batch(log, 1)
    assert log.reopen() is False
    _batch(log, 2)
    log.close()
    assert verify(path).readings == 2 and verify(path).kinds == {"b": 2}


def test_verify_refuses_files_out_of_order_or_missing(tmp_path: Path) -> None:
    files = _rotating_log(tmp_path / "audit.log", files=3)
    swapped = verify([files[1], files[0], files[2]])
    assert not swapped.ok and swapped.corrupt_path == files[2]     # it names the CRC of files[1], not files[0]
    assert "does not continue" in swapped.corrupt.reason
    missing = verify([files[0], files[2]])
    assert not missing.ok and missing.corrupt_path == files[2]
    assert "files missing or out of order" in missing.corrupt.reason


def test_a_file_without_link_must_not_skip_seqs(tmp_path: Path) -> None:
    """An agent started after a rotation writes no link: then its readings must continue the seqs."""
    older, newer, gap = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"
    for path, seqs in ((older, range(1, 4)), (newer, range(3, 6)), (gap, range(9, 10))):
        log = AuditLog(path)
        log.open()
        for seq in seqs:
            _batch(log, seq)                # seq 3 twice: re-audited after a crash, the same reading
        log.close()
    assert verify([older, newer]).ok
    broken = verify([older, newer, gap])
    assert not broken.ok and broken.corrupt_path == gap
    assert "resume at seq 9 after seq 5" in broken.corrupt.reason


def test_gzipped_rotations_are_verified_and_a_flipped_byte_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    files = _rotating_log(path, files=3)
    gz = files[0].with_name(files[0].name + ".gz")
    gz.write_bytes(gzip.compress(files[0].read_bytes()))
    files[0].unlink()
    assert rotated_files(path) == [gz, files[1], path]
    assert verify(rotated_files(path)).ok
    data = bytearray(files[1].read_bytes())
    data[20] ^= 0x01
    files[1].write_bytes(bytes(data))
    summary = verify(rotated_files(path))
    assert not summary.ok and summary.corrupt_path == files[1] and summary.corrupt.index == 0


def _rotated_after_one_batch(path: Path) -> AuditLog:
    """A log at ``path`` holding seq 1, fsync'd, then renamed to ``<path>.1`` as logrotate does (not reopened)."""
    log = AuditLog(path)
    log.open()
    _batch(log, 1)
    log.sync()
    os.rename(path, path.parent / f"{path.name}.1")
    return log


def test_a_failed_reopen_keeps_writing_to_the_renamed_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = _rotated_after_one_batch(path)
    path.mkdir()                              # the new file cannot be created
    with pytest.raises(AuditError, match="cannot open"):
        log.reopen()
    _batch(log, 2)
    log.close()
    assert verify(tmp_path / "audit.log.1").readings == 2


def test_a_reopen_whose_link_does_not_fit_uses_the_new_file_and_writes_the_link_first_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotated onto a full disk: the new file is created but its ``cont`` record does not fit. The reopen
    still succeeds (the renamed file is closed, the new one in use, so no caller may think otherwise),
    and once the disk takes writes the link comes first in the new file and the chain verifies."""
    import edge_agent.audit as audit_module
    monkeypatch.setattr(audit_module, "RETRY_MIN_S", 0.01)
    monkeypatch.setattr(audit_module, "RETRY_MAX_S", 0.02)
    path = tmp_path / "audit.log"
    log = _rotated_after_one_batch(path)
    full = full_disk_switch(monkeypatch)
    full[0] = True
    assert log.reopen() is True
    assert path.exists() and path.stat().st_size == 0
    _batch(log, 2)
    full[0] = False
    time.sleep(0.05)
    log.close()
    assert decode_record(path.read_bytes().split(b"\n")[0])["k"] == "cont"
    summary = verify(rotated_files(path))
    assert summary.ok and summary.readings == 2 and summary.links == 1, summary.lines()


def test_cli_verifies_rotated_files_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _rotating_log(path, files=3)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_agent.cli", "audit", "verify", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    result = cli("--path", str(path), "--rotated")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "and 2 rotated files before it (2 links checked): 17 records, 15 readings (seq 1..15)" in result.stdout
    reversed_order = cli("--path", str(path), "--path", str(path) + ".1")
    assert reversed_order.returncode == 1 and "does not continue" in reversed_order.stdout
    nothing = cli("--path", str(tmp_path / "absent.log"), "--rotated")
    assert nothing.returncode == 2 and "neither it nor rotations of it exist" in nothing.stderr


@pytest.mark.integration
def test_the_running_agent_reopens_on_sighup(tmp_path: Path, pki: LocalPki, broker: MosquittoBroker) -> None:
    """`ems-edge run`: rename the audit log, SIGHUP, and the agent goes on in a linked new file."""
    sim = SimulatorProcess(tmp_path, free_port())
    sim.start()
    config = write_agent_config(tmp_path / "site", pki, broker_port=broker.tls_port, modbus_port=sim.port)
    audit = config.parent / "telemetry-audit.log"
    agent = AgentProcess(config)

    def readings(path: Path) -> int:
        return verify(path).readings if path.exists() else 0

    try:
        agent.start()
        _wait_until(lambda: readings(audit) >= 10)
        os.rename(audit, audit.with_name(audit.name + ".1"))
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        _wait_until(lambda: readings(audit) >= 10)
        agent.proc.send_signal(signal.SIGHUP)                 # not rotated: changes nothing
        time.sleep(0.5)
        assert agent.proc.poll() is None
    finally:
        code = agent.stop()
        sim.stop()
    assert code == 0, agent.tail()
    assert decode_record(audit.read_bytes().split(b"\n", 1)[0])["k"] == "cont"
    assert sum(1 for line in audit.read_bytes().splitlines() if b'"k":"cont"' in line) == 1
    summary = verify(rotated_files(audit))
    assert summary.ok and summary.links == 1, summary.lines()
    assert summary.seq_min == 1 and summary.readings == summary.seq_max       # no seq missing across the files


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
