"""The ceiling of the edge rig: a bare pymodbus client polling the rig's units, nothing else.

    python -m bench.bare_modbus --port P [--devices 10] [--registers 100] [--interval 0.01]
                                [--warmup 2] [--seconds 5]

One ``AsyncModbusTcpClient`` per unit (as the agent has one connection per
device) reads all registers on a fixed schedule (``--interval 0``: back to
back). Prints one JSON object for the measured window: reads and readings per
second (a read of R registers carries R − 1 readings: the clock takes two),
CPU seconds and percent of one core of this process, CPU µs per reading,
p50/p99 latency from the simulator's clock register to the decoded answer,
peak RSS. Exits non-zero when a unit does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

from pymodbus.client import AsyncModbusTcpClient

from bench.rig import RigError, clock_latency_ms, peak_rss_mb, percentile


async def _poll(port: int, unit: int, registers: int, interval: float, warm_at: float, end_at: float,
                latencies: list[float], reads: list[int]) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0)
    if not await client.connect():
        raise RigError(f"cannot connect to the simulator on 127.0.0.1:{port}")
    try:
        next_start = time.monotonic()
        while (started := time.monotonic()) < end_at:
            rr = await client.read_holding_registers(0, count=registers, device_id=unit)
            if rr.isError():
                raise RigError(f"unit {unit} answered {rr}")
            if started >= warm_at:
                reads[0] += 1
                latencies.append(clock_latency_ms(time.time(), (rr.registers[0] << 16) | rr.registers[1]))
            if interval:
                next_start += interval
                wait = next_start - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                else:
                    next_start = time.monotonic()
    finally:
        client.close()


async def _run(args: argparse.Namespace) -> dict[str, float]:
    now = time.monotonic()
    warm_at, end_at = now + args.warmup, now + args.warmup + args.seconds
    latencies: list[float] = []
    reads = [0]
    cpu: list[float] = []

    async def meter() -> None:
        await asyncio.sleep(max(0.0, warm_at - time.monotonic()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end_at - time.monotonic()))
        cpu.append(time.process_time())

    await asyncio.gather(meter(), *(_poll(args.port, unit, args.registers, args.interval, warm_at, end_at,
                                          latencies, reads) for unit in range(1, args.devices + 1)))
    readings = reads[0] * (args.registers - 1)
    if not readings:
        raise RigError("no reads completed in the window")
    cpu_s = cpu[1] - cpu[0]
    return {"reads_per_s": reads[0] / args.seconds, "readings_per_s": readings / args.seconds,
            "cpu_percent": 100 * cpu_s / args.seconds, "cpu_us_per_reading": 1e6 * cpu_s / readings,
            "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
            "peak_rss_mb": peak_rss_mb(os.getpid())}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    print(json.dumps(asyncio.run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
