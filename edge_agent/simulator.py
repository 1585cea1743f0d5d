"""A Modbus TCP simulator for demos, tests and benchmarks (``ems-edge simulate``).

A real pymodbus async server (``ModbusTcpServer``) answering for several
device ids (unit ids) on one TCP port, as an RS-485 gateway would. The
register map comes from a sensor config: every configured point gets a
realistic, changing value (transformer oil/winding temperatures and load, a
flow meter, 4–20 mA loops — one breaks for 10 s every minute —, a slow legacy
PLC), encoded with the point's type and byte/word order and the inverse of its
gain/offset, so the agent reading it with the same config gets plausible
engineering values back.

``pipelining=True`` makes the server answer every request of a TCP segment
(each with its transaction id, as soon as it is ready), like a device that
accepts ``max_inflight`` > 1; without it the server is pymodbus 3.16's as is,
which answers the first request of a segment and leaves the rest unanswered
until more data arrives — a device that does not accept pipelining.

Per unit ``Behaviour``: a response delay, and a minimum gap between requests
below which the device answers "ServerDeviceBusy" (code 6) like an overloaded
legacy PLC. A point with a PLC fault-code map reads 0 (no fault) until
``raise_fault(asset, point, "E04")`` makes it hold that code's register value;
``clear_fault`` returns it to 0. Every request the server receives is logged server-side
(``requests``: monotonic time, unit, function code, address, count) — also the
ones it rejects — so tests can count reads and measure the gaps between them — and every write
(function codes 5, 6, 15, 16; ``write_count``). A device's ``[[devices.writable]]`` registers
keep what is written; a writable point's ``readback`` point reports the value last written
(its ``safe_value`` before any write), as an inverter reports its active export limit.
Behaviour ``write_delay_s`` holds each write's answer (the value is stored after the delay).

    async with Simulator.default(port=0) as sim:     # the example config's devices
        sim.port, sim.request_count(unit=1), sim.requests
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException, NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.transaction import TransactionManager
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.config import BIT_REGISTERS, DeviceConfig, PointConfig, WritablePoint, load_config
from edge_agent.decode import decode_registers, encode_registers

__all__ = ["Behaviour", "RequestRecord", "Simulator", "EXAMPLE_CONFIG", "default_behaviours", "serve",
           "signal_for", "bench_devices", "rig_devices", "rig_signal", "RIG_CLOCK_MODULUS"]

log = logging.getLogger(__name__)

EXAMPLE_CONFIG = Path(__file__).parent / "examples" / "sensors.conf"
_FUNCTION_CODES = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
WRITE_FUNCTION_CODES = {5: "coil", 6: "holding", 15: "coil", 16: "holding"}
_TYPE_LIMITS = {"int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-2**31, 2**31 - 1),
                "uint32": (0, 2**32 - 1)}


@dataclass(frozen=True)
class Behaviour:
    """How one simulated unit misbehaves: ``delay_s`` before each answer; requests closer than
    ``min_gap_s`` to the previous one are answered with ServerDeviceBusy (exception code 6)."""

    delay_s: float = 0.0
    min_gap_s: float = 0.0
    write_delay_s: float = 0.0


class RequestRecord(NamedTuple):
    """One request as the server received it (``at`` is ``time.monotonic()``)."""

    at: float
    unit: int
    function_code: int
    address: int
    count: int


Signal = Callable[[float], float]


def _wave(mean: float, amplitude: float, period_s: float, phase: float = 0.0) -> Signal:
    return lambda t: mean + amplitude * math.sin(2 * math.pi * t / period_s + phase)


def _counter(start: float, per_s: float) -> Signal:
    return lambda t: start + per_s * max(t - 1.7e9, 0.0)     # grows for ever, like a real meter


def _loop_with_break(mean: float, amplitude: float, low: float, high: float) -> Signal:
    """A loop value that drops to 2 mA (wire break) for 10 s every minute."""
    span = high - low

    def signal(t: float) -> float:
        if t % 60.0 >= 50.0:
            return low + (2.0 - 4.0) / 16.0 * span   # the value a 2 mA current scales to
        return mean + amplitude * math.sin(2 * math.pi * t / 120.0)

    return signal


def signal_for(point: PointConfig, index: int = 0) -> Signal:
    """A realistic engineering-value signal for a point, chosen by its name (a mild wave otherwise)."""
    # The asset's id shifts the phase, so two transformers of the same model do not read alike.
    phase = index * 0.7 + (zlib.crc32(point.asset.encode()) % 628) / 100.0
    name = point.name
    if point.faults:
        return lambda t: 0.0                                 # a fault-code register: no fault (Simulator.raise_fault)
    if point.type == "bool":
        if "closed" in name:
            return lambda t: 1.0
        if "alarm" in name or "trip" in name:
            return lambda t: 1.0 if t % 300.0 >= 295.0 else 0.0
        return lambda t: float(int(t / 30.0) % 2)
    table: dict[str, Signal] = {
        "oil_temp": _wave(58.0, 6.0, 600.0, phase),
        "winding_temp": _wave(71.0, 9.0, 600.0, phase),
        "hotspot_temp": _wave(82.0, 10.0, 600.0, phase),
        "load": _wave(24.0, 6.0, 300.0, phase),
        "ambient_temp": _wave(12.0, 4.0, 3600.0, phase),
        "tap_position": lambda t: 5.0 + int(t / 120.0) % 3,
        "energy": _counter(12_345.0, 0.0067),        # MWh: about 24 MW
        "flow_rate": _wave(118.0, 22.0, 180.0, phase),
        "total_volume": _counter(98_765.0, 118.0 / 3600.0),
        "pressure": _wave(4.2, 0.3, 90.0, phase),
        "level": _wave(5.5, 1.5, 240.0, phase),
        "discharge_pressure": _wave(8.0, 1.2, 60.0, phase),
        "current": _wave(245.0, 35.0, 200.0, phase),
        "voltage": _wave(11.0, 0.15, 100.0, phase),
        "power_factor": _wave(0.95, 0.02, 400.0, phase),
        "breaker_trips": lambda t: 3.0,
        "active_power": lambda t: max(0.0, 42_000.0 * math.sin(math.pi * ((t / 3600.0) % 24.0 - 6.0) / 12.0)),
    }
    if point.current_loop is not None and name == "cable_temp":
        loop = point.current_loop
        return _loop_with_break(40.0, 6.0, loop.low, loop.high)
    if name in table:
        return table[name]
    if point.current_loop is not None:
        loop = point.current_loop
        mid, half = (loop.low + loop.high) / 2, abs(loop.high - loop.low) / 4
        return _wave(mid, half, 120.0, phase)
    return _wave(50.0 * point.gain + point.offset, 10.0 * abs(point.gain), 60.0 + index, phase)


RIG_CLOCK_MODULUS = 2 ** 32
"""The rig's clock point holds the simulator's wall clock in ms modulo this (a uint32)."""


def rig_signal(point: PointConfig, index: int = 0) -> Signal:
    """The benchmark rig's signals: point 0 is the simulator's clock (wall time in ms modulo
    ``RIG_CLOCK_MODULUS``, for latency), the others uint16 values that change every 10 ms."""
    if index == 0:
        return lambda t: float(int(t * 1000) % RIG_CLOCK_MODULUS)
    return lambda t: float((int(t * 100) * 31 + index * 257) % 65536)


def _raw_value(point: PointConfig, value: float) -> float:
    """Invert the agent's calibration (and 4–20 mA scaling): the number the device holds."""
    loop = point.current_loop
    if loop is not None:
        milliamps = 4.0 + 16.0 * (value - loop.low) / (loop.high - loop.low)
        return ((milliamps - point.offset) / point.gain) / loop.ma_per_count
    return (value - point.offset) / point.gain


