"""Devices behind one gateway on one connection (``connection = "shared"``; the config key is tested in
test_config): one connection and one write per turn, dead-unit isolation, per-device ``max_inflight``, exception codes
and block splitting, and reconnection — against the pipelining pymodbus simulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge_agent.batch import ReadingBatch
from edge_agent.calibration import Calibrations
from edge_agent.errors import DeviceTimeout, DeviceUnreachable
from edge_agent.metrics import AgentMetrics
from edge_agent.modbus_source import Backoff, ModbusSource, SharedConnections, plan_reads
from edge_agent.poller import DevicePoller, PollTicks, run_device
from edge_agent.simulator import Behaviour, Simulator, signal_for
from devenv.demo_edge import SimulatorProcess
from devenv.mosquitto import free_port
from tests.edge_agent.modbus_helpers import device, points, silent_listener

FAST = Backoff(base_s=0.02, max_s=0.1, jitter=0.0)
T_OK = 1_800_000_020.0


def fixed_clock() -> float:
    return T_OK


def no_calibrations() -> Calibrations:
    return Calibrations(Path("/nonexistent"), {})


def connects(metrics: AgentMetrics, *names: str) -> float:
    return sum(metrics.registry.get_sample_value("ems_edge_device_connects_total",
                                                 {"device": name, "outcome": "ok"}) or 0.0 for name in names)


def unit_device(unit: int, port: int, **kwargs: object):
    return device(f"u{unit}", port, points(20, prefix=f"U{unit}_"), unit=unit, connection="shared",
                  **{"timeout_s": 0.5, **kwargs})


# -- the connection ------------------------------------------------------------------------------------

class CountingTransport:
    """A transport that counts its writes (each one a send on the socket)."""

    def __init__(self, transport: object) -> None:
        self.transport, self.count = transport, 0

    def write(self, data: bytes) -> None:
        self.count += 1
        self.transport.write(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


def test_the_units_share_one_connection_and_one_write_per_turn() -> None:
    """Three devices' reads issued in one turn of the loop reach the gateway as one segment."""
    async def scenario() -> tuple[list[bytes], list[BaseException | bytes], int, int]:
        chunks: list[bytes] = []
        accepted: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            while data := await reader.read(4096):
                chunks.append(data)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        devices = [unit_device(u, port, timeout_s=0.5) for u in (1, 2, 3)]
        shared = SharedConnections(devices)
        try:
            sources = [ModbusSource(d, shared=shared) for d in devices]
            for source in sources:
                await source.connect()
            link = shared.open(devices[0])
            assert link is not None and all(s._client is link for s in sources)
            writes = CountingTransport(link._transport)
            link._transport = writes            # type: ignore[assignment]
            results = await asyncio.gather(*(s.read_raw(plan_reads(s.device)[0]) for s in sources),
                                           return_exceptions=True)
        finally:
            shared.close()
            server.close()
            await server.wait_closed()
        return chunks, list(results), len(accepted), writes.count

    chunks, results, connections, sends = asyncio.run(scenario())
    assert connections == 1 and sends == 1
    assert len(chunks[0]) == 3 * 12                    # three read requests, one send
    assert [chunks[0][6 + 12 * i] for i in range(3)] == [1, 2, 3]    # one per unit id
    assert all(isinstance(r, DeviceUnreachable) for r in results)    # nobody answered: the oldest timed out,
    assert any(isinstance(r, DeviceTimeout) for r in results)        # and the silent connection was dropped


def test_units_behind_one_gateway_read_their_own_values_on_one_connection() -> None:
    devices = [unit_device(u, 0) for u in (1, 2, 3)]

    async def scenario() -> tuple[dict[str, list[ReadingBatch]], AgentMetrics]:
        async with Simulator(devices, pipelining=True, clock=fixed_clock) as sim:
            live = [unit_device(u, sim.port) for u in (1, 2, 3)]
            shared = SharedConnections(live)
            metrics = AgentMetrics(CollectorRegistry())
            got: dict[str, list[ReadingBatch]] = {d.name: [] for d in live}
            try:
                sources = [ModbusSource(d, metrics=metrics, shared=shared) for d in live]
                pollers = [DevicePoller(d, s, lambda b, n=d.name: _append(got[n], b), metrics=metrics,
                                        calibrations=no_calibrations(), clock=fixed_clock)
                           for d, s in zip(live, sources)]
                for _ in range(3):
                    assert all(await asyncio.gather(*(p.poll_once() for p in pollers)))
            finally:
                shared.close()
            return got, metrics

    got, metrics = asyncio.run(scenario())
    assert connects(metrics, "u1", "u2", "u3") == 1
    for d in devices:
        batch = got[d.name][0]
        assert batch.sensor == [p.id for p in d.points] and set(batch.quality) == {"good"}
        assert batch.value == pytest.approx([signal_for(p, i)(T_OK) for i, p in enumerate(d.points)], abs=0.5 + 1e-6)


async def _append(out: list[ReadingBatch], batch: ReadingBatch) -> None:
    out.append(batch)


