"""Poll one Modbus device forever: read plan → decode → calibrate → report by exception → ``emit(batch)``.

``run_device`` is one asyncio task per device (the agent starts one for each
``DeviceConfig``), so a device that stops answering only delays itself. Each
cycle reads the device's blocks (``modbus_source.plan_reads``) through its
``ModbusSource`` and turns every point into a sample:

=================  ==================================================================
``good``           decoded, calibrated value
``loop_fault``     4–20 mA current below 3.8 mA or above 20.5 mA (value still scaled)
``device_error``   the device could not be read (value None); a Modbus exception
                   response or an undecodable value marks just the points concerned
``stale``          the device is still unreachable after a failed poll (value None)
=================  ==================================================================

Samples pass through report by exception (``FilterBank``: deadband, heartbeat,
quality changes, a whole block at once), and the reported ones of one poll go out together as one
``ReadingBatch`` (one ``emit`` per poll, none when nothing is reported), so when a device dies
its points emit ``device_error`` once, then ``stale`` once, then ``stale`` at
each heartbeat — never silently absent. A merged read that hits an address
the device lacks (exception code 2) is split into one read per point for the
rest of the run, so one bad point does not blank its neighbours.

After a failed poll the next one waits ``poll_interval_s × 2**(failures-1)``
(at most ``max(poll_interval_s, reconnect_max_s)``): a dead device is retried
with backoff, not hammered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections import deque
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Awaitable, Callable

from edge_agent.batch import ReadingBatch
from edge_agent.calibration import Calibration, Calibrations, calibrate
from edge_agent.config import BIT_REGISTERS, DeviceConfig, PointConfig
from edge_agent.decode import Decoder, block_codec, make_decoder
from edge_agent.errors import DecodeError, DeviceExceptionResponse, DeviceUnreachable
from edge_agent.exception_report import FilterBank
from edge_agent.metrics import AgentMetrics
from edge_agent.modbus_source import (Backoff, ModbusSource, ReadBlock, SharedConnections, plan_reads, split_block,
                                     unpack_values)

__all__ = ["Emit", "run_device", "DevicePoller", "PollTicks"]

log = logging.getLogger(__name__)

_ILLEGAL_DATA_ADDRESS = 2
_SHORT_WAIT_S = 0.05


Emit = Callable[[ReadingBatch], Awaitable[None]]
"""Takes the reported readings of one poll (``value`` None only for ``device_error`` and ``stale``)."""


_Part = tuple[list[int], list[str], list[str], list[float | None], list[str], list[str], list[str]]
"""The reported readings of one block, as ``ReadingBatch`` columns (ts_ms, asset, point, value, unit, quality, sensor)."""


@dataclass(slots=True)
class _Layout:
    """How one block's response becomes samples, prepared once per block: its points (in block order)
    and their offsets; ``codec`` unpacks the whole response into one number per point (None: a bit
    block, or registers that overlap), ``redo`` lists the points then decoded by their own decoder
    (every register point when ``codec`` is None); ``start`` is the first point's index in the device's
    ``FilterBank`` (a block's points are consecutive there); the batch columns that do not change
    between polls (shared by the batches, never mutated); and the calibration of its points as of
    ``generation`` (None: every point with gain 1 and offset 0, none a 4–20 mA loop: the raw values
    are the values)."""

    points: tuple[PointConfig, ...]
    offsets: tuple[int, ...]
    bits: bool
    codec: struct.Struct | None
    redo: tuple[int, ...]
    decoders: tuple[Decoder | None, ...]
    start: int
    asset: list[str]
    point: list[str]
    unit: list[str]
    sensor: list[str]
    good: list[str]                    # "good" for each point
    loops: bool                        # some point is a 4–20 mA loop
    generation: int = -1
    calibration: tuple[Calibration, ...] | None = None


class DevicePoller:
    """The state of one device's polling: its read plan, its points' report-by-exception state and its connection.

    ``poll_once()`` runs one cycle and returns True when the device answered
    (exception responses count as answers). ``run_device`` loops it.
    """

    def __init__(self, device: DeviceConfig, source: ModbusSource, emit: Emit, *, metrics: AgentMetrics,
                 calibrations: Calibrations, clock: Callable[[], float] = time.time,
                 reconnect_max_s: float = 30.0, stop: asyncio.Event | None = None) -> None:
        self.device = device
        self.reconnect_max_s = reconnect_max_s
        self.stop = stop
        self._stopped: asyncio.Future | None = None
        self._reading: set[asyncio.Task] = set()         # pipelined read tasks inside a read, cancelled when stop is set
        self._reader: asyncio.Task | None = None         # poll_once's task while it waits for a read (max_inflight 1)
        self._stop_cancelled: set[asyncio.Task] = set()
        self.source = source
        self.emit = emit
        self.metrics = metrics
        self.calibrations = calibrations
        self.clock = clock
        self.plan: tuple[ReadBlock, ...] = plan_reads(device)
        # report-by-exception state, one entry per point in plan order: every block (split ones too) is a run
        ordered = [p for block in self.plan for p in block.points]
        self.filters = FilterBank([(p.deadband, p.deadband_percent, p.heartbeat_s) for p in ordered])
        self._index = {p.id: i for i, p in enumerate(ordered)}
        self.failed_polls = 0
        self._layouts: dict[tuple[str, int, int], _Layout] = {}
        self._joined = _JoinedNames()
        metrics.init_device(device.name)
        self._tally = metrics.tally(device.name)        # polls, durations, suppressed samples: counted per poll
        self._device_up = metrics.device_up.labels(device.name)
        self._up = 0                                    # init_device set device_up to 0

    async def _read(self, block: ReadBlock) -> bytes | None:
        """The block's data bytes, or None when ``stop`` was set while waiting for the device
        (a slow or silent device must not hold up shutdown for its timeouts and retries).

        For the pipelined reads of ``poll_once`` (each in a task of its own): setting ``stop``
        cancels the tasks inside a read, and this method takes that cancellation back."""
        if self.stop is None:
            return await self.source.read_raw(block)
        if self.stop.is_set():
            return None
        self._watch_stop()
        task = asyncio.current_task()
        assert task is not None
        self._reading.add(task)
        try:
            return await self.source.read_raw(block)
        except asyncio.CancelledError:
            if task in self._stop_cancelled and task.uncancel() == 0:
                return None
            raise
        finally:
            self._reading.discard(task)
            self._stop_cancelled.discard(task)

    def _watch_stop(self) -> None:
        """Cancel the reads in progress when ``stop`` is set (once per poller: one waiter on ``stop``)."""
        if self._stopped is None and self.stop is not None:
            self._stopped = asyncio.ensure_future(self.stop.wait())
            self._stopped.add_done_callback(self._cancel_reads)

    def _cancel_reads(self, stopped: asyncio.Future) -> None:
        if stopped.cancelled():
            return
        reader = self._reader
        for task in (*self._reading, *((reader,) if reader is not None else ())):
            self._stop_cancelled.add(task)
            task.cancel()

    def close(self) -> None:
        if self._stopped is not None:
            self._stopped.cancel()

    async def poll_once(self, *, task: asyncio.Task | None = None) -> bool:
        """One cycle over the read plan; True when the device answered. Returns early (False,
        nothing counted) when ``stop`` is set while a read is outstanding. ``task``: the task
        running this call, when the caller knows it (else it is looked up).

        With ``max_inflight`` > 1 the next reads of the plan are already on the
        wire while one block is decoded; blocks are still handled in plan order.
        With 1, each read is awaited right here (no task and no coroutine of the
        poller's per read): ``_reader`` names this task while it waits for the
        device, so that setting ``stop`` cancels it there and only there.
        """
        device = self.device
        started = time.monotonic()
        plan = list(self.plan)
        index = 0
        window = device.max_inflight
        ahead: deque[tuple[ReadBlock, asyncio.Future]] = deque()
        answered = True
        parts: list[_Part] = []
        stop = self.stop
        read_raw = self.source.read_raw
        if stop is not None and window == 1:
            if task is None:
                task = asyncio.current_task()
            self._watch_stop()
        try:
            while index < len(plan) or ahead:
                try:
                    if window > 1:
                        while index < len(plan) and len(ahead) < window:
                            ahead.append((plan[index], asyncio.ensure_future(self._read(plan[index]))))
                            index += 1
                        block, pending = ahead.popleft()
                        data = await pending
                        if data is None:
                            if parts:
                                await self.emit(self._joined.batch(parts))
                            return False
                    else:
                        block = plan[index]
                        index += 1
                        if stop is None:
                            data = await read_raw(block)
                        elif stop.is_set():
                            if parts:
                                await self.emit(self._joined.batch(parts))
                            return False
                        else:
                            self._reader = task
                            try:
                                data = await read_raw(block)
                            finally:
                                self._reader = None
                except DeviceExceptionResponse as exc:
                    if exc.code == _ILLEGAL_DATA_ADDRESS and len(block.points) > 1:
                        log.warning("device %s: %s %d+%d is not readable as one block (%s); reading its %d points "
                                    "one by one from now on", device.name, block.register, block.address, block.count,
                                    exc.code_name, len(block.points))
                        split = split_block(block)
                        self.plan = tuple(p for b in self.plan for p in (split if b == block else (b,)))
                        plan[index:index] = split
                        continue
                    log.warning("device %s: %s", device.name, exc)
                    for point in block.points:
                        self.metrics.exception_codes.labels(device.name, point.id, str(exc.code)).inc()
                    self._missing(parts, block, "device_error")
                    continue
                except DeviceUnreachable as exc:
                    answered = False
                    quality = "device_error" if self.failed_polls == 0 else "stale"
                    if self.failed_polls == 0:
                        log.warning("device %s: %s", device.name, exc)
                    for rest in [block, *(b for b, _ in ahead), *plan[index:]]:
                        self._missing(parts, rest, quality)
                    break
                self._samples(parts, block, data, self.clock())
        except asyncio.CancelledError:
            if task is None or task not in self._stop_cancelled:
                raise
            self._stop_cancelled.discard(task)
            if task.uncancel():
                raise                       # cancelled by someone else too
            if parts:                       # stop was set while this task waited for the device
                await self.emit(self._joined.batch(parts))
            return False
        finally:
            for _, pending in ahead:
                pending.cancel()
            if ahead:
                await asyncio.gather(*(pending for _, pending in ahead), return_exceptions=True)
        if parts:
            await self.emit(self._joined.batch(parts))
        self._tally.poll(time.monotonic() - started)
        if answered != self._up:
            self._up = answered
            self._device_up.set(1 if answered else 0)
        if answered:
            if self.failed_polls:
                log.info("device %s: answering again after %d failed polls", device.name, self.failed_polls)
            self.failed_polls = 0
        else:
            self.failed_polls += 1
        return answered

    def _layout(self, block: ReadBlock) -> _Layout:
        """The block's ``_Layout``, prepared at its first use, its calibration refreshed after a reload."""
        key = (block.register, block.address, block.count)     # cheap to hash, unlike the block's points
        layout = self._layouts.get(key)
        if layout is None:
            points = block.points
            offsets = tuple(p.address - block.address for p in points)
            bits = block.register in BIT_REGISTERS
            codec = None if bits else block_codec([(o, p.type, p.byte_order, p.word_order)
                                                   for o, p in zip(offsets, points)])
            redo = codec[1] if codec is not None else () if bits else tuple(range(len(points)))
            decoders = tuple(make_decoder(p.type, p.byte_order, p.word_order, point=p.id)
                             if i in redo and not bits else None for i, p in enumerate(points))
            start = self._index[points[0].id]
            assert [self._index[p.id] for p in points] == list(range(start, start + len(points)))
            layout = self._layouts[key] = _Layout(
                points, offsets, bits, codec[0] if codec is not None else None, redo, decoders, start,
                [p.asset for p in points], [p.name for p in points], [p.unit for p in points],
                [p.id for p in points], ["good"] * len(points), any(p.current_loop is not None for p in points))
            self._joined.own.add(id(layout.asset))
        calibrations = self.calibrations
        if layout.generation != calibrations.generation:
            cals = tuple(calibrations.get(p.id) for p in layout.points)
            identity = all(c.gain == 1.0 and c.offset == 0.0 for c in cals)
            layout.calibration = None if identity and not layout.loops else cals
            layout.generation = calibrations.generation
        return layout

    def _raw(self, layout: _Layout, data: bytes) -> tuple[list[float | None], bool]:
        """Each point's decoded number, None where it does not decode (logged and counted); and
        whether every point decoded.

        One ``struct`` call unpacks the whole response (integers in the Modbus order are then their
        value); floats, bools and other orders are redone by their decoders."""
        if layout.bits:
            bits = unpack_values("coil", len(data) * 8, data)
            return [float(bits[offset]) for offset in layout.offsets], True
        codec = layout.codec
        raws: list[float | None] = list(map(float, codec.unpack_from(data))) if codec is not None \
            else [None] * len(layout.points)
        complete = True
        for i in layout.redo:
            try:
                raws[i] = layout.decoders[i](data, layout.offsets[i])  # type: ignore[misc]
            except DecodeError as exc:
                log.warning("device %s: %s", self.device.name, exc)
                self.metrics.reads.labels(self.device.name, "decode_error").inc()
                raws[i] = None
                complete = False
        return raws, complete

    def _samples(self, parts: list[_Part], block: ReadBlock, data: bytes, now: float) -> None:
        """Decode, calibrate and filter every point of one block's response (``data``, its data bytes)
        into ``parts`` (the hot path: whole-block steps, nothing done point by point when every
        point decodes to a number with no calibration to apply)."""
        layout = self._layout(block)
        raws, complete = self._raw(layout, data)
        cals = layout.calibration
        if cals is None and complete:
            calibrated, qualities = raws, layout.good
            for i in layout.redo:          # × 1 + 0 leaves every number as it is, except -0.0: it becomes 0.0
                if raws[i] == 0.0:
                    raws[i] = 0.0
        elif cals is not None and not layout.loops and complete:
            calibrated = [raw * cal.gain + cal.offset for raw, cal in zip(raws, cals)]  # type: ignore[operator]
            qualities = layout.good
        else:
            calibrated, qualities = [], []
            for point, raw, cal in zip(layout.points, raws, cals or repeat(Calibration())):
                if raw is None:
                    value, quality = None, "device_error"
                elif point.current_loop is None:
                    value, quality = raw * cal.gain + cal.offset, "good"
                else:
                    value, quality = calibrate(point, raw, cal)
                    if quality == "loop_fault":
                        self.metrics.loop_faults.labels(self.device.name, point.id).inc()
                calibrated.append(value)
                qualities.append(quality)
        self._report(parts, layout, calibrated, qualities, now)

    def _missing(self, parts: list[_Part], block: ReadBlock, quality: str) -> None:
        """The block's points without a value (``device_error`` or ``stale``) into ``parts``."""
        n = len(block.points)
        self._report(parts, self._layout(block), [None] * n, [quality] * n, self.clock())

    def _report(self, parts: list[_Part], layout: _Layout, values: list[float | None], qualities: list[str],
                now: float) -> None:
        """Report by exception over the block's samples; the reported ones go into ``parts`` as columns."""
        flags = self.filters.offer(layout.start, values, qualities, now)
        n = len(values)
        if flags is None:
            parts.append(([int(now * 1000)] * n, layout.asset, layout.point, values, layout.unit, qualities,
                          layout.sensor))
            return
        reported = flags.count(True)
        if reported < n:
            self._tally.suppressed += n - reported
        if reported:
            parts.append(([int(now * 1000)] * reported,  # type: ignore[arg-type]
                          *(list(compress(column, flags)) for column in (layout.asset, layout.point, values,
                                                                          layout.unit, qualities, layout.sensor))))

    def next_delay(self) -> float:
        """Seconds from the start of this cycle to the start of the next."""
        interval = self.device.poll_interval_s
        if not self.failed_polls:
            return interval
        return min(interval * 2 ** (self.failed_polls - 1), max(interval, self.reconnect_max_s))


class PollTicks:
    """Shared wake-ups for the pollers of one agent: pollers waiting for the same instant share one timer.

    Short waits between polls end on a grid of ``poll_interval_s`` steps from one origin (the
    first use), so the pollers of one interval wake together at every tick: one timer per tick
    for all of them, not one per device. Each waiter has its own future, so cancelling one
    poller wakes no other.
    """

    def __init__(self) -> None:
        self._origin: float | None = None
        self._due: dict[float, list[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None     # looked up once: a lookup costs a getpid() call

    def tick(self, when: float, interval: float, *, before: bool = False) -> float:
        """The first tick of ``interval`` at or after ``when`` (``before``: the last one at or before it),
        within a millionth of an interval, on the loop's clock."""
        if self._origin is None:
            self._origin = when
        steps = (when - self._origin) / interval
        return self._origin + (math.floor(steps + 1e-6) if before else math.ceil(steps - 1e-6)) * interval

    def wait(self, tick: float) -> "asyncio.Future[None]":
        """A future resolved at loop time ``tick`` (a ``tick()`` value, so that waiters share it)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiting = self._due.get(tick)
        if waiting is None:
            self._due[tick] = [future]
            loop.call_at(tick, self._wake, tick)
        else:
            waiting.append(future)
        return future

    def _wake(self, tick: float) -> None:
        for future in self._due.pop(tick):
            if not future.done():
                future.set_result(None)


async def run_device(device: DeviceConfig, emit: Emit, *, metrics: AgentMetrics, calibrations: Calibrations,
                     stop: asyncio.Event, clock: Callable[[], float] = time.time, backoff: Backoff = Backoff(),
                     reconnect_max_s: float = 30.0, ticks: PollTicks | None = None,
                     shared: SharedConnections | None = None, source: ModbusSource | None = None) -> None:
    """Poll ``device`` every ``poll_interval_s`` until ``stop`` is set, emitting one batch per poll.

    Cycles start on a fixed schedule (no drift); a cycle that overruns its
    interval starts the next one immediately but never two at once. Waits
    under 50 ms end on ticks of the interval (``PollTicks``), so after an
    overrun the cycle after the immediate one starts at the next tick.
    ``backoff`` paces retries within a poll; ``reconnect_max_s`` caps the
    wait between polls of a device that does not answer. ``ticks`` (the
    agent passes one ``PollTicks`` to every device) lets pollers of one
    interval share their wake-ups; ``shared`` (one for the agent) holds the
    connections of devices with ``connection = "shared"``. ``source``: the
    device's connection when the caller holds it (the agent's, which its
    command handler writes through too; left open here), else one of its own.
    """
    own = source is None
    if source is None:
        source = ModbusSource(device, metrics=metrics, backoff=backoff, shared=shared)
    poller = DevicePoller(device, source, emit, metrics=metrics, calibrations=calibrations, clock=clock,
                          reconnect_max_s=reconnect_max_s, stop=stop)
    try:
        await _loop(poller, stop, ticks if ticks is not None else PollTicks())
    finally:
        poller.close()
        if own:
            source.close()


async def _loop(poller: DevicePoller, stop: asyncio.Event, ticks: PollTicks) -> None:
    """Run cycles on a fixed schedule; after failures, wait with backoff from the failed cycle's start."""
    task = asyncio.current_task()
    next_start = time.monotonic()
    while not stop.is_set():
        cycle_start = time.monotonic()
        await poller.poll_once(task=task)
        if stop.is_set():
            break
        delay = poller.next_delay()
        now = time.monotonic()
        next_start = max(next_start + delay, now) if not poller.failed_polls else cycle_start + delay
        wait = next_start - now
        if wait <= 0:
            # overran the interval: go again, but let others run; short intervals keep to their ticks
            if 0 < delay < _SHORT_WAIT_S:
                next_start = ticks.tick(now, delay, before=True)
            await asyncio.sleep(0)
            continue
        if delay < _SHORT_WAIT_S and not poller.failed_polls:
            # a short interval's wait ends on a shared tick (no timer of its own; stop is seen at the next
            # cycle, within milliseconds). Not a long interval's short remainder, nor a backoff: the grid
            # of another origin could push those by up to a whole interval.
            next_start = ticks.tick(next_start, delay)
            await ticks.wait(next_start)
            continue
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait)
        except asyncio.TimeoutError:
            pass


class _JoinedNames:
    """One poll's reported readings as one batch (``batch``), for a device read as several blocks.

    One block's columns are taken as they are. Several blocks' name columns (asset, point, unit,
    sensor) are joined once per combination of the blocks' own lists (their layouts', ids in ``own``:
    the poller holds them for its life) and the same joined lists are handed out again while a
    poll's parts are those very lists (every block answered, nothing filtered): the spool's point
    table and the v2 encoder then recognise the batch's points by identity, as for a one-block read,
    instead of hashing every name of every poll. A filtered poll's lists are joined and not held;
    at most :data:`_MAX_JOINED` combinations are held.
    """

    def __init__(self) -> None:
        self.own: set[int] = set()
        # id of each part's asset list → each part's (asset, point, unit, sensor) lists, the joined ones
        self._held: dict[tuple[int, ...], tuple[list[tuple[list[str], ...]], tuple[list[str], ...]]] = {}

    def batch(self, parts: list[_Part]) -> ReadingBatch:
        if len(parts) == 1:
            return ReadingBatch(*parts[0])
        key = tuple([id(part[1]) for part in parts])
        held = self._held.get(key)
        if held is None or not all(a[0] is b[1] and a[1] is b[2] and a[2] is b[4] and a[3] is b[6]
                                   for a, b in zip(held[0], parts)):
            lists = [(part[1], part[2], part[4], part[6]) for part in parts]
            held = (lists, tuple([name for names in lists for name in names[column]] for column in range(4)))
            if self.own.issuperset(key):
                if len(self._held) >= _MAX_JOINED:
                    self._held.clear()
                self._held[key] = held
        ts: list[int] = []
        value: list[float | None] = []
        quality: list[str] = []
        for part in parts:
            ts += part[0]
            value += part[3]
            quality += part[5]
        asset, point, unit, sensor = held[1]
        return ReadingBatch(ts, asset, point, value, unit, quality, sensor)


_MAX_JOINED = 16
