"""The Modbus adapter: the only module of the agent that imports pymodbus (besides the simulator).

Everything pymodbus-specific stops here (STYLE §2): its exceptions become
``DeviceTimeout`` / ``DeviceUnreachable``, an exception *response* (which
pymodbus returns, not raises) becomes ``DeviceExceptionResponse``, and its own
retry and reconnect machinery is switched off (``retries=0``,
``reconnect_delay=0``) so that our policy is the only one, visible and counted:

* one TCP connection per device (``ModbusSource``), opened lazily, closed
  after a timeout (a late answer must not be taken for the next request's)
  or a broken connection, and reopened on the next attempt; or, for devices
  with ``connection = "shared"``, one per host and port (``SharedConnections``:
  units behind one gateway), where the requests of one turn of the loop go out
  in one write and a timeout fails only its own request while other answers
  still arrive (a connection silent for a whole timeout is closed);
* a read plan computed once per device (``plan_reads``): points of one
  register type sorted by address and merged into blocks while the gap
  between them is at most ``max_read_gap`` registers (``16 ×`` that for bits)
  and the block stays within ``max_read_registers`` (≤125) or
  ``max_read_bits`` (≤2000);
* a minimum gap of ``min_gap_s`` between the end of one request and the start
  of the next (the request budget of legacy PLCs), retries included;
* Modbus TCP devices use ``PipelinedTcpClient``: up to ``max_inflight``
  requests outstanding on the connection (default 1), answers matched by
  transaction id (pymodbus 3.16's client holds a lock across each round trip,
  so it cannot pipeline). It is an ``asyncio.Protocol``: reads are framed
  here, one ``struct`` call each way, and a read returns the answer's data
  bytes (``read_raw``; the poller decodes a whole block with one more
  ``struct`` call) — pymodbus builds and decodes a PDU object per request
  and a Python call per register, and its client wraps each request in
  ``wait_for``. A request costs one future; one timer per connection keeps
  the deadlines. Writes go as pymodbus' own request and response PDUs over
  the same stream. One timeout closes the connection and fails every
  outstanding request (shared connections: see above). A read that goes
  well is one coroutine (``ModbusSource.read_raw``) awaiting one future
  (``PipelinedTcpClient.send_read``). RTU over TCP uses pymodbus' ``AsyncModbusTcpClient``
  with its RTU framer;
* per request ``1 + retries`` attempts, exponential backoff between them;
  exception code 6 (ServerDeviceBusy) is retried like a timeout, other codes
  are not (the device answered; asking again gives the same answer).

Metrics: ``reads{device,outcome}`` per attempt (ok, timeout, unreachable,
exception; ``ok`` tallied per device and added at collection, ``metrics.DeviceTally``),
``read_retries{device}``, ``device_connects{device,outcome}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import deque
from dataclasses import dataclass
from itertools import chain
from typing import Any, Awaitable, Callable, Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.framer.socket import FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU

from edge_agent.config import BIT_REGISTERS, DeviceConfig, PointConfig
from edge_agent.errors import DeviceExceptionResponse, DeviceTimeout, DeviceUnreachable
from edge_agent.event_loop import TIMER_SLACK_S
from edge_agent.metrics import AgentMetrics

__all__ = ["ReadBlock", "plan_reads", "split_block", "ModbusSource", "Backoff", "PipelinedTcpClient",
           "parse_frames", "unpack_values", "measure_modbus_ceiling"]

log = logging.getLogger(__name__)

_BUSY = 6   # ServerDeviceBusy: worth asking again later
_READ_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}     # Modbus function codes
_READ_REQUEST = struct.Struct(">HHHBBHH")    # MBAP (transaction, protocol 0, length 6, unit) + code, address, count
_MBAP = struct.Struct(">HHHB")               # transaction, protocol (0), length (of unit id + PDU), unit id
_MAX_PDU = 253          # Modbus TCP: unit id + PDU fit in the 2-byte MBAP length, at most 254
_BYTE_BITS = [tuple(bool(byte >> i & 1) for i in range(8)) for byte in range(256)]    # LSB first, as on the wire


class ModbusExceptionAnswer(Exception):
    """A device answered a read with a Modbus exception ``code`` (``PipelinedTcpClient.read``)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exception code {code}")
        self.code = code


@dataclass(frozen=True)
class ReadBlock:
    """One Modbus request: ``count`` registers (or bits) of ``register`` from ``address``, serving ``points``."""

    register: str
    address: int
    count: int
    points: tuple[PointConfig, ...]

    def slice(self, values: Sequence[int] | Sequence[bool], point: PointConfig) -> Sequence[int] | Sequence[bool]:
        """The part of this block's response that belongs to ``point``."""
        start = point.address - self.address
        return values[start:start + point.count]


