"""The Modbus adapter against a real pymodbus server on 127.0.0.1: read planning, request budget,
exception codes, timeouts with retries and backoff, refused connections, RTU framing over TCP."""

from __future__ import annotations

import asyncio
import struct
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from edge_agent.decode import decode_registers
from edge_agent.errors import DeviceExceptionResponse, DeviceTimeout, DeviceUnreachable
from edge_agent.metrics import AgentMetrics
from edge_agent.modbus_source import (Backoff, ModbusSource, ReadBlock, measure_modbus_ceiling, plan_reads,
                                     split_block)
from edge_agent.simulator import Behaviour, Simulator
from devenv.mosquitto import free_port
from tests.edge_agent.modbus_helpers import device, points, silent_listener

pytestmark = pytest.mark.integration
FAST = Backoff(base_s=0.05, max_s=0.2, jitter=0.0)


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- the read plan (pure) -------------------------------------------------------------------

def test_plan_merges_contiguous_points_into_one_read() -> None:
    plan = plan_reads(device("d", 1, points(20, type="float32")))
    assert [(b.register, b.address, b.count, len(b.points)) for b in plan] == [("holding", 0, 40, 20)]


def test_plan_splits_a_300_register_span_into_reads_of_at_most_125() -> None:
    plan = plan_reads(device("d", 1, points(300)))
    assert [(b.address, b.count) for b in plan] == [(0, 125), (125, 125), (250, 50)]


def test_plan_never_splits_a_multi_register_value() -> None:
    plan = plan_reads(device("d", 1, points(70, type="float32")))      # 140 registers
    assert [(b.address, b.count) for b in plan] == [(0, 124), (124, 16)]


def test_plan_bridges_small_gaps_only() -> None:
    spaced = points(4, step=9)              # 0, 9, 18, 27: gaps of 8 unread registers
    assert len(plan_reads(device("d", 1, spaced))) == 1
    assert len(plan_reads(device("d", 1, spaced, max_read_gap=7))) == 4
    wide = points(3, step=50)
    assert [(b.address, b.count) for b in plan_reads(device("d", 1, wide))] == [(0, 1), (50, 1), (100, 1)]


def test_plan_keeps_register_types_apart_and_respects_device_limits() -> None:
    pts = points(10, prefix="H") + points(10, register="input", prefix="I") + points(3000, register="coil", prefix="C",
                                                                                     type="bool")
    plan = plan_reads(device("d", 1, pts, max_read_registers=4))
    summary = [(b.register, b.address, b.count) for b in plan]
    assert summary == [("holding", 0, 4), ("holding", 4, 4), ("holding", 8, 2),
                       ("input", 0, 4), ("input", 4, 4), ("input", 8, 2),
                       ("coil", 0, 2000), ("coil", 2000, 1000)]


def test_split_block_gives_one_read_per_point() -> None:
    (block,) = plan_reads(device("d", 1, points(3, type="float32", step=3)))
    assert [(b.address, b.count) for b in split_block(block)] == [(0, 2), (3, 2), (6, 2)]


# -- against the real server -----------------------------------------------------------------

def test_batched_reads_count_server_requests() -> None:
    """40 contiguous registers of 20 points → 1 request; a 300-register span → 3."""
    dev_a = device("a", 0, points(20, type="float32"), unit=1)
    dev_b = device("b", 0, points(300), unit=2)

    async def scenario() -> tuple[int, int, list[float]]:
        async with Simulator([dev_a, dev_b]) as sim:
            metrics = AgentMetrics(CollectorRegistry())
            async with ModbusSource(device("a", sim.port, dev_a.points, unit=1), metrics=metrics) as source:
                (block,) = plan_reads(dev_a)
                registers = await source.read(block)
                values = [decode_registers(block.slice(registers, p), "float32") for p in block.points]
            async with ModbusSource(device("b", sim.port, dev_b.points, unit=2), metrics=metrics) as source:
                for block in plan_reads(dev_b):
                    assert len(await source.read(block)) == block.count
            assert sample(metrics, "ems_edge_reads_total", device="a", outcome="ok") == 1
            assert sample(metrics, "ems_edge_reads_total", device="b", outcome="ok") == 3
            return sim.request_count(unit=1), sim.request_count(unit=2), values

    count_a, count_b, values = asyncio.run(scenario())
    assert (count_a, count_b) == (1, 3)
    assert len(set(values)) > 1          # the simulator serves distinct, changing values per point


