"""The poller end to end against the real pymodbus simulator: every type decoded and calibrated,
loop faults, report by exception, device_error then stale, bad addresses isolated, a dead device
not slowing the others, reconnect, live calibration."""

from __future__ import annotations

import asyncio
import time
import dataclasses
import math
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge_agent.calibration import Calibration, Calibrations, apply_calibration
from edge_agent.config import AgentConfig, DeviceConfig, load_config
from edge_agent.decode import register_bytes
from edge_agent.metrics import AgentMetrics
from edge_agent.modbus_source import Backoff, ModbusSource, plan_reads
from edge_agent.batch import ReadingBatch
from edge_agent.poller import DevicePoller, PollTicks, _JoinedNames, _loop, run_device
from edge_agent.simulator import EXAMPLE_CONFIG, Simulator, signal_for
from tests.edge_agent.modbus_helpers import device, points, silent_listener

pytestmark = pytest.mark.integration
FAST = Backoff(base_s=0.02, max_s=0.1, jitter=0.0)
T_OK = 1_800_000_020.0            # a simulator time when no loop is broken (t % 60 == 20)
T_BROKEN = 1_800_000_055.0        # t % 60 == 55: the cable_temp loop is in its 10 s wire break


@dataclasses.dataclass(frozen=True)
class Observation:
    """One reported reading of an emitted batch, as the assertions look at it."""

    asset: str
    point: str
    value: float | None
    unit: str
    quality: str
    ts_ms: int
    sensor_id: str


def collector(out: list[Observation], batches: list[ReadingBatch] | None = None):
    """An ``emit`` that records each batch's readings in ``out`` (and the batches in ``batches``)."""
    async def emit(batch: ReadingBatch) -> None:
        assert len(batch) > 0
        if batches is not None:
            batches.append(batch)
        out.extend(Observation(a, p, v, u, q, t, s) for t, a, p, v, u, q, s in zip(*batch.columns()))
    return emit


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def example() -> AgentConfig:
    return load_config(EXAMPLE_CONFIG, check_files=False)


def at_port(devices: tuple[DeviceConfig, ...], port: int) -> list[DeviceConfig]:
    return [dataclasses.replace(d, port=port, retries=0, timeout_s=1.0) for d in devices]


async def poll_all(devices: list[DeviceConfig], calibrations: Calibrations, clock: Clock,
                   metrics: AgentMetrics, rounds: int = 1, between=None,
                   batches: list[ReadingBatch] | None = None) -> list[Observation]:
    out: list[Observation] = []
    emit = collector(out, batches)
    sources = [ModbusSource(d, metrics=metrics, backoff=FAST) for d in devices]
    pollers = [DevicePoller(d, s, emit, metrics=metrics, calibrations=calibrations, clock=clock)
               for d, s in zip(devices, sources)]
    try:
        for r in range(rounds):
            if between and r:
                await between(r)
            for poller in pollers:
                await poller.poll_once()
    finally:
        for s in sources:
            s.close()
    return out


def tolerance(point) -> float:
    if point.current_loop:
        loop = point.current_loop
        return abs(loop.high - loop.low) / 16 * loop.ma_per_count * point.gain + 1e-9
    return abs(point.gain) * 0.5 + 1e-4 * abs(signal_for(point)(T_OK)) + 1e-9


def test_every_point_of_the_example_decodes_to_the_simulated_value() -> None:
    config = example()
    metrics = AgentMetrics(CollectorRegistry())

    async def scenario() -> list[Observation]:
        async with Simulator.default(clock=Clock(T_OK)) as sim:
            return await poll_all(at_port(config.devices, sim.port), Calibrations.from_config(config), Clock(T_OK),
                                  metrics)

    out = asyncio.run(scenario())
    by_id = {o.sensor_id: o for o in out}
    every = [(d, p) for d in config.devices for p in d.points]
    assert sorted(by_id) == sorted(p.id for _, p in every) and len(out) == len(every)
    # A writable point's read-back reports the value last written: its safe value before any command.
    readback = {w.readback: float(w.safe_value) for d in config.devices for w in d.writable if w.readback}
    assert readback, "the example has a read-back point"
    for index_device, point in every:
        index = index_device.points.index(point)
        expected = readback.get(point.id, signal_for(point, index)(T_OK))
        got = by_id[point.id]
        assert got.quality == "good", got
        assert got.value == pytest.approx(expected, abs=tolerance(point)), (point.id, point.type, got.value, expected)
        assert (got.asset, got.point, got.unit, got.ts_ms) == (point.asset, point.name, point.unit, int(T_OK * 1000))