def plan_reads(device: DeviceConfig) -> tuple[ReadBlock, ...]:
    """Merge the device's points into as few requests as the limits allow (computed once per device).

    Within one register type, the next point (by address) joins the current
    block when the unread gap before it is at most ``device.max_read_gap``
    registers (``16 ×`` for coils/discretes, which are cheap) and the block's
    span stays within ``max_read_registers`` / ``max_read_bits``.
    """
    blocks: list[ReadBlock] = []
    for register in ("holding", "input", "coil", "discrete"):
        points = sorted((p for p in device.points if p.register == register), key=lambda p: p.address)
        bits = register in BIT_REGISTERS
        limit = device.max_read_bits if bits else device.max_read_registers
        max_gap = device.max_read_gap * (16 if bits else 1)
        current: list[PointConfig] = []
        start = end = 0
        for point in points:
            point_end = point.address + point.count
            if current and point.address - end <= max_gap and max(end, point_end) - start <= limit:
                current.append(point)
                end = max(end, point_end)
                continue
            if current:
                blocks.append(ReadBlock(register, start, end - start, tuple(current)))
            current, start, end = [point], point.address, point_end
        if current:
            blocks.append(ReadBlock(register, start, end - start, tuple(current)))
    return tuple(blocks)


def split_block(block: ReadBlock) -> tuple[ReadBlock, ...]:
    """One block per point: used when a merged read hit an address the device does not have."""
    return tuple(ReadBlock(block.register, p.address, p.count, (p,)) for p in block.points)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``base_s × 2**attempt``, at most ``max_s``, ±``jitter`` fraction."""

    base_s: float = 0.1
    max_s: float = 5.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        delay = min(self.base_s * (2 ** attempt), self.max_s)
        return delay * (1.0 + random.uniform(-self.jitter, self.jitter))


def parse_frames(data: bytes | bytearray) -> tuple[list[tuple[int, int, bytes]], int]:
    """The complete Modbus TCP frames at the start of ``data``: ``([(transaction id, unit id, PDU)], bytes used)``.

    An incomplete frame at the end is left for the next call (``bytes used`` stops before it).
    Raises ValueError for a header that cannot start a frame (protocol id not 0, length outside
    2..254): the stream is out of step and nothing after it can be trusted.
    """
    frames = []
    pos, end = 0, len(data)
    unpack = _MBAP.unpack_from
    while end - pos >= 7:
        tid, protocol, length, unit = unpack(data, pos)
        if protocol or not 2 <= length <= _MAX_PDU + 1:
            raise ValueError(f"malformed Modbus TCP header {bytes(data[pos:pos + 7]).hex()}")
        stop = pos + 6 + length
        if stop > end:
            break
        frames.append((tid, unit, bytes(data[pos + 7:stop])))
        pos = stop
    return frames, pos


class _Slots:
    """At most ``limit`` holders at once, first come first served (an ``asyncio.Semaphore`` without its
    per-acquire coroutine and waiter scan: a free slot is taken with no await)."""

    __slots__ = ("free", "_queue")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._queue: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free slot at once if nobody waits for one; False when the caller must ``wait()``."""
        if self.free > 0 and not self._queue:
            self.free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot (call only when ``take()`` failed); the slot is then the caller's."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()              # the slot was handed over as we were cancelled: pass it on
            elif future in self._queue:     # a release() may have dropped it already (cancelled futures)
                self._queue.remove(future)
            raise

    def release(self) -> None:
        while self._queue:
            future = self._queue.popleft()
            if not future.done():
                future.set_result(None)     # the slot goes straight to the first waiter
                return
        self.free += 1


class RequestNotSent(ConnectionException):
    """The request never reached the wire: the connection was gone when its turn came (sending it
    again, on a new connection, cannot apply a write twice)."""