def test_bits_come_back_exactly_as_asked() -> None:
    dev = device("c", 0, points(37, register="coil", type="bool"))

    async def scenario() -> list:
        async with Simulator([dev]) as sim:
            async with ModbusSource(device("c", sim.port, dev.points)) as source:
                (block,) = plan_reads(dev)
                return await source.read(block)

    bits = asyncio.run(scenario())
    assert len(bits) == 37 and all(isinstance(b, bool) for b in bits)


def test_min_gap_between_requests_is_respected_server_side() -> None:
    """A legacy PLC that answers "busy" to requests closer than 80 ms apart; the device budget is 100 ms."""
    spread = points(6, step=200)                       # 6 separate reads per poll
    sim_dev = device("plc", 0, spread, unit=7)

    async def scenario(min_gap_s: float) -> tuple[list[float], int, AgentMetrics]:
        async with Simulator([sim_dev], behaviours={7: Behaviour(min_gap_s=0.08)}) as sim:
            metrics = AgentMetrics(CollectorRegistry())
            dev = device("plc", sim.port, spread, unit=7, min_gap_s=min_gap_s, retries=3)
            async with ModbusSource(dev, metrics=metrics, backoff=FAST) as source:
                for _ in range(2):
                    for block in plan_reads(dev):
                        await source.read(block)
            return sim.request_times(7), sim.busy_responses, metrics

    times, busy, metrics = asyncio.run(scenario(0.1))
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 12 and busy == 0
    assert min(gaps) >= 0.1, gaps
    assert sample(metrics, "ems_edge_reads_total", device="plc", outcome="ok") == 12

    # the same polls without a budget overrun the PLC: it answers busy, and our retries absorb it
    times, busy, metrics = asyncio.run(scenario(0.0))
    assert busy > 0
    assert sample(metrics, "ems_edge_reads_total", device="plc", outcome="exception") == busy
    assert sample(metrics, "ems_edge_read_retries_total", device="plc") == busy
    assert sample(metrics, "ems_edge_reads_total", device="plc", outcome="ok") == 12


def test_exception_response_is_mapped_and_not_retried() -> None:
    dev = device("d", 0, points(4), unit=3, retries=2)

    async def scenario() -> tuple[DeviceExceptionResponse, int, AgentMetrics]:
        async with Simulator([dev], spare=0) as sim:         # registers 0..3 only
            metrics = AgentMetrics(CollectorRegistry())
            async with ModbusSource(device("d", sim.port, dev.points, unit=3, retries=2), metrics=metrics) as source:
                bad = plan_reads(device("d", 0, points(2, start=3)))[0]       # 3..4: 4 does not exist
                with pytest.raises(DeviceExceptionResponse) as caught:
                    await source.read(bad)
                assert len(await source.read(plan_reads(dev)[0])) == 4       # the connection is still good
                with pytest.raises(DeviceExceptionResponse) as written:
                    await source.write("holding", 9, [1])                   # 9 does not exist either
            assert str(written.value) == "device 'd': Modbus exception 2 (IllegalDataAddress) writing address 9"
            return caught.value, sim.request_count(unit=3) - 1, metrics

    exc, requests, metrics = asyncio.run(scenario())
    assert (exc.device, exc.address, exc.code, exc.code_name) == ("d", 3, 2, "IllegalDataAddress")
    assert str(exc) == "device 'd': Modbus exception 2 (IllegalDataAddress) reading address 3"
    assert requests == 2                               # asked once, not retried
    assert sample(metrics, "ems_edge_reads_total", device="d", outcome="exception") == 1
    assert sample(metrics, "ems_edge_read_retries_total", device="d") == 0