def test_one_poll_of_a_device_is_one_batch_whatever_its_read_plan() -> None:
    config = example()
    metrics = AgentMetrics(CollectorRegistry())
    batches: list[ReadingBatch] = []

    async def scenario() -> list[Observation]:
        async with Simulator.default(clock=Clock(T_OK)) as sim:
            return await poll_all(at_port(config.devices, sim.port), Calibrations.from_config(config), Clock(T_OK),
                                  metrics, batches=batches)

    out = asyncio.run(scenario())
    assert len(batches) == len(config.devices) < len(out)
    assert any(len(plan_reads(d)) > 1 for d in config.devices)     # some device needs several requests
    assert [sorted(b.sensor) for b in batches] == [sorted(p.id for p in d.points) for d in config.devices]
    assert all(b.seq_first == 0 for b in batches)                 # the spool gives the seqs


def test_a_read_of_several_blocks_hands_out_the_same_joined_name_lists_while_its_blocks_are_whole() -> None:
    """The spool's point table and the v2 encoder find a batch's points by its lists' identity: a poll whose
    blocks all reported hands out the lists joined at the first such poll (never changed); a filtered
    poll's own lists get lists of their own; the whole poll after it gets the first lists again."""
    def block(prefix: str, n: int) -> tuple[list[str], ...]:
        return ([f"a{prefix}"] * n, [f"{prefix}{i}" for i in range(n)], ["kW"] * n, [f"S{prefix}{i}" for i in range(n)])

    first, second = block("x", 3), block("y", 2)

    def part(ts: int, names: tuple[list[str], ...], values: list[float]) -> tuple:
        asset, point, unit, sensor = names
        return ([ts] * len(values), asset, point, values, unit, ["good"] * len(values), sensor)

    joined = _JoinedNames()
    joined.own.update((id(first[0]), id(second[0])))        # the blocks' own lists (their layouts' in a poller)
    polls = [joined.batch([part(1, first, [1.0, 2.0, 3.0]), part(2, second, [4.0, 5.0])]),
             joined.batch([part(3, first, [6.0, 7.0, 8.0]), part(4, second, [9.0, 10.0])])]
    filtered = joined.batch([part(5, first, [6.0, 7.0, 8.0]), part(6, tuple(c[1:] for c in second), [11.0])])
    polls.append(joined.batch([part(7, first, [1.0, 1.0, 1.0]), part(8, second, [2.0, 2.0])]))
    for batch, ts, values in zip(polls, ((1, 2), (3, 4), (7, 8)), ([1.0, 2.0, 3.0, 4.0, 5.0],
                                                                  [6.0, 7.0, 8.0, 9.0, 10.0], [1.0] * 3 + [2.0] * 2)):
        assert batch.ts_ms == [ts[0]] * 3 + [ts[1]] * 2 and batch.value == values
        assert batch.point == ["x0", "x1", "x2", "y0", "y1"] and batch.sensor == ["Sx0", "Sx1", "Sx2", "Sy0", "Sy1"]
        assert batch.asset == ["ax"] * 3 + ["ay"] * 2 and batch.unit == ["kW"] * 5
        for column in ("asset", "point", "unit", "sensor"):
            assert getattr(batch, column) is getattr(polls[0], column)
        assert batch.ts_ms is not polls[0].ts_ms or batch is polls[0]
    assert filtered.point == ["x0", "x1", "x2", "y1"] and filtered.value == [6.0, 7.0, 8.0, 11.0]
    assert filtered.ts_ms == [5, 5, 5, 6] and filtered.point is not polls[0].point
    assert len(joined._held) == 1                           # a filtered poll's one-off lists are not held


