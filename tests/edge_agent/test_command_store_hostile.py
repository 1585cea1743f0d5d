"""The command handler's durable state (``commands.db``) read back at start-up is hostile until checked.

Whatever a damaged file holds in a control's row or in a seen command's row (a text where a time
goes, a value that is not a number, a payload or an unsent result that is not bytes), the handler
opens, the bad row is set aside by name, the result sender keeps running, and the fail-safe — a
safety function — still writes the safe value after the cloud's silence.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devenv.mosquitto import free_port
from edge_agent.command_store import CommandStore
from edge_agent.simulator import Simulator
from tests.edge_agent.command_helpers import UNIT, writable_config
from tests.edge_agent.test_command_handler import Clock, bench

_hostile = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True), st.text(max_size=6),
                     st.binary(max_size=6), st.sampled_from(["received", "writing", "done", "exp_lim_w", "1e309"]))
_not_null = _hostile.filter(lambda v: v is not None and v == v)      # SQLite stores a NaN as NULL
_CONTROL_COLUMNS = ("last_value", "last_written_ms", "active_id", "active_issued_ms", "active_expires_ms")


async def _scenario(directory: Path, control_row: tuple, seen_row: tuple, result: object) -> None:
    clock = Clock()
    config = writable_config(directory, free_port())
    async with Simulator(config.devices, port=config.devices[0].port) as sim:
        async with bench(directory, clock=clock, sim=sim):
            pass                                   # creates the state file
        db = sqlite3.connect(config.commands.state_path)
        with db:
            db.execute("INSERT INTO controls VALUES ('exp_lim_w', ?, ?, ?, ?, ?)", control_row)
            db.execute("INSERT INTO seen (id, n, expires_ms, state, payload, writing_ms) VALUES ('c1', 1, ?, ?, ?, ?)",
                       seen_row)
            db.execute("INSERT INTO outbox (payload) VALUES (?)", (result,))
        db.close()
        async with bench(directory, clock=clock, sim=sim) as b:
            await b.ticks()
            writes = sim.write_count(UNIT)
            clock.advance(601)                     # the cloud silent beyond silence_timeout_s (600 s)
            await b.ticks()
            assert sim.write_count(UNIT) > writes, "the fail-safe did not write after the silence"
            assert sim.setpoint(UNIT, "EXPORT_LIMIT") == 0.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(*[_hostile] * len(_CONTROL_COLUMNS)),
       st.tuples(_not_null, _not_null,                                     # seen.expires_ms, seen.state
                 st.one_of(_hostile, st.just(b"{}")), _hostile),
       _not_null.filter(lambda v: type(v) is not bytes))  # bytes are a result: the north-bound checks those
def test_any_stored_row_leaves_the_fail_safe_working(control_row: tuple, seen_row: tuple, result: object) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(asyncio.wait_for(_scenario(Path(scratch), control_row, seen_row, result), 60))


@pytest.mark.parametrize("column, value", [("id", b"\x00" * 5_000_000), ("state", b"\x00" * 5_000_000),
                                           ("state", "w" * 5_000_000), ("writing_ms", "9" * 5_000_000)])
def test_a_huge_stored_value_gives_a_short_log_line(tmp_path: Path, caplog, column: str, value: object) -> None:
    """The review's case: a 5M-byte id made a 40M-character log line; each stored value is shown shortened."""
    store = CommandStore(tmp_path / "commands.db", 100)
    store.open()
    store.record("c1", 2**40, b"{}", 0)
    store.db.execute(f"UPDATE seen SET {column} = ?", (value,))                 # noqa: S608 (test constants)
    store.db.execute("INSERT INTO controls VALUES (?, ?, NULL, NULL, NULL, NULL)", ("p_limit", "y" * 5_000_000))
    store.db.execute("INSERT INTO controls VALUES (?, NULL, NULL, NULL, NULL, NULL)", (b"\x01" * 5_000_000,))
    with caplog.at_level(logging.ERROR, logger="edge_agent.command_store"):
        store.unfinished()
        store.controls()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3 and all(len(line) < 1_000 and "\n" not in line for line in lines), [len(x) for x in lines]
    assert "control 'p_limit' is damaged (last_value 'yyyy" in lines[1] and "(5000000 characters)" in lines[1]