def test_a_silent_device_times_out_after_retries_with_backoff() -> None:
    async def scenario() -> tuple[float, int, AgentMetrics, DeviceTimeout]:
        async with silent_listener() as (port, accepted):
            metrics = AgentMetrics(CollectorRegistry())
            dev = device("mute", port, points(1), timeout_s=0.2, retries=2)
            async with ModbusSource(dev, metrics=metrics, backoff=Backoff(base_s=0.1, max_s=1.0, jitter=0.0)) as source:
                started = time.monotonic()
                with pytest.raises(DeviceTimeout) as caught:
                    await source.read(plan_reads(dev)[0])
                return time.monotonic() - started, len(accepted), metrics, caught.value

    elapsed, connections, metrics, exc = asyncio.run(scenario())
    assert str(exc) == "device 'mute': no answer to holding 0+1 within 0.2s"
    # 3 attempts of 0.2 s plus backoffs of 0.1 s and 0.2 s
    assert elapsed >= 3 * 0.2 + 0.1 + 0.2
    assert connections == 3                            # a timed-out connection is dropped and reopened
    assert sample(metrics, "ems_edge_reads_total", device="mute", outcome="timeout") == 3
    assert sample(metrics, "ems_edge_read_retries_total", device="mute") == 2
    assert sample(metrics, "ems_edge_device_connects_total", device="mute", outcome="ok") == 3


def test_reads_and_writes_on_one_source_keep_its_min_gap_and_its_one_connection() -> None:
    """The poller and the command handler share a device's source in the agent: polls and writes made at
    the same time go one at a time over one connection, each ``min_gap_s`` after the one before, so the
    legacy PLC never answers busy (without the shared turn a write sent while a read waited for its gap
    would go out right after the read's answer)."""
    spread = points(6, step=200)                       # 6 separate reads per poll
    sim_dev = device("plc", 0, spread, unit=7)

    metrics = AgentMetrics(CollectorRegistry())

    async def scenario() -> tuple[list[float], int, int]:
        async with Simulator([sim_dev], behaviours={7: Behaviour(min_gap_s=0.08)}) as sim:
            dev = device("plc", sim.port, spread, unit=7, min_gap_s=0.1, retries=0)
            async with ModbusSource(dev, metrics=metrics, backoff=FAST) as source:
                async def poll() -> None:
                    for block in plan_reads(dev):
                        await source.read(block)

                async def commands() -> None:
                    for value in range(4):
                        await asyncio.sleep(0.03)
                        await source.write("holding", 3, [value])

                await asyncio.gather(poll(), commands(), poll())
                sent = source.requests_sent
            return sim.request_times(7), sim.busy_responses, sent

    times, busy, sent = asyncio.run(scenario())
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == sent == 16 and busy == 0, (len(times), sent, busy)
    assert min(gaps) >= 0.1, gaps
    assert sample(metrics, "ems_edge_device_connects_total", device="plc", outcome="ok") == 1


@pytest.mark.parametrize("transport", ["tcp", "rtu-over-tcp"])
def test_a_write_waiting_behind_a_read_that_times_out_goes_once_on_a_new_connection(transport: str) -> None:
    """The poller's read is in flight and the device does not answer it in time while a command's write
    waits for its turn: the timeout drops the connection, and the write, which never reached the wire,
    goes out on a new connection and applies, once. The read is the one that fails. (RTU over TCP:
    pymodbus' client would otherwise drop the waiting write unsent and report it as a timeout.)"""
    dev = device("d", 0, points(4), unit=3)
    metrics = AgentMetrics(CollectorRegistry())

    async def scenario() -> tuple[int, list[int], BaseException]:
        async with Simulator([dev], rtu=transport == "rtu-over-tcp") as sim:
            d = device("d", sim.port, dev.points, unit=3, timeout_s=0.2, retries=0, transport=transport)
            async with ModbusSource(d, metrics=metrics, backoff=FAST) as source:
                await source.connect()
                sim._units[3].behaviour = Behaviour(delay_s=0.5)      # the next request is answered too late
                read = asyncio.ensure_future(source.read(plan_reads(d)[0]))
                await asyncio.sleep(0.05)
                sim._units[3].behaviour = Behaviour()
                await source.write("holding", 10, [7])                  # a spare register: it keeps what is written
                failed = (await asyncio.gather(read, return_exceptions=True))[0]
                stored = await source.read(ReadBlock("holding", 10, 1, ()))
            return sim.write_count(3), list(stored), failed

    writes, stored, failed = asyncio.run(scenario())
    assert isinstance(failed, DeviceTimeout), failed
    assert writes == 1 and stored == [7]
    assert sample(metrics, "ems_edge_device_connects_total", device="d", outcome="ok") == 2


