"""The simulator is a real pymodbus server: it counts the requests it really receives, changes its
values over time, and its legacy PLC is slow and rate-limited."""

from __future__ import annotations

import asyncio
import time

import pytest
from pymodbus.client import AsyncModbusTcpClient

from edge_agent.decode import decode_registers
from edge_agent.simulator import RIG_CLOCK_MODULUS, Behaviour, Simulator, bench_devices, serve
from devenv.mosquitto import free_port
from tests.edge_agent.modbus_helpers import device, points

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def client_for(port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


def test_counts_each_request_it_receives_including_rejected_ones() -> None:
    async def scenario() -> tuple[Simulator, list[bool]]:
        async with Simulator([device("a", 0, points(10), unit=1), device("b", 0, points(4), unit=2)], spare=0) as sim:
            client = await client_for(sim.port)
            errors = []
            try:
                for _ in range(7):
                    errors.append((await client.read_holding_registers(0, count=10, device_id=1)).isError())
                for _ in range(3):
                    errors.append((await client.read_holding_registers(2, count=5, device_id=2)).isError())
                errors.append((await client.read_coils(0, count=1, device_id=2)).isError())
            finally:
                client.close()
            return sim, errors

    sim, errors = asyncio.run(scenario())
    assert errors == [False] * 7 + [True] * 3 + [False]       # unit 2 has registers 0..3 only
    assert sim.request_count() == 11
    assert sim.request_count(unit=1) == 7
    assert sim.request_count(unit=2, function_code=3) == 3
    assert sim.request_count(unit=2, function_code=1) == 1
    assert [(r.unit, r.function_code, r.address, r.count) for r in sim.requests[7:8]] == [(2, 3, 2, 5)]


def test_values_follow_the_clock() -> None:
    clock = Clock(1_800_000_000.0)

    async def scenario() -> list[float]:
        async with Simulator.default(clock=clock) as sim:
            client = await client_for(sim.port)
            try:
                seen = []
                for step in (0.0, 30.0, 60.0):
                    clock.now += step
                    rr = await client.read_holding_registers(0, count=2, device_id=1)    # tx1 oil temperature
                    seen.append(decode_registers(rr.registers, "float32"))
                return seen
            finally:
                client.close()

    first, second, third = asyncio.run(scenario())
    assert 40.0 < first < 70.0 and 40.0 < second < 70.0          # a plausible transformer oil temperature
    assert len({first, second, third}) == 3


def test_legacy_plc_is_slow_and_answers_busy_when_rushed() -> None:
    async def scenario() -> tuple[float, list[int]]:
        async with Simulator.default() as sim:                    # unit 5: 30 ms per answer, busy under 160 ms
            client = await client_for(sim.port)
            try:
                started = time.monotonic()
                first = await client.read_holding_registers(100, count=2, device_id=5)
                elapsed = time.monotonic() - started
                rushed = await client.read_holding_registers(100, count=2, device_id=5)
                await asyncio.sleep(0.2)
                rested = await client.read_holding_registers(100, count=2, device_id=5)
                codes = [0 if not r.isError() else r.exception_code for r in (first, rushed, rested)]
                return elapsed, codes
            finally:
                client.close()

    elapsed, codes = asyncio.run(scenario())
    assert elapsed >= 0.03
    assert codes == [0, 6, 0]


def test_behaviour_delay_does_not_block_other_units() -> None:
    async def scenario() -> float:
        devices = [device("slow", 0, points(2), unit=1), device("fast", 0, points(2), unit=2)]
        async with Simulator(devices, behaviours={1: Behaviour(delay_s=0.5)}) as sim:
            slow, fast = await client_for(sim.port), await client_for(sim.port)
            try:
                pending = asyncio.ensure_future(slow.read_holding_registers(0, count=2, device_id=1))
                await asyncio.sleep(0.05)
                started = time.monotonic()
                assert not (await fast.read_holding_registers(0, count=2, device_id=2)).isError()
                took = time.monotonic() - started
                await pending
                return took
            finally:
                slow.close()
                fast.close()

    assert asyncio.run(scenario()) < 0.45                 # well under the slow unit's 0.5 s delay


def test_units_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="share unit id 1"):
        Simulator([device("a", 0, points(1)), device("b", 0, points(1))])


def test_serve_runs_a_bench_profile_until_stopped() -> None:
    port = free_port()

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        task = asyncio.create_task(serve("127.0.0.1", port, profile="bench:3x50", stop=stop))
        for _ in range(100):
            try:
                client = await client_for(port)
                break
            except AssertionError:
                await asyncio.sleep(0.02)
        try:
            rr = await client.read_holding_registers(0, count=50, device_id=3)
            assert not rr.isError()
            missing = await client.read_holding_registers(0, count=1, device_id=4)
        finally:
            client.close()
        stop.set()
        await asyncio.wait_for(task, 5)
        return [len(rr.registers), int(missing.isError())]

    assert asyncio.run(scenario()) == [50, 1]


def test_rig_profile_serves_its_clock_and_values_that_change_every_10_ms() -> None:
    port = free_port()

    async def scenario() -> tuple[list[int], list[int], float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(serve("127.0.0.1", port, profile="rig:10x100", stop=stop))
        for _ in range(100):
            try:
                client = await client_for(port)
                break
            except AssertionError:
                await asyncio.sleep(0.02)
        try:
            before = time.time()
            first = await client.read_holding_registers(0, count=100, device_id=10)
            after = time.time()
            await asyncio.sleep(0.03)
            second = await client.read_holding_registers(0, count=100, device_id=10)
        finally:
            client.close()
        stop.set()
        await asyncio.wait_for(task, 5)
        return first.registers, second.registers, before, after

    first, second, before, after = asyncio.run(scenario())
    assert len(first) == 100
    clock_ms = (first[0] << 16) | first[1]
    assert int(before * 1000) % RIG_CLOCK_MODULUS <= clock_ms <= int(after * 1000) % RIG_CLOCK_MODULUS + 1
    assert first[2:] != second[2:]                      # 30 ms later every value moved on


@pytest.mark.parametrize("profile", ["bench:0x10", "bench:ten", "fancy", "rig:10x2"])
def test_serve_rejects_unknown_profiles(profile: str) -> None:
    with pytest.raises(ValueError, match="profile"):
        asyncio.run(serve("127.0.0.1", free_port(), profile=profile))


def test_bench_devices_layout() -> None:
    devices = bench_devices(2, 100, port=1234)
    assert [d.unit for d in devices] == [1, 2]
    assert [p.address for p in devices[1].points] == list(range(100))
    assert len({p.id for d in devices for p in d.points}) == 200