def test_a_broken_loop_is_reported_as_loop_fault() -> None:
    config = example()
    metrics = AgentMetrics(CollectorRegistry())
    aio = [d for d in config.devices if d.name == "aio1-card"]

    async def scenario() -> list[Observation]:
        async with Simulator.default(clock=Clock(T_BROKEN)) as sim:
            return await poll_all(at_port(tuple(aio), sim.port), Calibrations.from_config(config), Clock(T_BROKEN),
                                  metrics)

    out = {o.sensor_id: o for o in asyncio.run(scenario())}
    assert out["SENSOR_18"].quality == "loop_fault"
    assert out["SENSOR_18"].value == pytest.approx(-37.5)        # 2 mA on a -20..120 degC loop
    assert out["SENSOR_16"].quality == out["SENSOR_17"].quality == "good"
    assert metrics.registry.get_sample_value("ems_edge_loop_faults_total",
                                             {"device": "aio1-card", "point": "SENSOR_18"}) == 1.0


def test_report_by_exception_and_heartbeat_in_the_poller() -> None:
    config = example()
    metrics = AgentMetrics(CollectorRegistry())
    clock = Clock(T_OK)
    tx1 = [d for d in config.devices if d.name == "tx1-relay"]

    async def advance(round_no: int) -> None:
        clock.now += 1.0 if round_no < 3 else 300.0        # rounds 1, 2: a second later; round 3: past every heartbeat

    async def scenario() -> list[Observation]:
        async with Simulator.default(clock=Clock(T_OK)) as sim:            # the device's values stand still
            return await poll_all(at_port(tuple(tx1), sim.port), Calibrations.from_config(config), clock, metrics,
                                  rounds=4, between=advance)

    out = asyncio.run(scenario())
    per_round = [sum(1 for o in out if o.ts_ms == int(t * 1000)) for t in (T_OK, T_OK + 1, T_OK + 2, T_OK + 302)]
    points = len(tx1[0].points)                             # 9: eight measurements and the relay's fault code
    assert per_round == [points, 0, 0, points]
    assert metrics.registry.get_sample_value("ems_edge_readings_suppressed_total") == 2.0 * points


def test_dead_device_emits_device_error_once_then_stale_then_recovers() -> None:
    dev_points = points(3, type="float32")
    sim_device = device("d", 0, dev_points)
    metrics = AgentMetrics(CollectorRegistry())
    clock = Clock(1000.0)
    rounds: list[list[Observation]] = []

    async def scenario() -> None:
        sim = Simulator([sim_device])
        await sim.start()
        port = sim.port
        out: list[Observation] = []
        emit = collector(out)

        dev = device("d", port, dev_points, retries=1)
        async with ModbusSource(dev, metrics=metrics, backoff=FAST) as source:
            poller = DevicePoller(dev, source, emit, metrics=metrics, calibrations=Calibrations(Path("/nonexistent"), {}),
                                  clock=clock)

            async def poll(advance: float = 1.0) -> None:
                clock.now += advance
                out.clear()
                await poller.poll_once()
                rounds.append(list(out))

            await poll()                               # good
            await sim.stop()
            await poll()                               # device_error
            await poll()                               # stale
            await poll()                               # nothing new
            await poll(advance=61.0)                   # heartbeat: stale again
            assert poller.failed_polls == 4
            sim2 = Simulator([sim_device], port=port)
            await sim2.start()
            try:
                await poll()                           # good again
            finally:
                await sim2.stop()

    asyncio.run(scenario())
    summary = [sorted({(o.quality, o.value is None) for o in r}) for r in rounds]
    assert summary == [[("good", False)], [("device_error", True)], [("stale", True)], [],
                       [("stale", True)], [("good", False)]]
    assert [len(r) for r in rounds] == [3, 3, 3, 0, 3, 3]
    assert metrics.registry.get_sample_value("ems_edge_device_up", {"device": "d"}) == 1.0


