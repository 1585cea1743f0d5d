"""Helpers for the audit-log tests: the audit file on a disk that may be full."""

from __future__ import annotations

import errno

import pytest

from edge_agent.audit import AuditLog


class AuditDisk:
    """The audit file on a disk that may be full: ``writes`` is how many more writes it takes (None: all)."""

    def __init__(self, fh: object) -> None:
        self.fh = fh
        self.writes: int | None = None

    def write(self, view: memoryview) -> int:
        if self.writes is not None:
            if self.writes <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.writes -= 1
        return self.fh.write(view)                                      # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.fh, name)


def full_disk_switch(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Put every audit file opened from now on a disk that is full while the returned flag's ``[0]``
    is True (every write fails with ENOSPC), and takes writes again once it is False."""
    full = [False]
    real_write = AuditLog._write

    def write(self: AuditLog) -> None:
        if self._fh is not None:
            if not isinstance(self._fh, AuditDisk):
                self._fh = AuditDisk(self._fh)                          # type: ignore[assignment]
            self._fh.writes = 0 if full[0] else None                    # type: ignore[union-attr]
        real_write(self)

    monkeypatch.setattr(AuditLog, "_write", write)
    return full
