"""The spool's integers, checked when it opens: what its CRCs do not cover.

A spool row's CRC covers its ``data`` only; the seq range, the acceptance time,
the ``next_seq`` counter and the point and shape ids are plain SQLite columns, and SQLite
stores whatever it is given in them (a string, a real, 2**63-1). Read back
unchecked, a text ``seq_last`` stopped the agent with a ``TypeError``, a real
one made the next seq 3.5, and a counter or point id at 2**63-1 made the next
commit fail forever (SQLite INTEGER ends there). :func:`spool_problem` names the
first unusable ``next_seq``, point or shape id — table, row, value — so the spool refuses
to open with that message instead: every later seq or point depends on them. A
``batches`` row with an unusable seq range or acceptance time concerns only its
own readings: :func:`quarantine_bad_rows` moves it to the ``quarantine`` table as
it is (STYLE.md §8: a damaged row is quarantined, never dropped), as a row whose CRC
does not match is when leased.

Bound: seqs, point and shape ids are at most :data:`MAX_ID` (2**62). A site publishing
a million readings a second needs 146,000 years to reach it, and the point
table grows only with the configured points, so a larger value comes only from
a damaged or edited file; the headroom above it keeps every later ``+ 1`` inside
SQLite's range.
"""

from __future__ import annotations

import sqlite3

from ems_contract.config_file import shorten
from ems_runtime.sqlite import transaction

__all__ = ["MAX_ID", "spool_problem", "quarantine_bad_rows"]

MAX_ID = 2**62


def spool_problem(db: sqlite3.Connection) -> str | None:
    """The first unusable integer in the tables ``meta``, ``points`` and ``shapes`` of an open spool, or None.

    Raises sqlite3.DatabaseError when the file cannot be read (the caller reports it as corrupt).
    """
    row = db.execute("SELECT value FROM meta WHERE key = 'next_seq' AND NOT "
                     "(typeof(value) = 'integer' AND value BETWEEN 1 AND ?)", (MAX_ID,)).fetchone()
    if row is not None:
        return f"table meta: next_seq is {shorten(row[0])}, not an integer 1..2**62"
    for table, name, query in (
            ("points", "point", "SELECT id FROM points WHERE id NOT BETWEEN 1 AND ? ORDER BY id DESC LIMIT 1"),
            ("shapes", "shape", "SELECT id FROM shapes WHERE id NOT BETWEEN 1 AND ? ORDER BY id DESC LIMIT 1")):
        row = db.execute(query, (MAX_ID,)).fetchone()
        if row is not None:
            return f"table {table}: {name} id {shorten(row[0])} is not 1..2**62"
    return None


def quarantine_bad_rows(db: sqlite3.Connection, now_ms: int) -> list[tuple[int, int | None, str]]:
    """Move every ``batches`` row whose seq range or acceptance time is unusable into ``quarantine``, its
    columns as they were plus the reason, in one transaction. Returns (seq_first, seq_last or None when that
    is unusable, reason) of each, in seq order.

    Raises sqlite3.DatabaseError when the file cannot be read or written.
    """
    bad = [(seq_first, seq_last if type(seq_last) is int and seq_first <= seq_last <= MAX_ID else None,
            _batch_problem(seq_first, seq_last, accepted_ms)) for seq_first, seq_last, accepted_ms in
           db.execute("SELECT seq_first, seq_last, accepted_ms FROM batches WHERE NOT (seq_first >= 1 AND "
                      "typeof(seq_last) = 'integer' AND seq_last BETWEEN seq_first AND ? AND "
                      "typeof(accepted_ms) = 'integer') ORDER BY seq_first", (MAX_ID,))]
    if bad:
        with transaction(db):
            db.executemany("INSERT INTO quarantine (seq, seq_last, accepted_ms, data, crc, reason, quarantined_ms) "
                           "SELECT seq_first, seq_last, accepted_ms, data, crc, ?, ? FROM batches WHERE seq_first = ?",
                           [(reason, now_ms, seq_first) for seq_first, _, reason in bad])
            db.executemany("DELETE FROM batches WHERE seq_first = ?", [(seq_first,) for seq_first, _, _ in bad])
    return bad


def _batch_problem(seq_first: int, seq_last: object, accepted_ms: object) -> str:
    if seq_first < 1:
        return f"seq_first {seq_first} is below 1"
    if type(accepted_ms) is not int:
        return f"accepted_ms {shorten(accepted_ms)} is not an integer"
    return f"seq_last {shorten(seq_last)} is not an integer {seq_first}..2**62"