class PipelinedTcpClient(ModbusClientMixin[Awaitable[ModbusPDU]], asyncio.Protocol):
    """A Modbus TCP client with up to ``limit`` requests outstanding on one connection.

    ``read_raw(register, address, count, unit)`` frames a read itself and returns
    the answer's data bytes (two big-endian bytes per register, or the bits
    packed LSB first); ``read`` returns them as numbers. The other request
    methods (``write_register`` …) are pymodbus' own (``ModbusClientMixin``);
    ``execute`` sends each request with the next transaction id and returns
    the answer carrying that id. No answer within ``timeout_s`` raises
    ``asyncio.TimeoutError`` after closing the connection (a late answer must
    not be taken for a later request's); a lost connection or a malformed
    frame raises ``ConnectionException`` for every outstanding request. An
    answer with a transaction id nobody waits for is ignored.

    It is its own ``asyncio.Protocol``: answers are split into frames in
    ``data_received`` and resolve the request's future there, so a request
    costs one future and no task; deadlines are kept by one timer per
    connection, armed for the oldest outstanding request (not one timer per
    request). Not thread-safe; the constructor does no I/O.

    ``shared``: the connection of several units behind one gateway
    (``SharedConnections``). Requests made in one turn of the event loop are
    written together, and a timeout closes the connection only when nothing
    at all arrived on it since the request was sent; otherwise just that
    request fails (one unit is silent, the gateway and the others are not).
    """

    def __init__(self, host: str, port: int, *, timeout_s: float, limit: int, shared: bool = False) -> None:
        super().__init__()
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.shared = shared
        self._out: list[bytes] = []         # shared: the requests of this turn of the loop, written together
        self._answers = 0                   # answers received: a timeout with answers since is one unit's, not the link's
        # A shared link under suspicion: (answers then, the youngest request's deadline then). A timeout with no
        # answer since its request left drops the link only once the requests younger than it had their chance.
        self._suspect: tuple[int, float] | None = None
        self._slots = _Slots(limit)
        self._framer = FramerSocket(DecodePDU(is_server=False))
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None     # the connection's loop (Python 3.11's
        self._buffer = bytearray()                               # get_running_loop() costs a getpid() call)
        # transaction id → (its future, the read's function code and count (code 0: a pymodbus request),
        # the unit id the answer must carry (None: not checked), its deadline on the loop's clock,
        # ``_answers`` when it was sent)
        self._waiting: dict[int, tuple[asyncio.Future[Any], int, int, int | None, float, int]] = {}
        self._next_tid = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> bool:
        """Open the connection; False when refused or not open within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, self.host, self.port), self.timeout_s)
        except (OSError, asyncio.TimeoutError):
            return False
        return self._transport is not None

    def close(self) -> None:
        """Drop the connection; outstanding requests raise ConnectionException."""
        self._drop("connection closed")

    # -- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop(f"connection to {self.host}:{self.port} lost ({exc!r})")

    def eof_received(self) -> bool:
        self._drop(f"connection to {self.host}:{self.port} closed by the device")
        return False

    def data_received(self, data: bytes) -> None:
        self._answers += 1
        buffer = self._buffer
        if buffer:
            buffer += data
            data = buffer                   # type: ignore[assignment]
        elif len(data) >= 7:
            tid, protocol, length, unit = _MBAP.unpack_from(data)
            if length == len(data) - 6 and not protocol and 2 <= length <= _MAX_PDU + 1:
                try:                        # exactly one whole frame, the usual answer: no framing pass
                    self._answer(tid, unit, data[7:])
                except (ValueError, ModbusException) as exc:
                    self._drop(f"connection to {self.host}:{self.port} dropped: {exc}")
                return
        try:
            frames, used = parse_frames(data)
            for tid, unit, pdu in frames:
                self._answer(tid, unit, pdu)
        except (ValueError, ModbusException) as exc:     # the connection is out of step: drop it, fail them all
            self._drop(f"connection to {self.host}:{self.port} dropped: {exc}")
            return
        if data is buffer:
            del buffer[:used]
        elif used < len(data):
            buffer += data[used:]           # an incomplete frame (at most 259 bytes) waits for the rest

    def _answer(self, tid: int, unit: int, pdu: bytes) -> None:
        waiting = self._waiting.pop(tid, None)
        if waiting is None:
            return                          # an answer to a request given up on: never taken for another
        self._slots.release()
        future, code, count, want_unit, _, _ = waiting
        if future.done():
            return
        try:
            if want_unit is not None and unit != want_unit:
                raise ValueError(f"answer from device id {unit} to a request for device id {want_unit}")
            if code:
                future.set_result(_read_answer(code, count, pdu))
                return
            _, answer = self._framer.handleFrame(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu, 0, 0)
        except (ValueError, ModbusException) as exc:
            future.set_exception(ConnectionException(str(exc)))
            raise
        if answer is not None:
            future.set_result(answer)
        else:       # taken off the waiting table: unresolved, its caller would wait for ever
            future.set_exception(ModbusIOException(f"answer to transaction {tid} did not decode"))

    def _drop(self, why: str) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer.clear()
        self._out.clear()
        self._suspect = None
        waiting, self._waiting = self._waiting, {}
        for future, *_ in waiting.values():
            self._slots.release()
            if not future.done():
                future.set_exception(ConnectionException(why))

    def _check_deadlines(self) -> None:
        """The connection's timer: time out the oldest requests that are past their deadline, re-arm for the next.

        A timeout drops the connection (a late answer must not be taken for a later request's), except on
        a shared one that has received answers since the request was sent: there the connection is alive,
        one unit is silent, and only its request fails (its late answer, if any, has no one waiting). With
        no answer since, a shared link is only suspect while younger requests wait (their units' polls
        may be staggered): it is dropped when the youngest of them times out with still no answer."""
        self._timer = None
        now = asyncio.get_running_loop().time()
        waiting = self._waiting
        while waiting:
            tid, (future, _, _, _, deadline, answers) = next(iter(waiting.items()))     # the oldest request
            if deadline - now > TIMER_SLACK_S:        # not yet (uvloop's timers may fire early: see event_loop)
                self._timer = asyncio.get_running_loop().call_at(deadline, self._check_deadlines)
                return
            del waiting[tid]
            self._slots.release()
            if future.done():               # given up on by its caller: forget it, the connection is fine
                continue
            future.set_exception(asyncio.TimeoutError())
            if self.shared:
                if answers != self._answers:
                    continue
                suspect = self._suspect
                if suspect is not None and suspect[0] != self._answers:
                    suspect = None                  # answers came since the suspicion: it is void
                if suspect is None and waiting:
                    self._suspect = (self._answers, next(reversed(waiting.values()))[4])
                    continue
                if suspect is not None and deadline < suspect[1] - TIMER_SLACK_S:
                    continue                        # older than the youngest request of the suspicion
            self._drop(f"no answer from {self.host}:{self.port} within {self.timeout_s:g}s")
            return

    # -- requests --------------------------------------------------------------
    def send_read(self, code: int, address: int, count: int, unit: int) -> "asyncio.Future[Any] | None":
        """Send a read of function ``code`` now, if a request slot is free (None when ``limit`` requests are
        outstanding): a future resolved with the answer's data bytes or a ``ModbusExceptionAnswer`` (returned,
        not raised), failed with asyncio.TimeoutError or ConnectionException as ``read_raw`` raises them.

        No coroutine of its own: the caller awaits the future directly. Raises ConnectionException when
        not connected. The slot is held until the request is answered, timed out or dropped, even when
        the caller stops waiting (it is still outstanding on the wire)."""
        if not self._slots.take():
            return None
        return self._send_read(code, address, count, unit)

    def _send_read(self, code: int, address: int, count: int, unit: int) -> "asyncio.Future[Any]":
        tid = self._new_tid()
        return self._send(tid, code, count, unit, _READ_REQUEST.pack(tid, 0, 6, unit, code, address, count))

    async def read_raw(self, register: str, address: int, count: int, unit: int) -> bytes:
        """The data bytes of ``count`` registers (``holding``, ``input``) or bits (``coil``, ``discrete``)
        from ``address``, as the answer carries them.

        Raises ModbusExceptionAnswer for an exception answer, ConnectionException or asyncio.TimeoutError
        as ``execute`` does, and ConnectionException for an answer that does not fit the request.
        """
        code = _READ_CODES[register]
        future = self.send_read(code, address, count, unit)
        if future is None:
            await self._slots.wait()
            future = self._send_read(code, address, count, unit)
        answer = await future
        if answer.__class__ is ModbusExceptionAnswer:
            raise answer
        return answer

    async def read(self, register: str, address: int, count: int, unit: int) -> list[int] | list[bool]:
        """``read_raw``'s answer as numbers: ``count`` registers (ints) or bits (bools)."""
        return unpack_values(register, count, await self.read_raw(register, address, count, unit))

    async def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:  # type: ignore[override]
        if not self._slots.take():
            await self._slots.wait()
        request.transaction_id = self._new_tid()
        return await self._send(request.transaction_id, 0, 0, request.dev_id or None, self._framer.buildFrame(request))

    def _new_tid(self) -> int:
        """The next Modbus TCP transaction id (1..65535, wrapping)."""
        tid = self._next_tid = self._next_tid % 65535 + 1
        return tid

    def _send(self, tid: int, code: int, count: int, unit: int | None, frame: bytes) -> "asyncio.Future[Any]":
        """Register and write one request; the caller holds a slot, released when the request leaves
        ``_waiting`` (answer, deadline, drop) or here when it cannot be sent."""
        transport = self._transport
        loop = self._loop
        if transport is None or transport.is_closing() or loop is None:
            self._slots.release()
            raise RequestNotSent(f"not connected to {self.host}:{self.port}")
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self.timeout_s
        self._waiting[tid] = (future, code, count, unit, deadline, self._answers)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadlines)
        if not self.shared:
            transport.write(frame)
        else:                               # the devices' requests of one tick: one write (one send), not one each
            if not self._out:
                loop.call_soon(self._flush)
            self._out.append(frame)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(b"".join(out))