def test_a_silent_unit_times_out_alone_and_the_others_keep_their_schedule() -> None:
    """Unit 2 answers after 1.5 s, past its 0.4 s timeout: its points go device_error then stale, units 1 and
    3 keep answering every 50 ms on the same connection, which is never dropped; the late answers find no
    request waiting and are ignored."""
    live_units = (1, 2, 3)

    async def scenario() -> tuple[dict[str, list[ReadingBatch]], AgentMetrics]:
        async with Simulator([unit_device(u, 0) for u in live_units], behaviours={2: Behaviour(delay_s=1.5)},
                             pipelining=True, clock=fixed_clock) as sim:
            live = [unit_device(u, sim.port, timeout_s=0.4, poll_interval_s=0.05, retries=1) for u in live_units]
            shared = SharedConnections(live)
            metrics = AgentMetrics(CollectorRegistry())
            got: dict[str, list[ReadingBatch]] = {d.name: [] for d in live}
            stop = asyncio.Event()
            ticks = PollTicks()
            try:
                tasks = [asyncio.create_task(run_device(d, lambda b, n=d.name: _append(got[n], b), metrics=metrics,
                                                        calibrations=no_calibrations(), stop=stop, backoff=FAST,
                                                        clock=time.time, ticks=ticks, shared=shared,
                                                        reconnect_max_s=0.2))
                         for d in live]
                await asyncio.sleep(2.5)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 5)
            finally:
                shared.close()
            return got, metrics

    got, metrics = asyncio.run(scenario())
    assert connects(metrics, "u1", "u2", "u3") == 1          # one connection all along: never dropped
    for name in ("u1", "u3"):
        qualities = {q for b in got[name] for q in b.quality}
        assert qualities == {"good"}, (name, qualities)
        # heartbeat 60 s: only changes are reported; the polls themselves are counted
        polls = metrics.registry.get_sample_value("ems_edge_polls_total", {"device": name}) or 0
        assert polls >= 20, (name, polls)                      # ~50 at 50 ms; a stall per timeout would give ~6
    dead = [q for b in got["u2"] for q in set(b.quality)]
    assert dead[:2] == ["device_error", "stale"]
    assert (metrics.registry.get_sample_value("ems_edge_reads_total", {"device": "u2", "outcome": "timeout"})
            or 0) >= 2


def test_each_device_keeps_its_own_max_inflight_on_a_shared_connection() -> None:
    """Unit 1 (max_inflight 1) waits for each answer; unit 2 (max_inflight 4) has its reads out together."""
    delay = 0.3
    wide = {u: device(f"w{u}", 0, points(500, prefix=f"W{u}_"), unit=u, connection="shared", timeout_s=3.0)
            for u in (1, 2)}

    async def scenario() -> dict[int, list[float]]:
        async with Simulator(list(wide.values()), behaviours={1: Behaviour(delay_s=delay), 2: Behaviour(delay_s=delay)},
                             pipelining=True, clock=fixed_clock) as sim:
            live = [device(f"w{u}", sim.port, wide[u].points, unit=u, connection="shared", timeout_s=3.0,
                           max_inflight=m) for u, m in ((1, 1), (2, 4))]
            shared = SharedConnections(live)
            try:
                sources = [ModbusSource(d, shared=shared) for d in live]
                await asyncio.gather(*(s.read_raw(b) for s in sources for b in plan_reads(s.device)))
            finally:
                shared.close()
            return {u: [r.at for r in sim.requests if r.unit == u and r.function_code == 3] for u in (1, 2)}

    times = asyncio.run(scenario())
    assert len(times[1]) == len(times[2]) == 4
    assert max(times[2]) - min(times[2]) < delay                # all four out before the first answer
    assert max(times[1]) - min(times[1]) >= 3 * delay * 0.9     # one at a time


def test_exception_answers_and_block_splitting_on_a_shared_connection() -> None:
    served = points(3, prefix="S")                      # unit 1 has registers 0..2
    asked = served + points(1, start=5, prefix="X")     # also 5: merged into one 0..5 read, code 2, then split

    async def scenario() -> tuple[list[ReadingBatch], list[ReadingBatch], AgentMetrics, int]:
        async with Simulator([device("a", 0, served, unit=1), unit_device(2, 0)], spare=0, pipelining=True,
                             clock=fixed_clock) as sim:
            a = device("a", sim.port, asked, unit=1, connection="shared")
            b = unit_device(2, sim.port)
            shared = SharedConnections([a, b])
            metrics = AgentMetrics(CollectorRegistry())
            out_a: list[ReadingBatch] = []
            out_b: list[ReadingBatch] = []
            try:
                pa = DevicePoller(a, ModbusSource(a, metrics=metrics, shared=shared), lambda x: _append(out_a, x),
                                  metrics=metrics, calibrations=no_calibrations(), clock=fixed_clock)
                pb = DevicePoller(b, ModbusSource(b, metrics=metrics, shared=shared), lambda x: _append(out_b, x),
                                  metrics=metrics, calibrations=no_calibrations(), clock=fixed_clock)
                for _ in range(2):
                    await asyncio.gather(pa.poll_once(), pb.poll_once())
            finally:
                shared.close()
            return out_a, out_b, metrics, len(pa.plan)

    out_a, out_b, metrics, blocks = asyncio.run(scenario())
    assert blocks == 4
    first = dict(zip(out_a[0].sensor, out_a[0].quality))
    assert first == {"S000": "good", "S001": "good", "S002": "good", "X000": "device_error"}
    assert metrics.registry.get_sample_value("ems_edge_modbus_exceptions_total",
                                             {"device": "a", "point": "X000", "code": "2"}) == 2.0
    assert set(out_b[0].quality) == {"good"}
    assert connects(metrics, "a", "u2") == 1


