"""The spool's integers, checked when it opens: what its CRCs do not cover.

A spool row's CRC covers its ``data`` only; the seq range, the acceptance time,
the ``next_seq`` counter and the point ids are plain SQLite columns, and SQLite
stores whatever it is given in them (a string, a real, 2**63-1). Read back
unchecked, a text ``seq_last`` stopped the agent with a ``TypeError``, a real
one made the next seq 3.5, and a counter or point id at 2**63-1 made the next
commit fail forever (SQLite INTEGER ends there). :func:`spool_problem` names the
first such value — table, row, column, value — so the spool refuses to open
with that message instead.

Bound: seqs and point ids are at most :data:`MAX_ID` (2**62). A site publishing
a million readings a second needs 146,000 years to reach it, and the point
table grows only with the configured points, so a larger value comes only from
a damaged or edited file; the headroom above it keeps every later ``+ 1`` inside
SQLite's range.
"""

from __future__ import annotations

import sqlite3

from ems_contract.config_file import shorten

__all__ = ["MAX_ID", "spool_problem"]

MAX_ID = 2**62


def spool_problem(db: sqlite3.Connection) -> str | None:
    """The first unusable integer in the tables ``meta``, ``batches`` and ``points`` of an open spool, or None.

    Raises sqlite3.DatabaseError when the file cannot be read (the caller reports it as corrupt).
    """
    row = db.execute("SELECT value FROM meta WHERE key = 'next_seq' AND NOT "
                     "(typeof(value) = 'integer' AND value BETWEEN 1 AND ?)", (MAX_ID,)).fetchone()
    if row is not None:
        return f"table meta: next_seq is {shorten(row[0])}, not an integer 1..2**62"
    row = db.execute("SELECT seq_first, seq_last, accepted_ms FROM batches WHERE NOT ("
                     "seq_first >= 1 AND typeof(seq_last) = 'integer' AND seq_last BETWEEN seq_first AND ? "
                     "AND typeof(accepted_ms) = 'integer') ORDER BY seq_first LIMIT 1", (MAX_ID,)).fetchone()
    if row is not None:
        seq_first, seq_last, accepted_ms = row
        if seq_first < 1:
            return f"table batches: row seq_first {shorten(seq_first)} is below 1"
        if type(accepted_ms) is not int:
            return f"table batches: row seq_first {seq_first} has accepted_ms {shorten(accepted_ms)}, not an integer"
        return (f"table batches: row seq_first {seq_first} has seq_last {shorten(seq_last)}, "
                f"not an integer {seq_first}..2**62")
    row = db.execute("SELECT id FROM points WHERE id NOT BETWEEN 1 AND ? ORDER BY id DESC LIMIT 1",
                     (MAX_ID,)).fetchone()
    if row is not None:
        return f"table points: point id {shorten(row[0])} is not 1..2**62"
    return None
