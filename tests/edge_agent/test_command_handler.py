"""The command handler against the real pymodbus simulator, with a real audit log and its durable store.

Counts come from the simulator's own request log (``write_count``): a rejected command
never reaches the device. Clocks are injected, so expiry, rate and silence are exact.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from devenv.mosquitto import free_port
from edge_agent.audit import AuditLog, verify
from edge_agent.commands import CommandHandler, decode_value, encode_value
from edge_agent.config import AgentConfig
from edge_agent.errors import CommandStateError
from edge_agent.metrics import AgentMetrics
from edge_agent.simulator import Behaviour, Simulator
from ems_contract.command import CommandResult, command_topic, decode_result

from tests.edge_agent.command_helpers import SITE, UNIT, command, payload, writable_config

T0 = 1_764_000_000.0
TOPIC = command_topic(SITE)


@dataclass
class Clock:
    now: float = T0
    mono: float = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


@dataclass
class Bench:
    handler: CommandHandler
    sim: Simulator
    clock: Clock
    config: AgentConfig
    audit_path: Path
    published: list[CommandResult] = field(default_factory=list)

    def results(self, command_id: str | None = None) -> list[CommandResult]:
        return [r for r in self.published if command_id is None or r.id == command_id]

    async def send(self, data: bytes) -> None:
        """Queue one message as the MQTT link does and wait until the handler has dealt with it."""
        target = self.handler.handled + 1
        self.handler.submit(TOPIC, data)
        for _ in range(1000):
            if self.handler.handled >= target:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the handler did not take the message")

    async def ticks(self) -> None:
        """Let the handler's loop run a few fail-safe ticks (every 20 ms)."""
        await asyncio.sleep(0.15)

    async def settle(self) -> None:
        """Let the result sender publish what is in the outbox."""
        for _ in range(50):
            await asyncio.sleep(0.01)
            if not await self.handler._db(self.handler.store.outbox_size):
                return

    def audit_kinds(self) -> list[dict]:
        lines = self.audit_path.read_bytes().splitlines()
        return [json.loads(line[9:]) for line in lines]


@asynccontextmanager
async def bench(tmp_path: Path, *, behaviours: dict[int, Behaviour] | None = None, clock: Clock | None = None,
                sim: Simulator | None = None, **config_kwargs) -> AsyncIterator[Bench]:
    port = free_port() if sim is None else sim.port
    config = writable_config(tmp_path, port, **config_kwargs)
    clock = clock or Clock()
    audit_log = AuditLog(tmp_path / "audit.log", clock=lambda: clock.now)
    audit_log.open()

    async def audit(kind: str, fields: dict) -> None:
        audit_log.event(kind, **fields)
        audit_log.sync()

    own_sim = sim is None
    if own_sim:
        sim = Simulator(config.devices, port=port, behaviours=behaviours)
        await sim.start()
    assert sim is not None
    published: list[CommandResult] = []

    async def publish(topic: str, data: bytes) -> None:
        published.append(decode_result(data, topic))

    handler = CommandHandler(config, audit=audit, publish=publish, metrics=AgentMetrics(CollectorRegistry()),
                             clock=lambda: clock.now, monotonic=lambda: clock.mono, tick_s=0.02)
    stop = asyncio.Event()
    try:
        async with handler:
            task = asyncio.create_task(handler.run(stop))
            try:
                yield Bench(handler, sim, clock, config, tmp_path / "audit.log", published)
            finally:
                stop.set()
                await task
    finally:
        audit_log.close()
        if own_sim:
            await sim.stop()


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def _metric(b: Bench, outcome: str) -> float:
    return b.handler.metrics.registry.get_sample_value("ems_edge_commands_total", {"outcome": outcome}) or 0.0


# -- applied ---------------------------------------------------------------------------------------