def test_a_missing_address_is_isolated_and_counted_per_point() -> None:
    served = points(3)                                  # the device has registers 0..2
    asked = served + points(1, start=5, prefix="X")     # the config also wants 5: merged into one 0..5 read
    metrics = AgentMetrics(CollectorRegistry())

    async def scenario() -> tuple[list[Observation], list[int]]:
        async with Simulator([device("d", 0, served)], spare=0) as sim:
            out: list[Observation] = []
            emit = collector(out)

            dev = device("d", sim.port, asked)
            counts = []
            async with ModbusSource(dev, metrics=metrics) as source:
                poller = DevicePoller(dev, source, emit, metrics=metrics,
                                      calibrations=Calibrations(Path("/nonexistent"), {}), clock=Clock(5.0))
                assert len(poller.plan) == 1
                for _ in range(2):
                    before = sim.request_count()
                    await poller.poll_once()
                    counts.append(sim.request_count() - before)
                assert len(poller.plan) == 4
            return out, counts

    out, counts = asyncio.run(scenario())
    assert counts == [5, 4]                             # 1 merged read + 4 single reads, then 4 per poll
    first = {o.sensor_id: o.quality for o in out[:4]}
    assert first == {"P000": "good", "P001": "good", "P002": "good", "X000": "device_error"}
    assert metrics.registry.get_sample_value("ems_edge_modbus_exceptions_total",
                                             {"device": "d", "point": "X000", "code": "2"}) == 2.0
    assert metrics.registry.get_sample_value("ems_edge_modbus_exceptions_total",
                                             {"device": "d", "point": "P000", "code": "2"}) is None


def test_a_dead_device_does_not_slow_the_others() -> None:
    metrics = AgentMetrics(CollectorRegistry())
    live_points = points(10)

    async def scenario() -> tuple[list[Observation], float]:
        out: list[Observation] = []
        emit = collector(out)

        async with Simulator([device("live", 0, live_points)]) as sim, silent_listener() as (mute_port, _):
            live = device("live", sim.port, live_points, poll_interval_s=0.1)
            mute = device("mute", mute_port, points(2, prefix="M"), timeout_s=0.5, retries=1, poll_interval_s=0.1)
            stop = asyncio.Event()
            cal = Calibrations(Path("/nonexistent"), {})
            tasks = [asyncio.create_task(run_device(d, emit, metrics=metrics, calibrations=cal, stop=stop, backoff=FAST))
                     for d in (live, mute)]
            await asyncio.sleep(1.6)
            stop.set()
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
            return out, asyncio.get_running_loop().time() - started

    out, stop_latency = asyncio.run(scenario())
    live_polls = metrics.registry.get_sample_value("ems_edge_polls_total", {"device": "live"})
    mute_polls = metrics.registry.get_sample_value("ems_edge_polls_total", {"device": "mute"})
    assert live_polls >= 8, live_polls             # ~16 at 0.1 s; polled one after the other it would be ~2
    assert mute_polls == 1                         # two 0.5 s timeouts per poll; the second poll is cut by stop
    assert [(o.sensor_id, o.quality) for o in out if o.sensor_id.startswith("M")] == [
        ("M000", "device_error"), ("M001", "device_error")]
    assert metrics.registry.get_sample_value("ems_edge_reads_total", {"device": "mute", "outcome": "timeout"}) >= 2
    assert stop_latency < 0.4                      # stop does not wait for the mute device's timeouts


def test_run_device_follows_calibration_changes_without_restart(tmp_path: Path) -> None:
    conf = tmp_path / "sensors.conf"
    shutil.copy(EXAMPLE_CONFIG, conf)
    config = load_config(conf, check_files=False)
    cal = Calibrations.from_config(config)
    metrics = AgentMetrics(CollectorRegistry())
    tx1 = dataclasses.replace(config.devices[0], poll_interval_s=0.05)

    async def scenario() -> list[Observation]:
        out: list[Observation] = []
        emit = collector(out)

        async with Simulator.default(clock=Clock(T_OK)) as sim:
            stop = asyncio.Event()
            task = asyncio.create_task(run_device(dataclasses.replace(tx1, port=sim.port), emit, metrics=metrics,
                                                  calibrations=cal, stop=stop))
            watcher = asyncio.create_task(cal.watch(stop, interval_s=0.02, metrics=metrics))
            for _ in range(100):
                if any(o.sensor_id == "SENSOR_05" for o in out):
                    break
                await asyncio.sleep(0.02)
            await asyncio.to_thread(apply_calibration, conf, "SENSOR_05", offset=10.0)
            for _ in range(200):
                if sum(1 for o in out if o.sensor_id == "SENSOR_05") >= 2:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, watcher), 5)
            return out

    taps = [o.value for o in asyncio.run(scenario()) if o.sensor_id == "SENSOR_05"]
    assert len(taps) == 2 and taps[1] == taps[0] + 10.0