def test_a_read_waiting_behind_a_write_that_times_out_connects_again() -> None:
    """With a request budget the poller's read waits for a command's write to take its turn; the write is
    not answered in time and drops the connection: the read, checked in its turn, connects again and is
    answered (not failed on the dropped connection, a lost block or a failed read-back)."""
    dev = device("d", 0, points(4), unit=3)

    async def scenario() -> tuple[BaseException | None, list[int]]:
        async with Simulator([dev]) as sim:
            d = device("d", sim.port, dev.points, unit=3, timeout_s=0.2, retries=0, min_gap_s=0.01)
            async with ModbusSource(d, metrics=AgentMetrics(CollectorRegistry()), backoff=FAST) as source:
                await source.connect()
                sim._units[3].behaviour = Behaviour(delay_s=0.5)      # the write is answered too late
                write = asyncio.ensure_future(source.write("holding", 10, [7]))
                await asyncio.sleep(0.05)
                sim._units[3].behaviour = Behaviour()
                values = await source.read(plan_reads(d)[0])
                failed = (await asyncio.gather(write, return_exceptions=True))[0]
            return failed, list(values)

    failed, values = asyncio.run(scenario())
    assert isinstance(failed, DeviceTimeout), failed
    assert len(values) == 4


def test_a_write_nobody_answers_is_a_device_timeout_and_drops_the_connection() -> None:
    """On the pipelined TCP client too (its deadline raises asyncio.TimeoutError, not pymodbus' "No
    response"): the command path gets DeviceTimeout, never a bare TimeoutError, and the write is not retried."""
    async def scenario() -> tuple[DeviceTimeout, float, int]:
        async with silent_listener() as (port, accepted):
            dev = device("mute", port, points(1), timeout_s=0.2, retries=2)
            async with ModbusSource(dev, metrics=AgentMetrics(CollectorRegistry()), backoff=FAST) as source:
                started = time.monotonic()
                with pytest.raises(DeviceTimeout) as caught:
                    await source.write("holding", 3, [7])
                elapsed = time.monotonic() - started
                connected = source.connected
            return caught.value, elapsed, len(accepted) + (100 if connected else 0)

    exc, elapsed, connections = asyncio.run(scenario())
    assert str(exc) == "device 'mute': no answer to the write of holding 3 within 0.2s"
    assert 0.2 <= elapsed < 2.0                    # one attempt: a write is never repeated
    assert connections == 1                        # dropped after the timeout (a late answer is no one's)


def test_refused_connection_is_unreachable() -> None:
    port = free_port()

    async def scenario() -> tuple[DeviceUnreachable, AgentMetrics]:
        metrics = AgentMetrics(CollectorRegistry())
        dev = device("gone", port, points(1), retries=1)
        async with ModbusSource(dev, metrics=metrics, backoff=FAST) as source:
            with pytest.raises(DeviceUnreachable) as caught:
                await source.read(plan_reads(dev)[0])
        return caught.value, metrics

    exc, metrics = asyncio.run(scenario())
    assert not isinstance(exc, DeviceTimeout)
    assert str(exc) == f"device 'gone': cannot connect to 127.0.0.1:{port} (refused or unreachable)"
    assert sample(metrics, "ems_edge_device_connects_total", device="gone", outcome="failed") == 2
    assert sample(metrics, "ems_edge_reads_total", device="gone", outcome="unreachable") == 2


