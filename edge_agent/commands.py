"""Commands from the cloud → bounded, audited Modbus writes with read-back, and the fail-safe.

::

    ems/v1/<site>/command ─▶ submit() ─▶ bounded queue ─▶ handle():         (state: edge_agent.command_store)
        decode (ems_contract.command, strict) ─▶ seen id? ─▶ expired? ─▶ record the id (durable)
        ─▶ writable point for the control? ─▶ older than the active command? ─▶ min..max? ─▶ rate?
        ─▶ state "writing" (durable) ─▶ Modbus write ─▶ read back ─▶ compare ─▶ result (durable outbox)
    outbox ─▶ ems/v1/<site>/command-result (QoS 1, removed at PUBACK; kept across restarts)
    tick (every ``tick_s``): a control whose command expired with no newer one, or no valid command
        for a point's ``silence_timeout_s`` ─▶ write its ``safe_value`` (the fail-safe), audited, reported

Promises:

* A command is written at most once: its id is recorded durably (SQLite, ``[commands] state_path``)
  before anything is written, and marked ``writing`` before the write. An id seen again is
  rejected (reason ``duplicate …``) and never written. After a crash a command found ``writing``
  is never written again: it is read back and reported ``applied`` when the device holds the
  value, else ``failed``; one found ``received`` (recorded, not yet written) is handled normally.
* Malformed, wrong-site, expired, replayed, out-of-bounds, too-fast and superseded commands
  (issued before the active command of the same control) are rejected and never written; a
  payload without a readable id cannot be answered and is only audited and counted (``ignored``).
* The seen-id store is bounded (``edge_agent.command_store``): ids whose command expired more
  than an hour ago are forgotten (a replay of them is rejected as expired); when ``max_seen_ids``
  unexpired ids are held, new commands are rejected rather than any id forgotten early.
* Every command message gets a ``cmd`` audit record and every write a ``write`` record.
* The fail-safe writes a point's safe value once per episode: when its control's command expires
  with no newer one, or when no valid command (decoded, this site, unexpired, not a replay) has
  arrived for ``silence_timeout_s`` — counted from the last one or from start-up, broker up or
  down. A failed fail-safe write is retried every ``_FAILSAFE_RETRY_S``. Its result carries the
  id ``failsafe-<control>-<ms>`` and a reason starting ``fail-safe:``.
* One bad message never stops the handler; results wait in the outbox while the broker is down.

The rate limit: a numeric command's change from the last value written for the point (by a
command or the fail-safe) may be at most ``max_rate_per_s`` × the seconds since that write; the
first write after the state file is new is not limited. In the agent the Modbus connection is the
device's poll connection (the agent's ``ModbusSource``): a device that takes one TCP connection
takes the writes too, and a write waits for the poll's request in flight and, with ``min_gap_s``,
for the gap after it. Standalone, the handler opens its own (one per device with writable points).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from edge_agent.command_store import CommandStore, ControlState
from edge_agent.config import AgentConfig, DeviceConfig, PointConfig, TYPE_LIMITS, WritablePoint
from edge_agent.decode import decode_registers, encode_registers
from edge_agent.errors import AuditError, CommandStateError, DecodeError, DeviceError, PublishError
from edge_agent.metrics import AgentMetrics
from edge_agent.modbus_source import ModbusSource, ReadBlock
from ems_contract.command import (MAX_PAYLOAD_BYTES, Command, CommandResult, command_result_topic, command_topic,
                                  decode_command, encode_result)
from ems_contract.telemetry import SchemaError

__all__ = ["CommandHandler", "Audit", "Publish", "encode_value", "decode_value"]

log = logging.getLogger(__name__)

Audit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Writes one audit record (kind, fields) durably: ``Spool.audit_event`` in the agent."""
Publish = Callable[[str, bytes], Awaitable[None]]
"""Publishes QoS 1 and returns after PUBACK, or raises PublishError: ``EdgeMqttLink.publish``."""