def test_a_silent_gateway_drops_the_shared_connection_and_it_is_reopened() -> None:
    """Nothing answers at all: the connection is dropped at the first timeout (every request fails), and
    the next reads open one new connection for both devices."""
    async def scenario() -> tuple[list[BaseException], int, float]:
        async with silent_listener() as (port, accepted):
            devices = [unit_device(u, port, timeout_s=0.3, retries=0) for u in (1, 2)]
            shared = SharedConnections(devices)
            sources = [ModbusSource(d, metrics=AgentMetrics(CollectorRegistry()), shared=shared) for d in devices]
            errors: list[BaseException] = []
            started = time.monotonic()
            try:
                for _ in range(2):
                    results = await asyncio.gather(*(s.read_raw(plan_reads(s.device)[0]) for s in sources),
                                                   return_exceptions=True)
                    errors.extend(results)      # type: ignore[arg-type]
            finally:
                shared.close()
            return errors, len(accepted), time.monotonic() - started

    errors, connections, elapsed = asyncio.run(scenario())
    assert len(errors) == 4 and all(isinstance(e, DeviceUnreachable) for e in errors)
    assert any(isinstance(e, DeviceTimeout) for e in errors[:2]) and any(isinstance(e, DeviceTimeout) for e in errors[2:])
    assert connections == 2                    # one per round: shared by both devices, reopened after the drop
    assert elapsed < 2 * 0.3 * 4, elapsed      # the two devices waited together, not one after another


def test_a_live_units_read_survives_a_silent_units_timeout_when_their_polls_are_staggered() -> None:
    """Unit 2 is silent; unit 1 answers after 150 ms, inside its 0.4 s timeout, and its read leaves 300 ms
    after unit 2's. Nothing arrives between unit 2's read and its deadline, yet unit 1's read is still
    young: the link is only suspect, and unit 1 gets its answer (the connection was dropped before)."""
    async def scenario() -> tuple[bytes, bool]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            buf = b""
            while data := await reader.read(4096):
                buf += data
                while len(buf) >= 12:
                    tid, _, length, unit = struct.unpack(">HHHB", buf[:7])
                    frame, buf = buf[:6 + length], buf[6 + length:]
                    code, _, count = struct.unpack(">BHH", frame[7:12])
                    if unit == 2:
                        continue
                    body = bytes([code, 2 * count]) + bytes(2 * count)
                    loop.call_later(0.15, writer.write, struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)

        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        devs = [device(f"u{u}", port, points(4, prefix=f"U{u}_"), unit=u, connection="shared", timeout_s=0.4,
                       retries=0) for u in (1, 2)]
        shared = SharedConnections(devs)
        live, silent = (ModbusSource(d, shared=shared) for d in devs)
        try:
            await live.connect()
            await silent.connect()
            dead = asyncio.ensure_future(silent.read_raw(plan_reads(devs[1])[0]))
            await asyncio.sleep(0.3)
            answer = await live.read_raw(plan_reads(devs[0])[0])       # sent at 0.3 s, answered at 0.45 s
            failed = await asyncio.gather(dead, return_exceptions=True)
            return answer, isinstance(failed[0], DeviceTimeout)
        finally:
            shared.close()
            server.close()

    assert asyncio.run(scenario()) == (bytes(8), True)


def test_the_simulator_cli_answers_pipelined_requests_with_pipelining_only(tmp_path: Path) -> None:
    """``ems-edge simulate --pipelining`` answers both requests of one TCP segment; without it, as pymodbus'
    server, only the first (the gateway ``connection = "shared"`` must not be used with)."""
    def answers(pipelining: bool) -> int:
        sim = SimulatorProcess(tmp_path / f"pipelining-{pipelining}", free_port(), profile="bench:2x10",
                               pipelining=pipelining)
        try:
            sim.start()                                     # waits for the port (20 s)
            with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
                sock.settimeout(5.0 if pipelining else 1.0)  # both answers awaited; without the flag, 1 s for a second
                sock.sendall(b"".join(struct.pack(">HHHBBHH", 10 + u, 0, 6, u, 3, 0, 10) for u in (1, 2)))
                got = b""
                try:
                    while len(got) < 2 * 29:
                        data = sock.recv(4096)
                        if not data:
                            break
                        got += data
                except socket.timeout:
                    pass
            assert ("pipelined requests answered" in sim.tail()) == pipelining, sim.tail()
            return len(got) // 29           # MBAP 7 + code 1 + count 1 + 20 data bytes
        finally:
            sim.stop()
    assert answers(False) == 1
    assert answers(True) == 2