def test_reconnects_after_the_server_restarts() -> None:
    dev = device("r", 0, points(4), unit=1)

    async def scenario() -> AgentMetrics:
        metrics = AgentMetrics(CollectorRegistry())
        sim = Simulator([dev])
        await sim.start()
        port = sim.port
        source = ModbusSource(device("r", port, dev.points, retries=1), metrics=metrics, backoff=FAST)
        block = plan_reads(dev)[0]
        async with source:
            await source.read(block)
            await sim.stop()
            with pytest.raises(DeviceUnreachable):
                await source.read(block)
            sim2 = Simulator([dev], port=port)
            await sim2.start()
            try:
                assert len(await source.read(block)) == 4
            finally:
                await sim2.stop()
        return metrics

    metrics = asyncio.run(scenario())
    assert sample(metrics, "ems_edge_device_connects_total", device="r", outcome="ok") == 2
    assert sample(metrics, "ems_edge_reads_total", device="r", outcome="ok") == 2


def test_rtu_framing_over_tcp() -> None:
    dev = device("gw", 0, points(3, type="int32"), unit=9, transport="rtu-over-tcp")

    async def scenario() -> tuple[int, int]:
        async with Simulator([dev], rtu=True) as sim:
            async with ModbusSource(device("gw", sim.port, dev.points, unit=9, transport="rtu-over-tcp")) as source:
                registers = await source.read(plan_reads(dev)[0])
            return len(registers), sim.request_count(unit=9)

    assert asyncio.run(scenario()) == (6, 1)


def test_measure_modbus_ceiling_counts_real_requests() -> None:
    dev = device("bench", 0, points(100), unit=1)
    ready = threading.Event()
    box: dict[str, object] = {}

    def serve() -> None:
        async def main() -> None:
            async with Simulator([dev]) as sim:
                box["sim"] = sim
                box["stop"] = stop = asyncio.Event()
                box["loop"] = asyncio.get_running_loop()
                ready.set()
                await stop.wait()
        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    sim: Simulator = box["sim"]  # type: ignore[assignment]
    try:
        rate = measure_modbus_ceiling("127.0.0.1", sim.port, 0.5)
        served = sim.request_count(unit=1)
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)  # type: ignore[union-attr]
        thread.join(10)
    assert rate > 0
    assert served == pytest.approx(rate * 0.5, rel=0.2)


@pytest.mark.parametrize("answer, why", [
    (lambda tid, unit: struct.pack(">HHHBBB", tid, 0, 5, unit + 1, 3, 2) + b"\0\x07", "device id"),
    (lambda tid, unit: struct.pack(">HHHBBB", tid, 0, 5, unit, 4, 2) + b"\0\x07", "does not fit"),
    (lambda tid, unit: struct.pack(">HHHBBB", tid, 0, 5, unit, 3, 4) + b"\0\x07", "does not fit"),
])
def test_a_read_answer_that_does_not_fit_the_request_drops_the_connection(answer, why: str) -> None:
    """Another unit, another function code or a byte count that disagrees with the frame: the
    read fails as unreachable (not misread), and the next attempt uses a new connection."""
    connections: list[int] = []

    async def scenario() -> tuple[str, float]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            while request := await reader.read(12):
                tid, _, _, unit = struct.unpack(">HHHB", request[:7])
                writer.write(answer(tid, unit))
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        dev = device("odd", server.sockets[0].getsockname()[1], points(1), unit=5, retries=1, timeout_s=2.0)
        metrics = AgentMetrics(CollectorRegistry())
        try:
            async with ModbusSource(dev, metrics=metrics, backoff=FAST) as source:
                with pytest.raises(DeviceUnreachable) as err:
                    await source.read(plan_reads(dev)[0])
            return str(err.value), sample(metrics, "ems_edge_reads_total", device="odd", outcome="unreachable")
        finally:
            server.close()
            await server.wait_closed()

    message, unreachable = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert why in message and unreachable == 2 and len(connections) == 2