def _encode(point: PointConfig, value: float) -> list[int]:
    raw = _raw_value(point, value)
    if point.type in _TYPE_LIMITS:
        low, high = _TYPE_LIMITS[point.type]
        raw = min(max(round(raw), low), high)
    return encode_registers(raw, point.type, point.byte_order, point.word_order)


@dataclass
class _Unit:
    unit: int
    behaviour: Behaviour
    points: dict[str, list[tuple[PointConfig, Signal]]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    last_request: float = -math.inf
    writable: tuple[WritablePoint, ...] = ()
    setpoints: dict[str, float] = field(default_factory=dict)


class _PipeliningHandler(ServerRequestHandler):
    """A connection that answers every request it receives, each on its own (see the module doc)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self._answering: set[asyncio.Future] = set()

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        used = 0
        while used < len(data):
            try:
                cut = TransactionManager.callback_data(self, data[used:], addr)
            except ModbusIOException as exc:
                self.server_send(ExceptionResponse(exc.fcode or 0, exception_code=ExcCodes.ILLEGAL_FUNCTION,
                                                   device_id=exc.dev_id, transaction=exc.transaction_id), addr)
                return len(data)
            if not cut:
                break
            used += cut
            if self.last_pdu is not None:
                task = asyncio.ensure_future(self._answer(self.last_pdu, self.last_addr))
                self._answering.add(task)           # held until done: the loop keeps only weak references
                task.add_done_callback(self._answering.discard)
        return used

    async def _answer(self, pdu: ModbusPDU, addr: tuple | None) -> None:
        try:
            response = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except NoSuchIdException:
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)


class _PipeliningTcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _PipeliningHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class Simulator:
    """A pymodbus TCP server simulating ``devices`` (each by its ``unit``; host/port are ignored).

    Use as ``async with``; ``port=0`` picks a free port (read ``.port`` after start).
    ``spare`` extra registers (and bits) are readable after each unit's last point; beyond
    them the server answers IllegalDataAddress. ``rtu=True`` speaks RTU framing over TCP
    (an RS-485 gateway in transparent mode; ``transport = "rtu-over-tcp"`` in the config).
    ``pipelining=True`` answers pipelined requests (TCP framing only). ``signals(point, index)``
    gives each point's value over time (default ``signal_for``).
    """

    def __init__(self, devices: Sequence[DeviceConfig], *, host: str = "127.0.0.1", port: int = 0,
                 behaviours: Mapping[int, Behaviour] | None = None, spare: int = 16, rtu: bool = False,
                 clock: Callable[[], float] = time.time, pipelining: bool = False,
                 signals: Callable[[PointConfig, int], Signal] = signal_for) -> None:
        if pipelining and rtu:
            raise ValueError("pipelining needs Modbus TCP framing (transaction ids); rtu=True has none")
        self.host = host
        self.rtu = rtu
        self.pipelining = pipelining
        self.port = port
        self.clock = clock
        self.requests: list[RequestRecord] = []
        self.busy_responses = 0
        self._units: dict[int, _Unit] = {}
        self._held: dict[tuple[str, str], float] = {}      # (asset, point) → value held instead of the signal
        behaviours = behaviours or {}
        for device in devices:
            if device.unit in self._units:
                raise ValueError(f"devices {device.name!r} and another device share unit id {device.unit}")
            unit = _Unit(device.unit, behaviours.get(device.unit, Behaviour()), writable=device.writable)
            readbacks = {w.readback: w for w in device.writable if w.readback}
            for w in device.writable:
                unit.setpoints[w.id] = float(w.safe_value)
                unit.sizes[w.register] = max(unit.sizes.get(w.register, 0), w.address + w.count)
            for index, point in enumerate(device.points):
                signal = signals(point, index)
                if point.id in readbacks:
                    signal = functools.partial(_setpoint, unit.setpoints, readbacks[point.id].id)
                unit.points.setdefault(point.register, []).append((point, signal))
                end = point.address + point.count
                unit.sizes[point.register] = max(unit.sizes.get(point.register, 0), end)
            for register in ("coil", "discrete", "holding", "input"):
                unit.sizes[register] = max(1, min(unit.sizes.get(register, 0) + spare, 65536))
            self._units[device.unit] = unit
        self._server: ModbusTcpServer | None = None

    @classmethod
    def default(cls, *, host: str = "127.0.0.1", port: int = 0, config: Path = EXAMPLE_CONFIG,
                clock: Callable[[], float] = time.time) -> "Simulator":
        """The devices of the example config, with its legacy PLC (unit 5) slow and rate-limited."""
        devices = load_config(config, check_files=False).devices
        return cls(devices, host=host, port=port, behaviours=default_behaviours(devices), clock=clock)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        sim_devices = [
            SimDevice(
                id=unit.unit,
                simdata=(
                    [SimData(0, count=unit.sizes["coil"], values=False, datatype=DataType.BITS)],
                    [SimData(0, count=unit.sizes["discrete"], values=False, datatype=DataType.BITS)],
                    [SimData(0, count=unit.sizes["holding"], values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=unit.sizes["input"], values=0, datatype=DataType.REGISTERS)],
                ),
                action=functools.partial(self._action, unit),
            )
            for unit in self._units.values()
        ]
        server_class = _PipeliningTcpServer if self.pipelining else ModbusTcpServer
        server = server_class(sim_devices, address=(self.host, self.port), trace_pdu=self._trace_pdu,
                                 framer=FramerType.RTU if self.rtu else FramerType.SOCKET)
        await server.serve_forever(background=True)
        self._server = server
        sockets = getattr(server.transport, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("Modbus simulator listening on %s:%s (units %s)", self.host, self.port, sorted(self._units))

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()

    async def __aenter__(self) -> "Simulator":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- faults on demand --------------------------------------------------------------------

    def raise_fault(self, asset: str, point: str, code: str) -> None:
        """Make the fault-code point ``asset``/``point`` report ``code`` (from its fault map) until cleared."""
        config = self._fault_point(asset, point)
        values = [f.value for f in config.faults if f.code == code]
        if not values:
            raise ValueError(f"{asset}/{point} has no fault code {code!r} "
                             f"(its codes: {', '.join(f.code for f in config.faults)})")
        self._held[(asset, point)] = float(values[0])

    def clear_fault(self, asset: str, point: str) -> None:
        """Return the fault-code point to 0 (no fault)."""
        self._fault_point(asset, point)
        self._held.pop((asset, point), None)

    def _fault_point(self, asset: str, point: str) -> PointConfig:
        for unit in self._units.values():
            for entries in unit.points.values():
                for config, _ in entries:
                    if (config.asset, config.name) == (asset, point) and config.faults:
                        return config
        raise ValueError(f"no simulated point {asset}/{point} with a fault-code map")

    def _value(self, point: PointConfig, signal: Signal, t: float) -> float:
        if point.faults:
            return self._held.get((point.asset, point.name), 0.0)
        return signal(t)

    # -- what tests read --------------------------------------------------------------------

    def request_count(self, unit: int | None = None, function_code: int | None = None) -> int:
        """Requests received (for ``unit`` / ``function_code`` when given), including rejected ones."""
        return sum(1 for r in self.requests
                   if (unit is None or r.unit == unit) and (function_code is None or r.function_code == function_code))

    def write_count(self, unit: int | None = None) -> int:
        """Write requests received (function codes 5, 6, 15, 16), for ``unit`` when given."""
        return sum(1 for r in self.requests
                   if r.function_code in WRITE_FUNCTION_CODES and (unit is None or r.unit == unit))

    def setpoint(self, unit: int, point_id: str) -> float:
        """The value last written to writable point ``point_id`` of ``unit`` (its safe value before any write)."""
        return self._units[unit].setpoints[point_id]

    def request_times(self, unit: int) -> list[float]:
        return [r.at for r in self.requests if r.unit == unit]

    # -- pymodbus hooks ----------------------------------------------------------------------

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and (pdu.function_code in _FUNCTION_CODES or pdu.function_code in WRITE_FUNCTION_CODES):
            self.requests.append(RequestRecord(time.monotonic(), pdu.dev_id, pdu.function_code,
                                               getattr(pdu, "address", 0), getattr(pdu, "count", 0)))
        return pdu

    async def _action(self, unit: _Unit, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None) -> ExcCodes | None:
        """Called by pymodbus for every valid request: rate-limit, delay, then refresh the registers.
        pymodbus 3.16 calls it twice for a write: with the values to store, then without (for its answer);
        the second call is the same request, neither rate-limited nor delayed again."""
        if values is None and function_code in WRITE_FUNCTION_CODES:
            return None
        now = time.monotonic()
        behaviour = unit.behaviour
        if behaviour.min_gap_s and now - unit.last_request < behaviour.min_gap_s:
            unit.last_request = now
            self.busy_responses += 1
            return ExcCodes.DEVICE_BUSY
        unit.last_request = now
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if function_code in WRITE_FUNCTION_CODES and values is not None:
            if behaviour.write_delay_s:
                await asyncio.sleep(behaviour.write_delay_s)
            self._store_setpoints(unit, WRITE_FUNCTION_CODES[function_code], address, list(values))
            return None
        register = _FUNCTION_CODES.get(function_code)
        if register is None or values is not None:
            return None
        t = self.clock()
        if register in BIT_REGISTERS:
            # bit blocks: ``start_address`` counts 16-bit words, ``address`` counts bits
            for point, signal in unit.points.get(register, ()):
                word, bit = divmod(point.address, 16)
                index = word - start_address
                if signal(t) >= 0.5:
                    registers[index] |= 1 << bit
                else:
                    registers[index] &= ~(1 << bit)
            return None
        end = address + count
        for point, signal in unit.points.get(register, ()):
            if point.address < end and point.address + point.count > address:
                offset = point.address - start_address
                registers[offset:offset + point.count] = _encode(point, self._value(point, signal, t))
        return None


    @staticmethod
    def _store_setpoints(unit: _Unit, register: str, address: int, values: list[int] | list[bool]) -> None:
        for w in unit.writable:
            if w.register != register or not address <= w.address < address + len(values):
                continue
            start = w.address - address
            if register == "coil":
                unit.setpoints[w.id] = 1.0 if values[start] else 0.0
            elif start + w.count <= len(values):
                raw = decode_registers([int(v) for v in values[start:start + w.count]], w.type, w.byte_order,
                                       w.word_order, point=w.id)
                unit.setpoints[w.id] = raw if w.boolean else raw * w.scale


def _setpoint(setpoints: dict[str, float], point_id: str, t: float) -> float:
    return setpoints[point_id]


def default_behaviours(devices: Iterable[DeviceConfig]) -> dict[int, Behaviour]:
    """Slow legacy PLCs: devices whose name starts with ``plc`` answer after 30 ms and are busy
    when asked more often than 80% of their configured ``min_gap_s``."""
    return {d.unit: Behaviour(delay_s=0.03, min_gap_s=0.8 * d.min_gap_s)
            for d in devices if d.name.startswith("plc")}


def bench_devices(count: int, points: int, *, host: str = "127.0.0.1", port: int = 5020,
                  poll_interval_s: float = 1.0, first_unit: int = 1) -> tuple[DeviceConfig, ...]:
    """``count`` devices of ``points`` contiguous uint16 holding registers each (units from ``first_unit``)."""
    return tuple(
        DeviceConfig(
            name=f"bench{d:03d}", host=host, port=port, unit=first_unit + d, poll_interval_s=poll_interval_s,
            timeout_s=2.0, retries=1,
            points=tuple(PointConfig(id=f"B{d:03d}_{p:03d}", asset=f"bench{d:03d}", name=f"p{p:03d}",
                                     register="holding", address=p, type="uint16", unit="",
                                     heartbeat_s=3600.0) for p in range(points)),
        )
        for d in range(count)
    )


def rig_devices(count: int = 10, registers: int = 100, *, host: str = "127.0.0.1", port: int = 5020,
                poll_interval_s: float = 1.0) -> tuple[DeviceConfig, ...]:
    """The benchmark rig (``rig:<devices>x<registers>``): units 1..``count``, each with ``registers``
    holding registers: 0–1 the clock (uint32, ``rig_signal``), then one uint16 point per register."""
    return tuple(
        DeviceConfig(
            name=f"rig{d:02d}", host=host, port=port, unit=d + 1, poll_interval_s=poll_interval_s,
            timeout_s=2.0, retries=1,
            points=(PointConfig(id=f"R{d:02d}_CLK", asset=f"rig{d:02d}", name="clock", register="holding",
                                address=0, type="uint32"),)
            + tuple(PointConfig(id=f"R{d:02d}_{a:03d}", asset=f"rig{d:02d}", name=f"r{a:03d}", register="holding",
                                address=a, type="uint16") for a in range(2, registers)),
        )
        for d in range(count)
    )


async def serve(host: str = "127.0.0.1", port: int = 5020, *, profile: str = "default",
                config: Path | None = None, stop: asyncio.Event | None = None, pipelining: bool = False) -> None:
    """Run the simulator until ``stop`` is set (forever when None).

    ``profile``: ``default`` (the example config, or ``config``'s devices), or
    ``bench:<devices>x<points>`` (contiguous uint16 holding registers, units 1..N), or
    ``rig:<devices>x<registers>`` (the benchmark rig: ``rig_devices``, values changing every
    10 ms and the simulator's clock in registers 0–1). ``pipelining``: answer every request of a TCP
    segment (``Simulator``), as a gateway that takes ``connection = "shared"`` or ``max_inflight`` > 1 does.
    """
    if profile == "default":
        source = config or EXAMPLE_CONFIG
        devices = load_config(source, check_files=False).devices
        sim = Simulator(devices, host=host, port=port, behaviours=default_behaviours(devices), pipelining=pipelining)
    elif profile.startswith(("bench:", "rig:")):
        kind, _, size = profile.partition(":")
        try:
            n_devices, n_points = (int(x) for x in size.split("x"))
        except ValueError:
            raise ValueError(f"profile {profile!r} must look like {kind}:10x100") from None
        if not (1 <= n_devices <= 247 and (1 if kind == "bench" else 3) <= n_points <= 10000):
            raise ValueError(f"profile {profile!r}: devices must be 1..247 and points "
                             f"{1 if kind == 'bench' else 3}..10000")
        if kind == "bench":
            sim = Simulator(bench_devices(n_devices, n_points), host=host, port=port, pipelining=pipelining)
        else:
            sim = Simulator(rig_devices(n_devices, n_points), host=host, port=port, signals=rig_signal,
                            pipelining=pipelining)
    else:
        raise ValueError(f"profile {profile!r} must be 'default', 'bench:<devices>x<points>' or "
                         f"'rig:<devices>x<registers>'")
    async with sim:
        print(f"Modbus simulator on {sim.host}:{sim.port}, units {sorted(sim._units)}"
              f"{', pipelined requests answered' if pipelining else ''}", flush=True)
        await (stop.wait() if stop is not None else asyncio.Event().wait())