def test_a_nan_from_the_device_is_a_device_error_not_a_number() -> None:
    served = points(2)                                    # the simulator drives registers 0..1; 10..11 are spare
    asked = served + points(1, type="float32", start=10, prefix="F")
    metrics = AgentMetrics(CollectorRegistry())

    async def scenario() -> list[Observation]:
        async with Simulator([device("d", 0, served)], spare=16) as sim:
            from pymodbus.client import AsyncModbusTcpClient
            writer = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0, reconnect_delay=0)
            assert await writer.connect()
            try:
                assert not (await writer.write_registers(10, [0x7FC0, 0x0000], device_id=1)).isError()   # float32 NaN
            finally:
                writer.close()
            out: list[Observation] = []
            emit = collector(out)

            dev = device("d", sim.port, asked, max_read_gap=8)
            async with ModbusSource(dev, metrics=metrics) as source:
                poller = DevicePoller(dev, source, emit, metrics=metrics,
                                      calibrations=Calibrations(Path("/nonexistent"), {}), clock=Clock(7.0))
                assert await poller.poll_once() is True
            return out

    out = {o.sensor_id: o for o in asyncio.run(scenario())}
    assert (out["F000"].quality, out["F000"].value) == ("device_error", None)
    assert out["P000"].quality == out["P001"].quality == "good"
    assert metrics.registry.get_sample_value("ems_edge_reads_total", {"device": "d", "outcome": "decode_error"}) == 1.0


def test_a_block_reports_only_the_points_that_moved_with_their_own_columns(tmp_path: Path) -> None:
    """Whole-block filtering keeps each reported reading's columns together: deadbands per point,
    int16, uint16 and float32 side by side, a calibration reload picked up at the next response,
    -0.0 reported as 0.0 with or without a calibration to apply."""
    pts = (points(2, type="uint16", deadband=5.0) + points(2, type="int16", start=2, prefix="S")
           + points(1, type="uint16", start=4, prefix="G", gain=2.0, offset=1.0)
           + points(1, type="float32", start=5, prefix="F"))
    dev = device("d", 0, pts, max_read_gap=0)
    calibrations = Calibrations(tmp_path / "none.conf", {p.id: Calibration(p.gain, p.offset) for p in pts})
    metrics = AgentMetrics(CollectorRegistry())
    poller = DevicePoller(dev, None, None, metrics=metrics, calibrations=calibrations)  # type: ignore[arg-type]
    (block,) = poller.plan

    def sample(values: list[int], now: float) -> list[tuple[str, float | None, str, int]]:
        parts: list = []
        poller._samples(parts, block, register_bytes(values), now)
        batch = poller._joined.batch(parts) if parts else ReadingBatch()
        return [(s, v, q, t) for s, v, q, t in zip(batch.sensor, batch.value, batch.quality, batch.ts_ms)]

    first = sample([10, 20, 65535, 7, 3, 0x8000, 0], 1.0)                  # F000: float32 -0.0
    assert first == [("P000", 10.0, "good", 1000), ("P001", 20.0, "good", 1000), ("S000", -1.0, "good", 1000),
                     ("S001", 7.0, "good", 1000), ("G000", 7.0, "good", 1000), ("F000", 0.0, "good", 1000)]
    assert math.copysign(1.0, first[-1][1]) == 1.0
    # P000 moves by exactly its deadband (suppressed), P001 beyond it; S001, G000 and F000 stand still
    assert sample([15, 26, 65534, 7, 3, 0x8000, 0], 2.0) == [("P001", 26.0, "good", 2000),
                                                            ("S000", -2.0, "good", 2000)]
    assert metrics.registry.get_sample_value("ems_edge_readings_suppressed_total") == 4.0
    calibrations._values = {**calibrations.snapshot(), "G000": Calibration(1.0, 0.0)}   # as a reload swaps it
    calibrations.generation += 1
    later = sample([15, 26, 65534, 7, 3, 0x3F80, 0], 3.0)                 # now every calibration is 1 and 0
    assert later == [("G000", 3.0, "good", 3000), ("F000", 1.0, "good", 3000)]
    (last,) = sample([15, 26, 65534, 7, 3, 0x8000, 0], 4.0)
    assert last == ("F000", 0.0, "good", 4000) and math.copysign(1.0, last[1]) == 1.0