_FAILSAFE_RETRY_S = 5.0
_RESULT_TIMEOUT_S = 5.0


def encode_value(point: WritablePoint, value: float | bool) -> list[int] | list[bool]:
    """The registers (or the coil state) that hold ``value`` for ``point``; ValueError when it cannot fit."""
    if point.register == "coil":
        return [bool(value)]
    if point.boolean:
        return [1 if value else 0]
    raw = float(value) / point.scale
    if point.type in TYPE_LIMITS:
        low, high = TYPE_LIMITS[point.type]
        if not low <= round(raw) <= high:
            raise ValueError(f"{value:g} / scale {point.scale:g} does not fit {point.type}")
    return encode_registers(raw, point.type, point.byte_order, point.word_order)


def decode_value(point: WritablePoint, values: Sequence[int] | Sequence[bool]) -> float | bool:
    """The command value that registers (or a coil) read back from ``point`` hold."""
    if point.register == "coil":
        return bool(values[0])
    raw = decode_registers(list(values), point.type, point.byte_order, point.word_order, point=point.id)  # type: ignore[arg-type]
    return bool(raw) if point.boolean else raw * point.scale


def _readback_value(point: PointConfig, values: Sequence[int] | Sequence[bool]) -> float:
    if point.register in ("coil", "discrete"):
        return 1.0 if values[0] else 0.0
    return decode_registers(list(values), point.type, point.byte_order, point.word_order,  # type: ignore[arg-type]
                            point=point.id) * point.gain + point.offset


def _matches(point: WritablePoint, wanted: float | bool, got: float | bool) -> bool:
    if point.boolean:
        return bool(got) == bool(wanted) if isinstance(got, bool) else abs(float(got) - float(wanted)) <= point.tolerance
    return abs(float(got) - float(wanted)) <= point.tolerance


def _salvage_id(payload: bytes) -> str | None:
    """The id of a payload the contract refused, when it has a valid one (so the rejection can be answered)."""
    try:
        body = json.loads(payload)
        decode_id = body.get("id") if isinstance(body, dict) else None
    except (ValueError, RecursionError):
        return None
    if isinstance(decode_id, str) and 1 <= len(decode_id) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-")
                                                                          for c in decode_id):
        return decode_id
    return None


