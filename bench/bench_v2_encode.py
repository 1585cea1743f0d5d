"""The edge agent's v2 encoding cost: thread CPU per message of ``delivery.payloads`` on rig-like batches.

One message is what the rig at a 10 ms poll publishes: ten ``ReadingBatch``es (one per device of
one poll tick) of 99 readings each, every reading reported, integral float values (uint16
registers and a uint32 clock), one timestamp per batch, quality ``good``, empty units. As in the
agent, each device's asset, point, unit, quality and sensor lists are the same objects tick after
tick (the poller's block layout); the time and value lists are new every tick.

    python -m bench v2_encode
"""

from __future__ import annotations

import random
import time

from edge_agent.batch import ReadingBatch
from edge_agent.delivery import payloads

DEVICES = 10
POINTS = 99
TICKS = 64                  # distinct poll ticks cycled through (fresh value lists, as in the agent)
CALLS = 3000


def rig_ticks(devices: int = DEVICES, points: int = POINTS, ticks: int = TICKS) -> list[list[ReadingBatch]]:
    """``ticks`` poll ticks of sequenced batches, ``devices`` per tick, seqs consecutive throughout."""
    rng = random.Random(7)
    layouts = []
    for d in range(devices):
        names = ["clock"] + [f"r{a:03d}" for a in range(2, points + 1)]
        layouts.append(([f"rig{d:02d}"] * points, names, [""] * points, ["good"] * points,
                        [f"R{d:02d}_{n}" for n in names]))
    out = []
    seq = 1
    now_ms = 1_764_152_400_000
    for _ in range(ticks):
        tick = []
        for d, (asset, point, unit, quality, sensor) in enumerate(layouts):
            values = [float(now_ms % 2**32)] + [float(rng.randrange(65536)) for _ in range(points - 1)]
            batch = ReadingBatch([now_ms + d] * points, asset, point, values, unit, quality, sensor)
            tick.append(batch.sequenced(seq, now_ms))
            seq += points
        out.append(tick)
        now_ms += 10
    return out


def per_message_us(ticks: list[list[ReadingBatch]], calls: int = CALLS) -> float:
    """Thread CPU microseconds per ``payloads`` call (one v2 message of one tick), best of three rounds."""
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for i in range(calls):
            payloads("rig", ticks[i % len(ticks)], payload_format="v2", max_readings=1000, sent_ms=1_764_152_400_500)
        best = min(best, (time.thread_time() - started) / calls * 1e6)
    return best


def main() -> None:
    ticks = rig_ticks()
    sizes = [len(p) for tick in ticks for p in payloads("rig", tick, payload_format="v2", max_readings=1000,
                                                       sent_ms=1_764_152_400_500)]
    us = per_message_us(ticks)
    readings = DEVICES * POINTS
    print(f"v2 encode ({DEVICES} batches x {POINTS} readings per message, {CALLS} calls, best of 3): "
          f"{us:.1f} us/message, {us * 1000 / readings:.1f} ns/reading, "
          f"{sum(sizes) / len(sizes) / readings:.1f} bytes/reading")


if __name__ == "__main__":
    main()