def test_poll_ticks_wake_the_pollers_of_one_instant_together() -> None:
    """Waits for the same tick share one timer (the loop's schedule grows by one entry, not by one per
    waiter) and end at the tick; cancelling one waiter leaves the others; ticks stay on the interval's
    grid however the wanted instants are rounded (0.1 + 0.2 lands on the tick 0.3)."""
    async def scenario() -> tuple[int, list[bool], float, bool]:
        loop = asyncio.get_running_loop()
        ticks = PollTicks()
        start = loop.time()
        tick = ticks.tick(start + 0.02, 0.01)
        before = len(loop._scheduled)                   # type: ignore[attr-defined]
        waits = [ticks.wait(ticks.tick(start + 0.015 + i * 0.001, 0.01)) for i in range(5)]
        timers = len(loop._scheduled) - before          # type: ignore[attr-defined]
        waits[1].cancel()
        await asyncio.gather(*(w for i, w in enumerate(waits) if i != 1))
        woke = loop.time()
        grid = [ticks.tick(start + 0.1 + 0.2, 0.1) == ticks.tick(start + 0.3, 0.1),
                ticks.tick(tick, 0.01) == tick, ticks.tick(tick + 1e-9, 0.01) == tick,
                ticks.tick(tick + 0.0002, 0.01) == ticks.tick(start + 0.03, 0.01)]
        return timers, grid, woke - tick, waits[1].cancelled()

    timers, grid, late, cancelled = asyncio.run(scenario())
    assert timers == 1 and all(grid) and 0 <= late < 0.5 and cancelled


@pytest.mark.parametrize("interval", [0.0, 0.005])
def test_devices_sharing_ticks_poll_on_schedule_and_flat_out(interval: float) -> None:
    """Three devices with one ``PollTicks`` at 5 ms poll about every 5 ms each (the shared ticks
    neither skip cycles nor bunch them); ``poll_interval_s = 0`` (flat out, as bench_modbus runs
    it) polls back to back."""
    metrics = AgentMetrics(CollectorRegistry())
    pts = points(5)

    seconds = 1.0

    async def scenario() -> None:
        async with Simulator([device("t", 0, pts)]) as sim:
            devs = [device(f"t{i}", sim.port, pts, poll_interval_s=interval) for i in range(3)]
            stop, ticks = asyncio.Event(), PollTicks()
            cal = Calibrations(Path("/nonexistent"), {})
            tasks = [asyncio.create_task(run_device(d, collector([]), metrics=metrics, calibrations=cal, stop=stop,
                                                    ticks=ticks)) for d in devs]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 5)

    asyncio.run(scenario())
    polls = [metrics.registry.get_sample_value("ems_edge_polls_total", {"device": f"t{i}"}) for i in range(3)]
    if interval:
        assert all(0.5 * seconds / interval <= p <= 1.05 * seconds / interval + 1 for p in polls), polls
    else:
        assert all(p >= 50 for p in polls), polls


class _TimedPoller:
    """A stand-in DevicePoller for the schedule alone: each poll takes ``duration`` seconds."""

    def __init__(self, interval: float, duration: float) -> None:
        self.interval, self.duration, self.failed_polls, self.starts = interval, duration, 0, []

    async def poll_once(self, task: object = None) -> bool:
        self.starts.append(time.monotonic())
        await asyncio.sleep(self.duration)
        return True

    def next_delay(self) -> float:
        return self.interval


def test_a_long_interval_s_short_remainder_is_not_moved_onto_another_device_s_ticks() -> None:
    # A 20 ms device sets the shared ticks' origin; a 1 s device in another phase whose poll takes 970 ms
    # has 30 ms left to wait. Rounded onto the 20 ms device's grid (with a 1 s step) it waited a whole
    # extra second: one poll and heartbeat missed.
    async def go() -> list[float]:
        ticks, stop = PollTicks(), asyncio.Event()
        fast = _TimedPoller(0.02, 0.001)
        fast_task = asyncio.create_task(_loop(fast, stop, ticks))    # type: ignore[arg-type]
        await asyncio.sleep(0.03)
        slow = _TimedPoller(1.0, 0.97)
        slow_task = asyncio.create_task(_loop(slow, stop, ticks))    # type: ignore[arg-type]
        await asyncio.sleep(3.2)
        stop.set()
        await asyncio.gather(fast_task, slow_task)
        return [b - a for a, b in zip(slow.starts, slow.starts[1:])]
    gaps = asyncio.run(go())
    assert len(gaps) >= 2 and max(gaps) < 1.5, gaps