def _shown(value: float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


@dataclass(frozen=True)
class _Incoming:
    topic: str
    payload: bytes


class CommandHandler:
    """Applies this site's commands to its writable points; the fail-safe; results to the broker.

    ``publish`` (None: results stay in the outbox) and ``connected`` come from the MQTT link,
    ``audit`` writes audit records, ``sources`` (by device name; the agent passes its pollers'; default:
    one ``ModbusSource`` per device with writable points; ``close()`` closes them) are the Modbus
    connections. ``tick_s`` (0.25) paces the fail-safe checks,
    ``queue_size`` (64) bounds the messages waiting to be handled. Use ``async with`` (opens the
    store and recovers interrupted commands) or ``open()``/``close()``, then ``run(stop)``.
    """

    def __init__(self, config: AgentConfig, *, audit: Audit, publish: Publish | None = None,
                 connected: Callable[[], bool] = lambda: True, metrics: AgentMetrics | None = None,
                 sources: dict[str, ModbusSource] | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, tick_s: float = 0.25, queue_size: int = 64) -> None:
        self.site = config.site
        self.topic = command_topic(config.site)
        self.result_topic = command_result_topic(config.site)
        self.points = config.writable_points()
        self.readback_points = {p.id: p for _, w in self.points.values() for d in config.devices
                                for p in d.points if p.id == w.readback}
        self.store = CommandStore(config.commands.state_path, config.commands.max_seen_ids)
        self.audit = audit
        self.publish = publish
        self.connected = connected
        self.metrics = metrics or AgentMetrics()
        for outcome in ("applied", "rejected", "expired", "failed", "ignored"):
            self.metrics.commands.labels(outcome)
        for kind in ("command", "failsafe"):
            for outcome in ("applied", "failed"):
                self.metrics.command_writes.labels(kind, outcome)
        devices = {d.name: d for d, _ in self.points.values()}
        self.sources = sources if sources is not None else {
            name: ModbusSource(device, metrics=None) for name, device in devices.items()}
        self.clock = clock
        self.monotonic = monotonic
        self.tick_s = tick_s
        self._queue: asyncio.Queue[_Incoming] = asyncio.Queue(queue_size)
        self._executor: ThreadPoolExecutor | None = None
        self._controls: dict[str, ControlState] = {}
        self._last_valid = monotonic()
        self._failsafe_done: dict[str, bool] = {c: False for c in self.points}
        self._failsafe_retry_at: dict[str, float] = {}
        self._results_ready = asyncio.Event()
        self.handled = 0
        """Messages taken from the queue and handled so far."""

    # -- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> "CommandHandler":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store, then finish what a crash interrupted (never writing a ``writing`` command again)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commands-db")
        try:
            await self._db(self.store.open)
        except CommandStateError:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        self._controls = await self._db(self.store.controls)
        self._last_valid = self.monotonic()
        for command_id, state, payload, writing_ms in await self._db(self.store.unfinished):
            await self._recover(command_id, state, payload, writing_ms)
        self._results_ready.set()

    async def close(self) -> None:
        for source in self.sources.values():
            source.close()
        if self._executor is not None:
            await self._db(self.store.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None, "command handler not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def status(self) -> dict[str, Any]:
        """For /healthz: seconds since the last valid command, and the command in force per control."""
        return {"last_valid_command_age_s": round(self.monotonic() - self._last_valid, 1),
                "controls": {c: {"command": st.active_id, "expires_ms": st.active_expires_ms,
                                 "last_value": st.last_value} for c, st in self._controls.items()}}

    # -- input -------------------------------------------------------------------------------------
    def submit(self, topic: str, payload: bytes) -> None:
        """Queue one message (called from the MQTT link's callback); a full queue drops it, counted."""
        try:
            self._queue.put_nowait(_Incoming(topic, bytes(payload[:MAX_PAYLOAD_BYTES + 1])))
        except asyncio.QueueFull:
            self.metrics.commands.labels("ignored").inc()
            log.warning("command queue full (%d): a command message was dropped", self._queue.maxsize)

    async def run(self, stop: asyncio.Event) -> None:
        """Handle queued messages and run the fail-safe until ``stop``; results are sent alongside."""
        sender = asyncio.create_task(self._send_results(stop), name="command-results")
        try:
            while not stop.is_set():
                try:
                    message = await asyncio.wait_for(self._queue.get(), self.tick_s)
                except asyncio.TimeoutError:
                    message = None
                if message is not None:
                    await self.handle(message.topic, message.payload)
                    self.handled += 1
                await self.failsafe_tick()
        finally:
            sender.cancel()
            try:
                await sender
            except asyncio.CancelledError:
                pass

    # -- one command ---------------------------------------------------------------------------------
    async def handle(self, topic: str, payload: bytes) -> None:
        """Decide on one message and act; every path audits and (when the message has an id) answers."""
        now_ms = int(self.clock() * 1000)
        try:
            command = decode_command(payload, topic)
        except SchemaError as exc:
            await self._malformed(payload, exc)
            return
        state = await self._db(self.store.seen, command.id)
        if state is not None:
            await self._reject(command, f"duplicate: command id already handled ({state}); not applied again",
                               finish_id=False)
            return
        if now_ms >= command.expires_ms:
            if await self._db(self.store.record, command.id, command.expires_ms, b"", now_ms):
                await self._reject(command, f"received at {now_ms}, after expires_ms {command.expires_ms}",
                                   outcome="expired")
            else:
                await self._reject(command, "expired", outcome="expired", finish_id=False)
            return
        if not await self._db(self.store.record, command.id, command.expires_ms, payload, now_ms):
            await self._reject(command, f"seen-id store full ({self.store.max_seen_ids} unexpired ids)",
                               finish_id=False)
            return
        self._last_valid = self.monotonic()
        await self._apply(command, now_ms)

    async def _apply(self, command: Command, now_ms: int) -> None:
        found = self.points.get(command.control)
        if found is None:
            await self._reject(command, f"no writable point for control {command.control} at site {self.site}")
            return
        device, point = found
        control = self._controls.get(command.control, ControlState())
        if control.active_issued_ms is not None and command.issued_ms < control.active_issued_ms:
            await self._reject(command, f"superseded: issued before the active command {control.active_id}")
            return
        value = command.value
        if not point.boolean:
            assert point.min is not None and point.max is not None and point.max_rate_per_s is not None
            if isinstance(value, bool) or not point.min <= value <= point.max:
                await self._reject(command, f"value {_shown(value)} outside {point.min:g}..{point.max:g} "
                                            f"of point {point.id}")
                return
            if control.last_value is not None and control.last_written_ms is not None:
                elapsed = max(now_ms - control.last_written_ms, 0) / 1000
                change = abs(float(value) - control.last_value)
                if change > point.max_rate_per_s * elapsed:
                    await self._reject(command, f"too fast: change {change:g} in {elapsed:.1f} s exceeds "
                                                f"max_rate_per_s {point.max_rate_per_s:g} of point {point.id}")
                    return
        await self._db(self.store.mark_writing, command.id, int(self.clock() * 1000))
        await self._audit_cmd(command, "accepted", None)
        outcome, reason, readback = await self._write(device, point, value, command.id, failsafe=False)
        if outcome == "applied":
            control = ControlState(float(value), int(self.clock() * 1000), command.id, command.issued_ms,
                                   command.expires_ms)
            self._failsafe_done[command.control] = False
        await self._finish(command.id, outcome, reason, readback, command.control, control)

    async def _write(self, device: DeviceConfig, point: WritablePoint, value: float | bool, write_id: str, *,
                     failsafe: bool) -> tuple[str, str | None, float | bool | None]:
        """Write, read back and compare; audited. Returns (applied|failed, reason, readback)."""
        registers = encode_value(point, value)
        source = self.sources[device.name]
        reason: str | None = None
        readback: float | bool | None = None
        try:
            await source.write(point.register, point.address, registers)
            readback = await self._read_back(device, point)
        except (DeviceError, DecodeError) as exc:
            reason = str(exc)[:200]
        if reason is None and readback is not None and not _matches(point, value, readback):
            reason = f"read back {_shown(readback)}, expected {_shown(value)} (tolerance {point.tolerance:g})"
        outcome = "applied" if reason is None else "failed"
        if failsafe and reason is None:
            reason = "fail-safe"
        await self._audit("write", id=write_id, control=point.control, device=device.name, unit=device.unit,
                          register=point.register, address=point.address, registers=registers, value=value,
                          failsafe=failsafe, outcome=outcome, readback=readback, reason=reason)
        self.metrics.command_writes.labels("failsafe" if failsafe else "command", outcome).inc()
        if outcome == "applied":
            self.metrics.control_value.labels(point.control).set(float(value))
        log.log(logging.INFO if outcome == "applied" else logging.WARNING,
                "%s %s: wrote %s to %s %s %d of device %s: %s%s", "fail-safe" if failsafe else "command", write_id,
                _shown(value), point.id, point.register, point.address, device.name, outcome,
                f" ({reason})" if reason and outcome != "applied" else "")
        return outcome, None if outcome == "applied" and not failsafe else reason, readback

    async def _read_back(self, device: DeviceConfig, point: WritablePoint) -> float | bool:
        source = self.sources[device.name]
        if point.readback is not None:
            target = self.readback_points[point.readback]
            values = await source.read(ReadBlock(target.register, target.address, target.count, (target,)))
            return _readback_value(target, values)
        values = await source.read(ReadBlock(point.register, point.address, point.count, ()))
        return decode_value(point, values)

    async def _recover(self, command_id: str, state: str, payload: bytes | None, writing_ms: int | None) -> None:
        """A command a crash interrupted: ``received`` is handled now; ``writing`` is read back, never rewritten.

        The read-back waits until the device's ``timeout_s`` has passed since the write was sent: a write
        still in flight when the agent died lands (or is lost) within it, as our own write would have.
        """
        try:
            command = decode_command(payload or b"", self.topic)
        except SchemaError:
            await self._db(self.store.finish, command_id, None)
            return
        now_ms = int(self.clock() * 1000)
        if state == "received":
            if now_ms >= command.expires_ms:
                await self._reject(command, f"interrupted by a restart; expired at {command.expires_ms}",
                                   outcome="expired")
            else:
                await self._apply(command, now_ms)
            return
        found = self.points.get(command.control)
        if found is None:
            await self._db(self.store.finish, command_id, None)
            return
        device, point = found
        in_flight_s = ((writing_ms or 0) + device.timeout_s * 1000 - int(self.clock() * 1000)) / 1000
        if in_flight_s > 0:
            await asyncio.sleep(min(in_flight_s, device.timeout_s))
        try:
            readback: float | bool | None = await self._read_back(device, point)
        except (DeviceError, DecodeError) as exc:
            readback, outcome, reason = None, "failed", f"interrupted by a restart; read-back failed: {exc}"[:200]
        else:
            applied = _matches(point, command.value, readback)  # type: ignore[arg-type]
            outcome = "applied" if applied else "failed"
            reason = None if applied else f"interrupted by a restart; read back {_shown(readback)}"  # type: ignore[arg-type]
        await self._audit("write", id=command.id, control=command.control, device=device.name, unit=device.unit,
                          register=point.register, address=point.address, registers=None, value=command.value,
                          failsafe=False, outcome=outcome, readback=readback, reason=reason, recovered=True)
        control = self._controls.get(command.control, ControlState())
        if outcome == "applied":
            control = ControlState(float(command.value), now_ms, command.id, command.issued_ms, command.expires_ms)
        log.warning("command %s was being written when the agent stopped: %s after read-back", command.id, outcome)
        await self._finish(command.id, outcome, reason, readback, command.control, control)

    # -- outcomes ------------------------------------------------------------------------------------
    async def _malformed(self, payload: bytes, exc: SchemaError) -> None:
        command_id = _salvage_id(payload)
        reason = f"malformed: {exc}"[:200]
        await self._audit("cmd", id=command_id, decision="rejected", reason=reason, bytes=len(payload),
                          sha256=hashlib.sha256(payload).hexdigest())
        if command_id is None or await self._db(self.store.seen, command_id) is not None:
            self.metrics.commands.labels("ignored").inc()     # nothing to answer, or an answered id
            log.warning("command message refused and not answered: %s", reason)
            return
        log.warning("command %s rejected: %s", command_id, reason)
        await self._finish(None, "rejected", reason, None, result_id=command_id)

    async def _reject(self, command: Command, reason: str, *, outcome: str = "rejected",
                      finish_id: bool = True) -> None:
        await self._audit_cmd(command, "expired" if outcome == "expired" else "rejected", reason)
        log.warning("command %s (%s=%s) %s: %s", command.id, command.control, _shown(command.value), outcome, reason)
        await self._finish(command.id if finish_id else None, outcome, reason, None, result_id=command.id)

    async def _finish(self, command_id: str | None, outcome: str, reason: str | None, readback: float | bool | None,
                      control: str | None = None, state: ControlState | None = None, *,
                      result_id: str | None = None) -> None:
        result = CommandResult(id=result_id or command_id or "", site=self.site, ts_ms=int(self.clock() * 1000),
                               outcome=outcome, reason=reason[:200] if reason else None,
                               readback=_finite_or_none(readback))
        await self._db(self.store.finish, command_id, encode_result(result), control, state)
        if control is not None and state is not None:
            self._controls[control] = state
        self.metrics.commands.labels(outcome).inc()
        self._results_ready.set()

    async def _audit_cmd(self, command: Command, decision: str, reason: str | None) -> None:
        manual = {"issuer": command.issuer} if command.issuer is not None else {}    # an operator's manual command
        await self._audit("cmd", id=command.id, control=command.control, value=command.value,
                          issued_ms=command.issued_ms, expires_ms=command.expires_ms, event=command.event,
                          decision=decision, reason=reason, **manual)

    async def _audit(self, kind: str, **fields: Any) -> None:
        try:
            await self.audit(kind, fields)
        except AuditError as exc:       # the write itself is not undone; the error is loud
            log.error("audit record %s for command %s not written: %s", kind, fields.get("id"), exc)

    # -- fail-safe -----------------------------------------------------------------------------------
    async def failsafe_tick(self) -> None:
        """Write safe values where a control ended or the cloud has been silent too long."""
        now_ms, mono = int(self.clock() * 1000), self.monotonic()
        for control, (device, point) in self.points.items():
            state = self._controls.get(control, ControlState())
            if state.active_expires_ms is not None and now_ms >= state.active_expires_ms:
                why = f"control {control} ended (command {state.active_id} expired at {state.active_expires_ms})"
            elif not self._failsafe_done[control] and mono - self._last_valid >= point.silence_timeout_s:
                why = f"no valid command from the cloud for {mono - self._last_valid:.0f} s"
            else:
                continue
            if mono < self._failsafe_retry_at.get(control, -math.inf):
                continue
            await self._failsafe(device, point, state, why, now_ms)

    async def _failsafe(self, device: DeviceConfig, point: WritablePoint, state: ControlState, why: str,
                        now_ms: int) -> None:
        write_id = f"failsafe-{point.control}-{now_ms}"
        outcome, reason, readback = await self._write(device, point, point.safe_value, write_id, failsafe=True)
        first_failure = point.control not in self._failsafe_retry_at
        if outcome == "applied":
            self._failsafe_retry_at.pop(point.control, None)
            self._failsafe_done[point.control] = True
            state = ControlState(float(point.safe_value), int(self.clock() * 1000))
        else:
            self._failsafe_retry_at[point.control] = self.monotonic() + _FAILSAFE_RETRY_S
            if not first_failure:
                return           # report a failing fail-safe once per episode; it is retried quietly
        text = f"fail-safe: {why}; safe value {_shown(point.safe_value)} " + (
            "written" if outcome == "applied" else f"not written ({reason})")
        await self._finish(None, outcome, text, readback, point.control, state if outcome == "applied" else None,
                           result_id=write_id)

    # -- results -------------------------------------------------------------------------------------
    async def _send_results(self, stop: asyncio.Event) -> None:
        """Publish the outbox in order while connected; a result leaves it only after its PUBACK."""
        while not stop.is_set():
            await self._results_ready.wait()
            self._results_ready.clear()
            pending = await self._db(self.store.outbox)
            self.metrics.command_results_pending.set(await self._db(self.store.outbox_size))
            for n, payload in pending:
                if self.publish is None or not self.connected():
                    break
                try:
                    await asyncio.wait_for(self.publish(self.result_topic, payload), _RESULT_TIMEOUT_S)
                except (PublishError, asyncio.TimeoutError) as exc:
                    log.debug("command result not sent yet: %s", exc)
                    break
                await self._db(self.store.sent, n)
            else:
                if pending:
                    self._results_ready.set()       # there may be more than one page
                continue
            await asyncio.sleep(0.5)                # not connected: look again soon
            self._results_ready.set()


def _finite_or_none(value: float | bool | None) -> float | bool | None:
    if value is None or isinstance(value, bool):
        return value
    return float(value) if math.isfinite(value) else None
