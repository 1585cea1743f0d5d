"""Polling that keeps up: pipelined requests (``max_inflight``) and 1 ms poll intervals, against the
real pymodbus simulator on 127.0.0.1 (with and without its pipelining switch)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edge_agent.batch import ReadingBatch
from edge_agent.calibration import Calibrations
from edge_agent.errors import DeviceTimeout, DeviceUnreachable
from edge_agent.metrics import AgentMetrics
from edge_agent.modbus_source import Backoff, ModbusSource, plan_reads
from edge_agent.poller import DevicePoller, run_device
from edge_agent.simulator import Behaviour, Simulator, signal_for
from tests.edge_agent.modbus_helpers import device, points, silent_listener

pytestmark = pytest.mark.integration
FAST = Backoff(base_s=0.02, max_s=0.1, jitter=0.0)
T_OK = 1_800_000_020.0
DELAY_S = 0.3                       # the simulated device's answer delay


def fixed_clock() -> float:
    return T_OK


def wide_device(port: int, **kwargs: object):
    """500 contiguous uint16 points: a read plan of 4 requests (125 + 125 + 125 + 125)."""
    return device("wide", port, points(500), **{"unit": 1, "timeout_s": 3.0, **kwargs})


async def one_poll(dev, sim: Simulator) -> tuple[list[ReadingBatch], bool]:
    metrics = AgentMetrics(CollectorRegistry())
    batches: list[ReadingBatch] = []

    async def emit(batch: ReadingBatch) -> None:
        batches.append(batch)

    async with ModbusSource(dev, metrics=metrics, backoff=FAST) as source:
        poller = DevicePoller(dev, source, emit, metrics=metrics, calibrations=no_calibrations(), clock=fixed_clock)
        answered = await poller.poll_once()
    return batches, answered


def no_calibrations() -> Calibrations:
    return Calibrations(Path("/nonexistent"), {})


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def arrivals(sim: Simulator) -> list[float]:
    return [r.at for r in sim.requests if r.function_code == 3]


@pytest.mark.parametrize("max_inflight", [1, 4])
def test_pipelined_requests_are_on_the_wire_together_and_read_the_same_values(max_inflight: int) -> None:
    probe = wide_device(0)

    async def scenario() -> tuple[list[ReadingBatch], bool, list[float]]:
        async with Simulator([probe], behaviours={1: Behaviour(delay_s=DELAY_S)}, pipelining=True,
                             clock=fixed_clock) as sim:
            batches, answered = await one_poll(wide_device(sim.port, max_inflight=max_inflight), sim)
            return batches, answered, arrivals(sim)

    batches, answered, times = asyncio.run(scenario())
    assert answered and len(times) == len(plan_reads(probe)) == 4
    spread = max(times) - min(times)
    if max_inflight == 4:
        assert spread < DELAY_S            # all four were sent before the first answer came back
    else:
        assert spread >= 3 * DELAY_S * 0.9  # each request waited for the previous answer
    (batch,) = batches
    assert batch.sensor == [p.id for p in probe.points]           # plan order, whatever the answer order
    assert set(batch.quality) == {"good"}
    expected = [signal_for(p, i)(T_OK) for i, p in enumerate(probe.points)]
    assert batch.value == pytest.approx(expected, abs=0.5 + 1e-6)


def test_a_device_that_does_not_pipeline_is_never_misread() -> None:
    """pymodbus 3.16's own server answers only the first of pipelined requests: the others time
    out and their points are device_error — no value is ever taken from another request's answer."""
    probe = wide_device(0)

    async def scenario() -> tuple[list[ReadingBatch], bool]:
        async with Simulator([probe], clock=fixed_clock) as sim:
            return await one_poll(wide_device(sim.port, max_inflight=4, timeout_s=0.5, retries=0), sim)

    batches, answered = asyncio.run(scenario())
    (batch,) = batches
    assert len(batch) == len(probe.points)
    by_id = {p.id: (i, p) for i, p in enumerate(probe.points)}
    for sensor, value, quality in zip(batch.sensor, batch.value, batch.quality):
        index, point = by_id[sensor]
        if quality == "good":
            assert value == pytest.approx(signal_for(point, index)(T_OK), abs=0.5 + 1e-6)
        else:
            assert (quality, value) == ("device_error", None)
    if "device_error" in batch.quality:
        assert not answered


def test_a_pipelined_timeout_fails_every_outstanding_request_on_one_connection() -> None:
    async def scenario() -> tuple[list[BaseException], int, float]:
        async with silent_listener() as (port, accepted):
            dev = device("mute", port, points(300), timeout_s=1.0, retries=0, max_inflight=3)
            async with ModbusSource(dev, metrics=AgentMetrics(CollectorRegistry()), backoff=FAST) as source:
                started = time.monotonic()
                results = await asyncio.gather(*(source.read(b) for b in plan_reads(dev)), return_exceptions=True)
                return list(results), len(accepted), time.monotonic() - started

    results, connections, elapsed = asyncio.run(scenario())
    assert len(results) == 3 and all(isinstance(r, DeviceUnreachable) for r in results)
    assert any(isinstance(r, DeviceTimeout) for r in results)
    assert connections == 1                 # the three shared one connection
    # Together: about one 1 s timeout; one after another: at least 3 s. The 2 s between leave room for a
    # machine shared by other test runs (a 0.3 s timeout and a 0.9 s bound failed there at 2.2 s).
    assert elapsed < 3 * 1.0, elapsed       # they waited together, not one after another


def test_a_1_ms_poll_interval_is_honoured_beyond_the_old_10_ms_floor() -> None:
    probe = device("fast", 0, points(10), unit=1, poll_interval_s=0.001, timeout_s=1.0)
    metrics = AgentMetrics(CollectorRegistry())

    async def emit(batch: ReadingBatch) -> None:
        pass

    async def scenario() -> list[float]:
        async with Simulator([probe]) as sim:
            stop = asyncio.Event()
            task = asyncio.create_task(run_device(dataclasses.replace(probe, port=sim.port), emit, metrics=metrics,
                                                  calibrations=no_calibrations(), stop=stop))
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.wait_for(task, 5)
            return [r.at for r in sim.requests]

    times = asyncio.run(scenario())
    # one request per poll; the old 10 ms floor allowed at most 100 in the second
    assert len(times) > 150, len(times)
    assert sample(metrics, "ems_edge_reads_total", device="fast", outcome="ok") >= len(times) - 1  # the last cut by stop