def _read_answer(code: int, count: int, body: bytes) -> bytes | ModbusExceptionAnswer:
    """The data bytes of a read's answer ``body`` (function code onwards), or the device's exception.
    Raises ValueError for an answer that is not one to this read (its length is checked by the caller)."""
    if body[0] == code | 0x80 and len(body) == 2:
        return ModbusExceptionAnswer(body[1])
    if body[0] != code or len(body) < 2 or body[1] != len(body) - 2:
        raise ValueError(f"answer {body[:8].hex()} does not fit a request of function {code}")
    return body[2:]


def _data_bytes(block: ReadBlock) -> int:
    """How many data bytes the answer to ``block`` carries."""
    return (block.count + 7) // 8 if block.register in BIT_REGISTERS else 2 * block.count


def unpack_values(register: str, count: int, data: bytes) -> list[int] | list[bool]:
    """A read's data bytes as ``count`` registers (ints 0..65535) or bits (bools)."""
    if register in BIT_REGISTERS:
        return list(chain.from_iterable(_BYTE_BITS[byte] for byte in data))[:count]
    return list(struct.unpack(f">{len(data) // 2}H", data[:len(data) // 2 * 2]))


class SharedConnections:
    """The connections of the devices with ``connection = "shared"``: one ``PipelinedTcpClient`` per host
    and port, opened by the first of its devices to need it and reopened the same way after a drop.

    A shared connection takes as many outstanding requests as its devices' ``max_inflight`` added up
    (each device still keeps to its own), so one silent unit holds only its own share. ``close()``
    drops them all. Build it from the agent's devices; ``ModbusSource(..., shared=...)`` uses it.
    """

    def __init__(self, devices: Sequence[DeviceConfig]) -> None:
        self._limits: dict[tuple[str, int], int] = {}
        for device in devices:
            if device.shares_connection:
                key = (device.host, device.port)
                self._limits[key] = self._limits.get(key, 0) + device.max_inflight
        self._clients: dict[tuple[str, int], PipelinedTcpClient] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    def lock(self, device: DeviceConfig) -> asyncio.Lock:
        """Held while the device's connection is looked up or opened (one attempt at a time)."""
        return self._locks.setdefault((device.host, device.port), asyncio.Lock())

    def open(self, device: DeviceConfig) -> PipelinedTcpClient | None:
        """The device's shared connection when it is open (call holding ``lock``)."""
        client = self._clients.get((device.host, device.port))
        return client if client is not None and client.connected else None

    def new(self, device: DeviceConfig) -> PipelinedTcpClient:
        """A new, not yet connected client for the device's shared connection (call holding ``lock``)."""
        key = (device.host, device.port)
        limit = self._limits.get(key, device.max_inflight)
        client = self._clients[key] = PipelinedTcpClient(device.host, device.port, timeout_s=device.timeout_s,
                                                         limit=limit, shared=True)
        return client

    def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()


class ModbusSource:
    """One device's connection, request budget and retry policy. An async context manager.

    ``read(block)`` returns the block's registers (``list[int]``) or bits
    (``list[bool]``, exactly ``block.count``), or raises ``DeviceTimeout``,
    ``DeviceUnreachable`` (after the retries) or ``DeviceExceptionResponse``.
    The constructor does no I/O; the connection opens on the first read.
    A device with ``connection = "shared"`` uses its host and port's connection in ``shared``
    (a ``SharedConnections`` of its own when None); closing the source leaves that connection to
    the other devices, and its own requests are held to its ``max_inflight`` here.
    """

    def __init__(self, device: DeviceConfig, *, metrics: AgentMetrics | None = None,
                 backoff: Backoff = Backoff(), monotonic: Callable[[], float] = time.monotonic,
                 shared: SharedConnections | None = None) -> None:
        self.device = device
        self._shared = (shared if shared is not None else SharedConnections([device])) \
            if device.shares_connection else None
        self._unit_slots = _Slots(device.max_inflight) if device.shares_connection else None
        self.metrics = metrics
        self.backoff = backoff
        self._monotonic = monotonic
        self._client: AsyncModbusTcpClient | PipelinedTcpClient | None = None
        self._connecting = asyncio.Lock()
        # One request at a time across the poller's reads and the command handler's writes on this source,
        # each with its connection check: with a request budget (min_gap_s) the gap is kept between them;
        # pymodbus' RTU-over-TCP client sends one at a time anyway, and a write must not wait inside it for
        # a read whose timeout closes the connection (pymodbus would drop the write unsent, as a timeout).
        self._turn = asyncio.Lock() if device.min_gap_s or device.transport == "rtu-over-tcp" else None
        self._last_request_end = -float("inf")
        self._read_counters: dict[str, Any] = {}      # outcome → this device's child of ``reads``
        self._tally = metrics.tally(device.name) if metrics is not None else None
        self._direct = device.transport == "tcp" and not device.min_gap_s    # read_raw's short path applies
        self.requests_sent = 0

    async def __aenter__(self) -> "ModbusSource":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _close(self, client: AsyncModbusTcpClient | PipelinedTcpClient) -> None:
        """``close()`` when ``client`` is still this source's connection (not one the poller opened since)."""
        if self._client is client:
            self.close()

    def close(self) -> None:
        """Drop the connection (the next read reconnects); a shared one is only let go of: it closes
        itself when it is broken or silent, not for one device's trouble."""
        if self._client is not None:
            client, self._client = self._client, None
            if self._shared is None:
                client.close()

    async def connect(self) -> None:
        """Open the TCP connection; raises DeviceTimeout or DeviceUnreachable."""
        device = self.device
        self.close()
        if self._shared is not None:
            async with self._shared.lock(device):
                client = self._shared.open(device)
                if client is None:
                    await self._open(self._shared.new(device))
                else:
                    self._client = client
            return
        await self._open(PipelinedTcpClient(device.host, device.port, timeout_s=device.timeout_s,
                                            limit=device.max_inflight) if device.transport != "rtu-over-tcp"
                         else None)

    async def _open(self, client: AsyncModbusTcpClient | PipelinedTcpClient | None) -> None:
        """Connect ``client`` (None: pymodbus' RTU-over-TCP client) and make it this source's."""
        device = self.device
        if client is None:
            client = AsyncModbusTcpClient(
                device.host, port=device.port,
                framer=FramerType.RTU,
                timeout=device.timeout_s, retries=0, reconnect_delay=0, reconnect_delay_max=0,
                name=f"ems-{device.name}",
            )
        started = self._monotonic()
        try:
            ok = await client.connect()
        except (ModbusException, OSError) as exc:
            client.close()
            self._count_connect("failed")
            raise DeviceUnreachable(device.name, f"cannot connect to {device.host}:{device.port}: {exc}") from exc
        if not ok:
            client.close()
            self._count_connect("failed")
            elapsed = self._monotonic() - started
            if elapsed >= device.timeout_s * 0.9:
                raise DeviceTimeout(device.name, f"no TCP connection to {device.host}:{device.port} "
                                                 f"within {device.timeout_s:g}s")
            raise DeviceUnreachable(device.name, f"cannot connect to {device.host}:{device.port} (refused or unreachable)")
        self._count_connect("ok")
        log.info("device %s: connected to %s:%s", device.name, device.host, device.port)
        self._client = client

    async def read(self, block: ReadBlock) -> list[int] | list[bool]:
        """Read ``block`` with the device's retries and request budget: its registers or bits."""
        return unpack_values(block.register, block.count, await self.read_raw(block))

    async def read_raw(self, block: ReadBlock) -> bytes:
        """Read ``block`` with the device's retries and request budget: the answer's data bytes, two
        big-endian bytes per register or the bits packed LSB first (``unpack_values`` turns them into numbers).

        The usual read (Modbus TCP, connected, no request budget to keep, a request slot free) is sent
        at once and its answer's future awaited here, with no coroutine below this one; anything else,
        and any failure of that first attempt, continues in the general path (``_read_retrying``)."""
        client = self._client
        unit_slots = self._unit_slots
        if self._direct and client is not None and client.connected and (unit_slots is None or unit_slots.take()):
            future = client.send_read(_READ_CODES[block.register], block.address,  # type: ignore[union-attr]
                                      block.count, self.device.unit)
            if future is None and unit_slots is not None:
                unit_slots.release()
            if future is not None:
                self.requests_sent += 1
                try:
                    data = await future
                except (asyncio.TimeoutError, ConnectionException) as exc:
                    failure = self._failure(block, exc)
                else:
                    if data.__class__ is bytes and len(data) == _data_bytes(block):
                        if self._tally is not None:
                            self._tally.reads_ok += 1     # added to reads{outcome="ok"} at the next scrape
                        return data
                    failure = self._failure(block, data)
                finally:
                    if unit_slots is not None:
                        unit_slots.release()
                return await self._read_retrying(block, failure)
        return await self._read_retrying(block, None)

    async def _read_retrying(self, block: ReadBlock, failure: DeviceUnreachable | DeviceExceptionResponse | None
                             ) -> bytes:
        """``read_raw`` with ``1 + retries`` attempts; ``failure``: how the first attempt (made by the caller) failed."""
        attempts = 1 + self.device.retries
        for attempt in range(attempts):
            if attempt:
                if self.metrics is not None:
                    self.metrics.read_retries.labels(self.device.name).inc()
                await asyncio.sleep(self.backoff.delay(attempt - 1))
            try:
                if failure is not None:
                    first, failure = failure, None
                    raise first
                return await self._read_once(block)
            except DeviceExceptionResponse as exc:
                if exc.code != _BUSY or attempt == attempts - 1:
                    raise
                log.debug("device %s: busy at %s %d, retrying", self.device.name, block.register, block.address)
            except DeviceUnreachable as exc:     # includes DeviceTimeout
                self.close()
                if attempt == attempts - 1:
                    raise
                log.debug("device %s: %s; retry %d of %d", self.device.name, exc.detail, attempt + 1, attempts - 1)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _wait_budget(self) -> None:
        wait = self._last_request_end + self.device.min_gap_s - self._monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _read_once(self, block: ReadBlock) -> bytes:
        if self._turn is not None:                # the connection is checked in turn (a write may have dropped it)
            async with self._turn:
                return await self._read_in_turn(block)
        return await self._read_in_turn(block)

    async def _connected(self) -> AsyncModbusTcpClient | PipelinedTcpClient:
        """This source's connection, opened first when there is none: one attempt at a time, which the
        poller's pipelined reads and the command handler's writes share (the request budget is kept
        before it). Raises DeviceTimeout or DeviceUnreachable."""
        client = self._client
        if client is None or not client.connected:
            async with self._connecting:
                if self._client is None or not self._client.connected:
                    await self._wait_budget()
                    await self.connect()
            client = self._client
            assert client is not None
        return client

    async def _read_in_turn(self, block: ReadBlock) -> bytes:
        try:
            client = await self._connected()
        except DeviceUnreachable as exc:
            self._count_read("timeout" if isinstance(exc, DeviceTimeout) else "unreachable")
            raise
        device = self.device
        if device.min_gap_s:                      # with no gap to keep, no clock to read
            await self._wait_budget()
        unit_slots = self._unit_slots
        if unit_slots is not None and not unit_slots.take():
            await unit_slots.wait()
        self.requests_sent += 1
        try:
            if isinstance(client, PipelinedTcpClient):
                data = await client.read_raw(block.register, block.address, block.count, device.unit)
            else:
                data = self._data(block, await self._read_pymodbus(client, block))
        except ModbusExceptionAnswer as exc:
            raise self._failure(block, exc) from None
        except ModbusIOException as exc:
            # pymodbus raises this after its (disabled) retries when no answer came in time,
            # and for an answer with the wrong transaction or device id
            timed_out = "No response" in str(exc)
            self._count_read("timeout" if timed_out else "unreachable")
            if timed_out:
                raise DeviceTimeout(device.name, f"no answer to {block.register} {block.address}+{block.count} "
                                                 f"within {device.timeout_s:g}s") from exc
            raise DeviceUnreachable(device.name, f"bad answer to {block.register} {block.address}: {exc}") from exc
        except (asyncio.TimeoutError, ConnectionException, ModbusException, OSError) as exc:
            raise self._failure(block, exc) from exc
        finally:
            if unit_slots is not None:
                unit_slots.release()
            if device.min_gap_s:
                self._last_request_end = self._monotonic()
        if len(data) != _data_bytes(block):
            raise self._failure(block, data)
        if self._tally is not None:
            self._tally.reads_ok += 1             # added to reads{outcome="ok"} at the next scrape
        return data

    def _failure(self, block: ReadBlock, outcome: BaseException | bytes
                 ) -> DeviceUnreachable | DeviceExceptionResponse:
        """The error for one failed attempt at ``block`` (counted in ``reads``): ``outcome`` is the device's
        exception answer, what the request raised, or data bytes of the wrong length (the connection is
        then dropped: the stream cannot be trusted)."""
        device = self.device
        if isinstance(outcome, ModbusExceptionAnswer):
            self._count_read("exception")
            return DeviceExceptionResponse(device.name, block.address, outcome.code)
        if isinstance(outcome, asyncio.TimeoutError):    # PipelinedTcpClient: no answer in time
            self._count_read("timeout")
            error: DeviceUnreachable = DeviceTimeout(
                device.name, f"no answer to {block.register} {block.address}+{block.count} within {device.timeout_s:g}s")
        elif isinstance(outcome, BaseException):
            self._count_read("unreachable")
            error = DeviceUnreachable(device.name, f"connection lost reading {block.register} {block.address}: {outcome}")
        else:
            self._count_read("unreachable")
            self.close()
            return DeviceUnreachable(device.name, f"{len(outcome)} data bytes in the answer to {block.register} "
                                                  f"{block.address}+{block.count} (expected {_data_bytes(block)})")
        error.__cause__ = outcome
        return error

    async def _read_pymodbus(self, client: AsyncModbusTcpClient, block: ReadBlock) -> ModbusPDU:
        unit = self.device.unit
        if block.register == "holding":
            return await client.read_holding_registers(block.address, count=block.count, device_id=unit)
        if block.register == "input":
            return await client.read_input_registers(block.address, count=block.count, device_id=unit)
        if block.register == "coil":
            return await client.read_coils(block.address, count=block.count, device_id=unit)
        return await client.read_discrete_inputs(block.address, count=block.count, device_id=unit)

    @staticmethod
    def _data(block: ReadBlock, response: ModbusPDU) -> bytes:
        """A pymodbus answer's registers or bits as the data bytes of the frame; ModbusExceptionAnswer
        for an exception response."""
        if response.isError():
            raise ModbusExceptionAnswer(int(getattr(response, "exception_code", 0)))
        if block.register in BIT_REGISTERS:     # bits come padded to whole bytes, LSB first as on the wire
            bits = list(response.bits)[:block.count]
            return bytes(sum(1 << i for i, bit in enumerate(bits[k:k + 8]) if bit) for k in range(0, len(bits), 8))
        return struct.pack(f">{len(response.registers)}H", *response.registers)

    async def write(self, register: str, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """One write request, never repeated once sent (it could apply twice): sent again, once, on a new
        connection only when it never reached the wire (``RequestNotSent``: the connection dropped while
        it waited for its turn).

        ``register`` ``coil`` writes ``values[0]`` with function code 5; ``holding``
        writes one register with code 6 and several with code 16. Raises
        DeviceTimeout, DeviceUnreachable or DeviceExceptionResponse; after a
        timeout the connection is dropped (a late answer is not taken for the next).
        """
        if self._turn is not None:
            async with self._turn:
                await self._write_in_turn(register, address, values)
        else:
            await self._write_in_turn(register, address, values)

    async def _write_in_turn(self, register: str, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        device = self.device
        for attempt in range(2):
            client = await self._connected()      # the poller may be connecting this very source
            try:
                response = await self._write_request(client, register, address, values)
                break
            except DeviceUnreachable as exc:
                # Never on the wire: the connection dropped (the poll's request timed out) while the write
                # waited for its slot. Sending it on a new connection cannot apply it twice.
                if attempt or not isinstance(exc.__cause__, RequestNotSent):
                    raise
        if response.isError():
            raise DeviceExceptionResponse(device.name, address, int(getattr(response, "exception_code", 0)), "writing")

    async def _write_request(self, client: AsyncModbusTcpClient | PipelinedTcpClient, register: str, address: int,
                             values: Sequence[int] | Sequence[bool]) -> ModbusPDU:
        device = self.device
        await self._wait_budget()
        unit_slots = self._unit_slots
        if unit_slots is not None and not unit_slots.take():
            await unit_slots.wait()
        self.requests_sent += 1
        try:
            if register == "coil":
                response = await client.write_coil(address, bool(values[0]), device_id=device.unit)
            elif len(values) == 1:
                response = await client.write_register(address, int(values[0]), device_id=device.unit)
            else:
                response = await client.write_registers(address, [int(v) for v in values], device_id=device.unit)
        except asyncio.TimeoutError as exc:      # PipelinedTcpClient's deadline (pymodbus says "No response")
            self._close(client)
            raise DeviceTimeout(device.name, f"no answer to the write of {register} {address} "
                                             f"within {device.timeout_s:g}s") from exc
        except ModbusIOException as exc:
            self._close(client)
            if "No response" in str(exc):
                raise DeviceTimeout(device.name, f"no answer to the write of {register} {address} "
                                                 f"within {device.timeout_s:g}s") from exc
            raise DeviceUnreachable(device.name, f"bad answer to the write of {register} {address}: {exc}") from exc
        except (ConnectionException, ModbusException, OSError) as exc:
            self._close(client)
            raise DeviceUnreachable(device.name, f"connection lost writing {register} {address}: {exc}") from exc
        finally:
            if unit_slots is not None:
                unit_slots.release()
            self._last_request_end = self._monotonic()
        return response

    def _count_read(self, outcome: str) -> None:
        if self.metrics is not None:
            counter = self._read_counters.get(outcome)
            if counter is None:
                counter = self._read_counters[outcome] = self.metrics.reads.labels(self.device.name, outcome)
            counter.inc()

    def _count_connect(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.device_connects.labels(self.device.name, outcome).inc()


async def _ceiling(host: str, port: int, seconds: float, unit: int, count: int, clients: int) -> float:
    async def one(client: AsyncModbusTcpClient, deadline: float) -> int:
        done = 0
        while time.monotonic() < deadline:
            response = await client.read_holding_registers(0, count=count, device_id=unit)
            if response.isError():
                raise DeviceExceptionResponse("ceiling", 0, int(getattr(response, "exception_code", 0)))
            done += 1
        return done

    pool = [AsyncModbusTcpClient(host, port=port, timeout=5, retries=0, reconnect_delay=0) for _ in range(clients)]
    try:
        for client in pool:
            if not await client.connect():
                raise DeviceUnreachable("ceiling", f"cannot connect to {host}:{port}")
        started = time.monotonic()
        totals = await asyncio.gather(*(one(c, started + seconds) for c in pool))
        return sum(totals) / (time.monotonic() - started)
    finally:
        for client in pool:
            client.close()


def measure_modbus_ceiling(host: str, port: int, seconds: float, *, unit: int = 1, count: int = 100,
                           clients: int = 1) -> float:
    """Reads per second a bare pymodbus client achieves against a server (the Modbus read ceiling).

    Back-to-back ``read_holding_registers(0, count)`` on ``clients`` connections
    for ``seconds``, in a fresh event loop (call it from synchronous code, e.g.
    a benchmark, with the server running in another process or thread).
    """
    return asyncio.run(_ceiling(host, port, seconds, unit, count, clients))
