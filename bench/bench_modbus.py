"""Modbus side of the edge agent: the read ceiling of a bare pymodbus client vs our poller.

    python -m bench modbus

Starts the simulator (``profile bench:100x100``: 100 units of 100 contiguous
uint16 holding registers) in a separate process on 127.0.0.1, then measures

* the Modbus read ceiling: back-to-back ``read_holding_registers(0, 100)``
  from a bare pymodbus client (1 connection, and 10 connections), reads/s;
* our poller (``run_device`` per device, poll interval 0 so it runs flat
  out) for 10 devices × 100 points and 100 devices × 100 points: reads/s,
  points decoded/s, readings emitted/s, CPU seconds of the agent
  process per 1,000 points, and the ratio to the ceiling measured with the
  same number of connections.

Both sides share the same simulator process, which is usually the
bottleneck: a ratio near 1.0 means the poller adds nothing measurable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from devenv.mosquitto import free_port, wait_for_port
from edge_agent.calibration import Calibrations
from edge_agent.metrics import AgentMetrics
from edge_agent.modbus_source import measure_modbus_ceiling
from edge_agent.batch import ReadingBatch
from edge_agent.poller import run_device
from edge_agent.simulator import bench_devices

SECONDS = float(os.environ.get("BENCH_MODBUS_SECONDS", "4"))
POINTS = 100


def start_simulator(port: int, devices: int = 100) -> subprocess.Popen:
    code = ("import asyncio, logging; logging.getLogger('pymodbus').setLevel(logging.CRITICAL); "
            "from edge_agent.simulator import serve; "
            f"asyncio.run(serve('127.0.0.1', {port}, profile='bench:{devices}x{POINTS}'))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_port(port, timeout=20, proc=proc)
    return proc


def poller_run(port: int, n_devices: int, seconds: float) -> dict[str, float]:
    """Run our pollers flat out for ``seconds``; figures for the measured window."""
    metrics = AgentMetrics(CollectorRegistry())
    devices = bench_devices(n_devices, POINTS, port=port, poll_interval_s=0.0)   # flat out
    emitted = 0

    async def emit(batch: ReadingBatch) -> None:
        nonlocal emitted
        emitted += len(batch)

    def reads_ok() -> float:
        return sum(metrics.registry.get_sample_value("ems_edge_reads_total", {"device": d.name, "outcome": "ok"}) or 0.0
                   for d in devices)

    async def main() -> dict[str, float]:
        nonlocal emitted
        stop = asyncio.Event()
        calibrations = Calibrations(Path("/nonexistent"), {})
        tasks = [asyncio.create_task(run_device(d, emit, metrics=metrics, calibrations=calibrations, stop=stop))
                 for d in devices]
        await asyncio.sleep(1.0)                       # connect and warm up
        reads0, emitted0, cpu0, t0 = reads_ok(), emitted, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        reads1, emitted1, cpu1, t1 = reads_ok(), emitted, time.process_time(), time.monotonic()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        elapsed = t1 - t0
        reads = reads1 - reads0
        errors = sum(metrics.registry.get_sample_value("ems_edge_reads_total", {"device": d.name, "outcome": o}) or 0.0
                     for d in devices for o in ("timeout", "unreachable", "exception"))
        return {"reads_per_s": reads / elapsed, "points_per_s": reads * POINTS / elapsed,
                "emitted_per_s": (emitted1 - emitted0) / elapsed,
                "cpu_s_per_1000_points": 1000 * (cpu1 - cpu0) / max(reads * POINTS, 1), "errors": errors}

    return asyncio.run(main())


def main() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    port = free_port()
    proc = start_simulator(port)
    try:
        ceiling_1 = measure_modbus_ceiling("127.0.0.1", port, SECONDS, count=POINTS, clients=1)
        print(f"modbus read ceiling (bare pymodbus client, {POINTS} registers/read, 1 connection): "
              f"{ceiling_1:,.0f} reads/s", flush=True)
        for n_devices in (10, 100):
            ceiling = measure_modbus_ceiling("127.0.0.1", port, SECONDS, count=POINTS, clients=n_devices)
            figures = poller_run(port, n_devices, SECONDS)
            print(f"{n_devices:>3} devices x {POINTS} points: ceiling {ceiling:,.0f} reads/s on {n_devices} connections; "
                  f"poller {figures['reads_per_s']:,.0f} reads/s, {figures['points_per_s']:,.0f} points/s, "
                  f"{figures['emitted_per_s']:,.0f} readings/s emitted, "
                  f"{figures['cpu_s_per_1000_points']:.4f} CPU s per 1,000 points, read errors {figures['errors']:.0f}; "
                  f"ratio poller/ceiling {figures['reads_per_s'] / ceiling:.2f}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
