"""The command handler's durable state: one SQLite file (``[commands] state_path``), WAL, synchronous FULL.

Tables::

    seen      id, n (arrival order), expires_ms, state (received | writing | done), payload (until done),
              writing_ms (when the write was sent)
    outbox    n, payload: command results not yet acknowledged by the broker (at most 10,000; the oldest go)
    controls  control, last_value, last_written_ms, and the command in force (id, issued_ms, expires_ms)

A seen id is forgotten an hour after its command expired (``_FORGET_AFTER_MS``), never earlier:
when ``max_seen_ids`` unexpired ids are held, ``record`` refuses the new one. Synchronous; the
handler calls it on one executor thread.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import CommandStateError
from ems_contract.config_file import shorten
from ems_runtime.sqlite import transaction

__all__ = ["CommandStore", "ControlState"]

log = logging.getLogger(__name__)

_FORGET_AFTER_MS = 3_600_000       # a seen id is kept this long past its command's expiry
_OUTBOX_MAX = 10_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, n INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
                                 state TEXT NOT NULL, payload BLOB, writing_ms INTEGER);
CREATE INDEX IF NOT EXISTS seen_expiry ON seen (expires_ms);
CREATE TABLE IF NOT EXISTS outbox (n INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS controls (control TEXT PRIMARY KEY, last_value REAL, last_written_ms INTEGER,
                                     active_id TEXT, active_issued_ms INTEGER, active_expires_ms INTEGER);
"""


@dataclass
class ControlState:
    """What the store knows about one control: the last value written and the command in force."""

    last_value: float | None = None
    last_written_ms: int | None = None
    active_id: str | None = None
    active_issued_ms: int | None = None
    active_expires_ms: int | None = None


class CommandStore:
    """The handler's durable state in one SQLite file (WAL, synchronous FULL): seen ids, result outbox,
    controls. Synchronous; the handler calls it on one executor thread."""

    def __init__(self, path: Path, max_seen_ids: int) -> None:
        self.path = path
        self.max_seen_ids = max_seen_ids
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Create or open the file (mode 0600); raises CommandStateError naming it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            os.chmod(self.path, 0o600)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise CommandStateError(f"command state {self.path}: cannot open ({exc})") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "command store not open"
        return self._db

    def seen(self, command_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM seen WHERE id = ?", (command_id,)).fetchone()
        return row[0] if row else None

    def record(self, command_id: str, expires_ms: int, payload: bytes, now_ms: int) -> bool:
        """Record a new id as ``received``; False when the store is full of unexpired ids."""
        db = self.db
        db.execute("DELETE FROM seen WHERE expires_ms < ? AND state = 'done'", (now_ms - _FORGET_AFTER_MS,))
        (count,) = db.execute("SELECT COUNT(*) FROM seen").fetchone()
        if count >= self.max_seen_ids:
            return False
        (n,) = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM seen").fetchone()
        db.execute("INSERT INTO seen (id, n, expires_ms, state, payload) VALUES (?, ?, ?, 'received', ?)",
                   (command_id, n, expires_ms, payload))
        return True

    def mark_writing(self, command_id: str, now_ms: int) -> None:
        self.db.execute("UPDATE seen SET state = 'writing', writing_ms = ? WHERE id = ?", (now_ms, command_id))

    def finish(self, command_id: str | None, result: bytes | None, control: str | None = None,
               state: ControlState | None = None) -> None:
        """In one transaction: the id is done (payload dropped), the result joins the outbox, the control's state."""
        db = self.db
        with transaction(db):
            if command_id is not None:
                db.execute("UPDATE seen SET state = 'done', payload = NULL WHERE id = ?", (command_id,))
            if result is not None:
                db.execute("INSERT INTO outbox (payload) VALUES (?)", (result,))
                (size,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                if size > _OUTBOX_MAX:
                    db.execute("DELETE FROM outbox WHERE n IN (SELECT n FROM outbox ORDER BY n LIMIT ?)",
                               (size - _OUTBOX_MAX,))
                    log.warning("command result outbox over %d: dropped the %d oldest results", _OUTBOX_MAX,
                                size - _OUTBOX_MAX)
            if control is not None and state is not None:
                db.execute("INSERT OR REPLACE INTO controls VALUES (?, ?, ?, ?, ?, ?)",
                           (control, state.last_value, state.last_written_ms, state.active_id,
                            state.active_issued_ms, state.active_expires_ms))

    def unfinished(self) -> list[tuple[str, str, bytes, int | None]]:
        """(id, state, payload, writing_ms) of commands a crash interrupted, oldest first.

        A row that is not what ``record``/``mark_writing`` wrote (a damaged file) is set aside: logged
        by id and field and marked done, so its command is never carried out on a guess."""
        good = []
        for rowid, command_id, state, payload, writing_ms in self.db.execute(
                "SELECT rowid, id, state, payload, writing_ms FROM seen WHERE state IS NOT 'done' ORDER BY n"):
            problem = (f"id {shorten(command_id)} is not text" if type(command_id) is not str else
                       f"state {shorten(state)} is not received or writing" if state not in ("received", "writing")
                       else f"payload is {type(payload).__name__}, not bytes" if type(payload) is not bytes else
                       f"writing_ms {shorten(writing_ms)} is not an integer" if writing_ms is not None
                       and type(writing_ms) is not int else None)
            if problem is None:
                good.append((command_id, state, payload, writing_ms))
                continue
            log.error("command state %s: stored command %s is damaged (%s): set aside, not carried out",
                      self.path, shorten(command_id), problem)
            self.db.execute("UPDATE seen SET state = 'done', payload = NULL WHERE rowid = ?", (rowid,))
        return good

    def controls(self) -> dict[str, ControlState]:
        """Each control's stored state; a damaged row is logged and left out (the control starts unknown,
        as on a first start: the fail-safe still applies)."""
        states = {}
        for control, *values in self.db.execute("SELECT * FROM controls"):
            state = ControlState(*values)
            problem = _control_problem(state)
            if type(control) is str and problem is None:
                states[control] = state
            else:
                log.error("command state %s: control %s is damaged (%s): starting it unknown", self.path,
                          shorten(control), problem or "its name is not text")
        return states

    def outbox(self, limit: int = 50) -> list[tuple[int, bytes]]:
        """The oldest unsent results (a damaged row, whose payload is not bytes, is logged and deleted)."""
        rows = self.db.execute("SELECT n, payload FROM outbox ORDER BY n LIMIT ?", (limit,)).fetchall()
        for n, payload in rows:
            if type(payload) is not bytes:
                log.error("command state %s: result %d in the outbox is %s, not bytes: deleted", self.path, n,
                          type(payload).__name__)
                self.sent(n)
        return [(n, payload) for n, payload in rows if type(payload) is bytes]

    def outbox_size(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def sent(self, n: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE n = ?", (n,))


def _control_problem(state: ControlState) -> str | None:
    """What is wrong with a stored control's fields, or None."""
    value = state.last_value
    if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
        return f"last_value {shorten(value)} is not a finite number"
    for name in ("last_written_ms", "active_issued_ms", "active_expires_ms"):
        if getattr(state, name) is not None and type(getattr(state, name)) is not int:
            return f"{name} {shorten(getattr(state, name))} is not an integer"
    if state.active_id is not None and type(state.active_id) is not str:
        return f"active_id {shorten(state.active_id)} is not text"
    return None