def test_a_command_within_bounds_is_written_once_read_back_and_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bench(tmp_path) as b:
            cmd = command(12_340.0, now_ms=b.clock.ms)
            await b.send(payload(cmd))
            await b.settle()
            assert b.sim.write_count(UNIT) == 1
            assert b.sim.setpoint(UNIT, "EXPORT_LIMIT") == 12_340.0
            [result] = b.results(cmd.id)
            assert (result.outcome, result.reason, result.readback) == ("applied", None, 12_340.0)
            coil = command(True, control="connect", now_ms=b.clock.ms)
            await b.send(payload(coil))
            await b.settle()
            assert b.sim.write_count(UNIT) == 2 and b.sim.setpoint(UNIT, "CONNECT") == 1.0
            assert b.results(coil.id)[0].outcome == "applied" and b.results(coil.id)[0].readback is True
            kinds = [r["k"] for r in b.audit_kinds()]
            assert kinds.count("cmd") == 2 and kinds.count("write") == 2
            assert _metric(b, "applied") == 2
        summary = verify(tmp_path / "audit.log")
        assert summary.ok and summary.commands == 2 and summary.writes == 2
        assert "2 commands, 2 writes" in summary.lines()[0]
    run(scenario())


def test_a_read_back_that_differs_is_a_failed_outcome(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bench(tmp_path) as b:
            b.handler.readback_points["INV_EXPLIM"] = b.config.point("INV_P")   # reads the wrong register
            cmd = command(5_000.0, now_ms=b.clock.ms)
            await b.send(payload(cmd))
            await b.settle()
            [result] = b.results(cmd.id)
            assert result.outcome == "failed" and "read back" in (result.reason or "")
            assert b.sim.write_count(UNIT) == 1
    run(scenario())


# -- rejected, never written ---------------------------------------------------------------------------

def test_bad_commands_are_rejected_and_never_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bench(tmp_path) as b:
            now = b.clock.ms
            first = command(10_000.0, now_ms=now, ttl_ms=3_600_000)
            await b.send(payload(first))
            assert b.sim.write_count(UNIT) == 1
            b.clock.advance(100)            # the rate limit allows anything within bounds now
            now = b.clock.ms
            cases = {
                "out of bounds": command(60_000.0, now_ms=now),
                "negative": command(-1.0, now_ms=now),
                "expired": command(20_000.0, now_ms=now, issued_ms=now - 120_000, ttl_ms=60_000),
                "duplicate": first,
                "superseded": command(20_000.0, now_ms=now, issued_ms=first.issued_ms - 1, ttl_ms=3_600_000),
                "no point": command(1_000.0, control="gen_lim_w", now_ms=now),
            }
            for case in cases.values():
                await b.send(payload(case))
            wrong_site = command(5_000.0, now_ms=now, site="sub-08")
            await b.send(payload(wrong_site))
            await b.send(b'{"v": 1, "id": "abc", "site": "sub-07"}')
            await b.send(b"\xff\xfe not json")
            await b.settle()
            assert b.sim.write_count(UNIT) == 1, "a rejected command reached the device"
            assert b.sim.setpoint(UNIT, "EXPORT_LIMIT") == 10_000.0
            outcome = {name: [r.outcome for r in b.results(c.id)] for name, c in cases.items()}
            assert outcome == {"out of bounds": ["rejected"], "negative": ["rejected"], "expired": ["expired"],
                               "duplicate": ["applied", "rejected"], "superseded": ["rejected"],
                               "no point": ["rejected"]}
            assert "duplicate" in (b.results(first.id)[1].reason or "")
            assert "outside 0..50000" in (b.results(cases["out of bounds"].id)[0].reason or "")
            assert "site_mismatch" in (b.results(wrong_site.id)[0].reason or "")
            assert [r.outcome for r in b.results("abc")] == ["rejected"]      # malformed, id readable: answered
            assert _metric(b, "ignored") == 1                                  # no id: audited and counted only
            cmd_records = [r for r in b.audit_kinds() if r["k"] == "cmd"]
            assert len(cmd_records) == 1 + len(cases) + 3
            assert [r["k"] for r in b.audit_kinds()].count("write") == 1
    run(scenario())


def test_a_change_faster_than_max_rate_is_rejected(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bench(tmp_path) as b:
            await b.send(payload(command(10_000.0, now_ms=b.clock.ms)))
            b.clock.advance(2.0)                                  # 5 kW/s × 2 s: up to 10 kW of change
            too_fast = command(20_001.0, now_ms=b.clock.ms)
            await b.send(payload(too_fast))
            just_ok = command(20_000.0, now_ms=b.clock.ms)
            await b.send(payload(just_ok))
            await b.settle()
            assert b.results(too_fast.id)[0].outcome == "rejected" and "too fast" in b.results(too_fast.id)[0].reason
            assert b.results(just_ok.id)[0].outcome == "applied"
            assert b.sim.write_count(UNIT) == 2
    run(scenario())


def test_replays_are_rejected_after_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        cmd = command(10_000.0, now_ms=clock.ms)
        async with bench(tmp_path, clock=clock) as b:
            await b.send(payload(cmd))
            sim_writes = b.sim.write_count(UNIT)
            assert sim_writes == 1
        async with bench(tmp_path, clock=clock) as b2:
            await b2.send(payload(cmd))
            await b2.settle()
            assert b2.sim.write_count(UNIT) == 0
            assert [r.outcome for r in b2.results(cmd.id)] == ["rejected"]
    run(scenario())


def test_the_seen_id_store_is_bounded_and_forgets_only_expired_ids(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bench(tmp_path) as b:
            b.handler.store.max_seen_ids = 3
            for _ in range(3):
                b.clock.advance(10)
                await b.send(payload(command(10_000.0, now_ms=b.clock.ms, ttl_ms=5_000)))
            full = command(10_000.0, now_ms=b.clock.ms)
            await b.send(payload(full))
            await b.settle()
            assert b.results(full.id)[0].outcome == "rejected" and "store full" in b.results(full.id)[0].reason
            b.clock.advance(3_700)                                # past expiry + the hour it is remembered
            later = command(0.0, now_ms=b.clock.ms)
            await b.send(payload(later))
            await b.settle()
            assert b.results(later.id)[0].outcome == "applied"
            rows = sqlite3.connect(b.config.commands.state_path).execute("SELECT COUNT(*) FROM seen").fetchone()[0]
            assert rows <= 3
    run(scenario())


# -- crash recovery ---------------------------------------------------------------------------------

def test_a_command_interrupted_while_writing_is_read_back_not_rewritten(tmp_path: Path) -> None:
    """The state says 'writing' (the agent died around the write): the restart reports from the read-back."""
    async def scenario() -> None:
        clock = Clock()
        config = writable_config(tmp_path, free_port())
        async with Simulator(config.devices, port=config.devices[0].port) as sim:
            async with bench(tmp_path, clock=clock, sim=sim) as b:
                cmd = command(7_000.0, now_ms=clock.ms)
                await b.send(payload(cmd))
                lost = command(8_000.0, now_ms=clock.ms + 1000, issued_ms=clock.ms + 1000)
            # Forge the crash: a recorded 'writing' command whose write reached the device, result never made.
            db = sqlite3.connect(config.commands.state_path)
            db.execute("INSERT INTO seen (id, n, expires_ms, state, payload, writing_ms) VALUES (?, 99, ?, 'writing', ?, ?)",
                       (lost.id, lost.expires_ms, payload(lost), clock.ms))
            db.commit()
            db.close()
            await sim_write(sim, config, 8_000.0)
            never = command(9_000.0, now_ms=clock.ms + 2000, issued_ms=clock.ms + 2000)
            db = sqlite3.connect(config.commands.state_path)
            db.execute("INSERT INTO seen (id, n, expires_ms, state, payload, writing_ms) VALUES (?, 100, ?, 'writing', ?, ?)",
                       (never.id, never.expires_ms, payload(never), clock.ms - 5000))
            db.commit()
            db.close()
            writes = sim.write_count(UNIT)
            async with bench(tmp_path, clock=clock, sim=sim) as b2:
                await b2.settle()
                assert sim.write_count(UNIT) == writes, "a command found 'writing' was written again"
                assert b2.results(lost.id)[0].outcome == "applied"      # the device holds 8000: it was written
                assert b2.results(lost.id)[0].readback == 8_000.0
                assert b2.results(never.id)[0].outcome == "failed"      # the device holds 8000, not 9000
                assert "interrupted by a restart" in b2.results(never.id)[0].reason
    run(scenario())


async def sim_write(sim: Simulator, config: AgentConfig, value: float) -> None:
    """Write the export limit as the agent would have before dying."""
    from edge_agent.modbus_source import ModbusSource
    device = config.devices[0]
    source = ModbusSource(device)
    try:
        await source.write("holding", 20, encode_value(device.writable[0], value))
    finally:
        source.close()


def test_a_recorded_command_not_yet_written_is_applied_after_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        config = writable_config(tmp_path, free_port())
        async with Simulator(config.devices, port=config.devices[0].port) as sim:
            async with bench(tmp_path, clock=clock, sim=sim):
                pass
            cmd = command(4_000.0, now_ms=clock.ms)
            db = sqlite3.connect(config.commands.state_path)
            db.execute("INSERT INTO seen (id, n, expires_ms, state, payload) VALUES (?, 1, ?, 'received', ?)",
                       (cmd.id, cmd.expires_ms, payload(cmd)))
            db.commit()
            db.close()
            async with bench(tmp_path, clock=clock, sim=sim) as b:
                await b.settle()
                assert sim.write_count(UNIT) == 1 and b.results(cmd.id)[0].outcome == "applied"
    run(scenario())


# -- fail-safe --------------------------------------------------------------------------------------

def test_the_safe_value_is_written_when_a_control_ends(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bench(tmp_path) as b:
            cmd = command(30_000.0, now_ms=b.clock.ms, ttl_ms=10_000)
            await b.send(payload(cmd))
            b.clock.advance(9.9)
            await b.ticks()
            assert b.sim.write_count(UNIT) == 1
            b.clock.advance(0.1)
            await b.ticks()
            await b.settle()
            assert b.sim.write_count(UNIT) == 2 and b.sim.setpoint(UNIT, "EXPORT_LIMIT") == 0.0
            [failsafe] = [r for r in b.results() if r.id.startswith("failsafe-exp_lim_w-")]
            assert failsafe.outcome == "applied" and failsafe.reason.startswith("fail-safe: control exp_lim_w ended")
            records = [r for r in b.audit_kinds() if r["k"] == "write"]
            assert [r["failsafe"] for r in records] == [False, True]
    run(scenario())


def test_a_control_that_ended_while_the_agent_was_stopped_gets_its_safe_value_at_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        config = writable_config(tmp_path, free_port())
        async with Simulator(config.devices, port=config.devices[0].port) as sim:
            async with bench(tmp_path, clock=clock, sim=sim) as b:
                await b.send(payload(command(30_000.0, now_ms=clock.ms, ttl_ms=10_000)))
            assert sim.write_count(UNIT) == 1 and sim.setpoint(UNIT, "EXPORT_LIMIT") == 30_000.0
            clock.advance(20)                                      # stopped past the command's expiry
            async with bench(tmp_path, clock=clock, sim=sim) as b2:
                await b2.ticks()
                await b2.settle()
                assert sim.write_count(UNIT) == 2 and sim.setpoint(UNIT, "EXPORT_LIMIT") == 0.0
                [failsafe] = b2.results()
                assert failsafe.reason.startswith("fail-safe: control exp_lim_w ended")
    run(scenario())


def test_the_safe_value_is_written_once_when_the_cloud_is_silent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bench(tmp_path, silence_s=30.0) as b:
            cmd = command(30_000.0, now_ms=b.clock.ms, ttl_ms=3_600_000)
            await b.send(payload(cmd))
            b.clock.advance(29.5)
            await b.ticks()
            assert b.sim.write_count(UNIT) == 1
            b.clock.advance(0.5)
            await b.ticks()
            await b.settle()
            # both points: the export limit to 0 W and the connect coil to off, each once
            assert b.sim.write_count(UNIT) == 3
            assert b.sim.setpoint(UNIT, "EXPORT_LIMIT") == 0.0 and b.sim.setpoint(UNIT, "CONNECT") == 0.0
            assert all("no valid command from the cloud" in r.reason for r in b.results() if r.id.startswith("failsafe"))
            b.clock.advance(1)
            resumed = command(1_000.0, now_ms=b.clock.ms)
            await b.send(payload(resumed))
            await b.settle()
            assert b.results(resumed.id)[0].outcome == "applied"
    run(scenario())


def test_a_failing_failsafe_is_reported_once_and_retried(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port()
        async with bench(tmp_path, silence_s=5.0, sim=_Unstarted(port)) as b:
            b.clock.advance(5)
            await b.ticks()
            await b.settle()
            failed = [r for r in b.results() if r.outcome == "failed"]
            assert len(failed) == 2 and all("not written" in r.reason for r in failed)     # one per point
            sim = Simulator(b.config.devices, port=port)
            await sim.start()
            try:
                b.clock.advance(5)
                await b.ticks()
                await b.settle()
                assert sim.write_count(UNIT) == 2
                assert len([r for r in b.results() if r.outcome == "applied"]) == 2
            finally:
                await sim.stop()
    run(scenario())


class _Unstarted:
    """Stands for a simulator that is not running (the device is unreachable)."""

    def __init__(self, port: int) -> None:
        self.port = port


# -- codec and fuzz ---------------------------------------------------------------------------------

def test_values_round_trip_through_registers(tmp_path: Path) -> None:
    config = writable_config(tmp_path, 502)
    export, connect = config.devices[0].writable
    assert encode_value(export, 12_340.0) == [1234]
    assert decode_value(export, [1234]) == 12_340.0
    assert encode_value(connect, True) == [True] and decode_value(connect, [False]) is False


FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _json_like() -> st.SearchStrategy[bytes]:
    # Valid as it stands, but for a control this site has no point for: whatever the fuzz keeps, nothing is written.
    base = {"v": 1, "id": "fuzz", "site": SITE, "issued_ms": int(T0 * 1000), "expires_ms": int(T0 * 1000) + 60_000,
            "event": None, "control": "gen_lim_w", "value": 1000.0}
    values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.fixed_dictionaries({}, optional={k: st.just(v) | values for k, v in base.items()}).map(
        lambda d: json.dumps(d).encode())


@FUZZ
@given(messages=st.lists(st.binary(max_size=300) | _json_like(), min_size=1, max_size=5))
def test_any_bytes_are_rejected_or_ignored_never_written(tmp_path_factory: pytest.TempPathFactory,
                                                         messages: list[bytes]) -> None:
    async def scenario() -> None:
        folder = tmp_path_factory.mktemp("fuzz")
        async with bench(folder, sim=_Unstarted(free_port())) as b:
            # Any write would need the device: it is down, so a write attempt shows as a failed outcome.
            for message in messages:
                await b.send(message)
            await b.settle()
            assert all(r.outcome in ("rejected", "expired") for r in b.results()), b.results()
            assert not [r for r in b.audit_kinds() if r["k"] == "write"]
            answered = {r.id for r in b.results()}
            assert b.handler.metrics.registry.get_sample_value("ems_edge_commands_total",
                                                                {"outcome": "ignored"}) or answered or not messages
    run(scenario())


def test_an_unusable_state_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the folder should be")

    async def scenario() -> None:
        config = writable_config(tmp_path, free_port(), state_path="state/commands.db")

        async def audit(kind: str, fields: dict) -> None:
            pass

        with pytest.raises(CommandStateError, match=r"command state .*state/commands\.db: cannot open"):
            async with CommandHandler(config, audit=audit):
                pass
    run(scenario())
