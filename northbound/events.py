"""Which DER control applies now, and which Responses are due — pure functions of server time.

IEEE 2030.5 event rules as this client applies them (§12.1.3, DER function set §10.10):

* **Window.** An event runs from its *effective start* (``start`` + a start offset drawn
  once in ``[0, randomizeStart]``, or ``[randomizeStart, 0]`` when negative) for
  ``duration`` + a duration offset drawn the same way from ``randomizeDuration``;
  the start is inclusive, the end exclusive. Offsets are drawn from a hash of
  ``seed`` and the event's mRID, so a restart draws the same ones.
* **Status.** *Cancelled* events never run (a running one stops at once);
  *cancelled with randomization* stops at the status time plus an offset within
  ``max(|randomizeStart|, |randomizeDuration|)``; *superseded* events stop at once.
* **Precedence, per control.** Each control (export limit, connect, …) is decided
  on its own: among running events that set it, the program with the lowest
  ``primacy`` wins, then the most recent ``creationTime``, then the greater mRID.
  Events that set different controls run side by side.
* **Default.** A control no running event sets takes the DefaultDERControl of the
  lowest-primacy program whose default sets it; otherwise it is left alone.

``select`` decides the controls; ``responses_due`` lists the Responses the event
states call for, given those already sent; both take server time (local clock +
the Time resource's offset). Values arrive validated by ``control_event``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Collection, Iterable, Mapping

from ems_contract.command import CONTROLS
from northbound import sep2
from northbound.errors import Sep2Error

__all__ = [
    "EventStatus", "ResponseStatus", "CONTROL_KINDS", "ControlEvent", "DefaultControl", "Applied", "Selection",
    "ResponseDue", "FINAL_STATUSES", "control_event", "default_control", "control_values", "window", "select", "responses_due",
]

CONTROL_KINDS = CONTROLS
"""The controls this client carries to the field (``ems_contract.command.CONTROLS``)."""

_POWER_FIELDS = {"exp_lim_w": "opModExpLimW", "imp_lim_w": "opModImpLimW",
                 "gen_lim_w": "opModGenLimW", "load_lim_w": "opModLoadLimW"}
_BOOL_FIELDS = {"connect": "opModConnect", "energize": "opModEnergize"}
_INT64 = 2**63


class EventStatus(IntEnum):
    """EventStatus.currentStatus (2030.5 Table 20)."""

    SCHEDULED = 0
    ACTIVE = 1
    CANCELLED = 2
    CANCELLED_WITH_RANDOMIZATION = 3
    SUPERSEDED = 4


class ResponseStatus(IntEnum):
    """Response.status values this client sends (2030.5 Table 27)."""

    RECEIVED = 1
    STARTED = 2
    COMPLETED = 3
    CANCELLED = 6
    SUPERSEDED = 7
    ABORTED_ALTERNATE_PROGRAM = 14
    REJECTED_NOT_APPLICABLE = 252
    REJECTED_INVALID = 253
    REJECTED_LATE = 254


_FINAL = frozenset({ResponseStatus.COMPLETED, ResponseStatus.CANCELLED, ResponseStatus.SUPERSEDED,
                    ResponseStatus.ABORTED_ALTERNATE_PROGRAM, ResponseStatus.REJECTED_NOT_APPLICABLE,
                    ResponseStatus.REJECTED_INVALID, ResponseStatus.REJECTED_LATE})
FINAL_STATUSES = _FINAL
"""The Response statuses after which an event needs no further Response."""


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A validated DERControl of one program. ``values`` maps control kind → watts (float) or bool."""

    mrid: str
    program: str
    primacy: int
    creation_time: int
    start: int
    duration: int
    status: EventStatus
    status_time: int
    values: Mapping[str, float | bool]
    randomize_start: int = 0
    randomize_duration: int = 0
    reply_to: str | None = None
    response_required: int = 0
    href: str | None = None


@dataclass(frozen=True, slots=True)
class DefaultControl:
    """A program's DefaultDERControl values, with the program's primacy."""

    program: str
    primacy: int
    values: Mapping[str, float | bool]
    mrid: str = ""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one control is set to and why: ``source`` is ``event`` or ``default``; ``mrid`` the event or default."""

    value: float | bool
    source: str
    mrid: str
    program: str


@dataclass(frozen=True, slots=True)
class Selection:
    """The controls in force at ``now`` (kinds nobody sets are absent) and the events running at ``now``."""

    now: int
    controls: Mapping[str, Applied]
    running: frozenset[str] = field(default_factory=frozenset)
    winning: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class ResponseDue:
    """A Response to post: ``status`` for event ``mrid`` to ``reply_to``."""

    mrid: str
    reply_to: str
    status: ResponseStatus


def _int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Sep2Error("invalid", f"{name} must be an integer in {low}..{high} (got {value!r})")
    return value


def control_values(base: sep2.DERControlBase) -> dict[str, float | bool]:
    """The supported controls a DERControlBase sets: watts = value × 10^multiplier (Int16 value, multiplier −9..9)."""
    values: dict[str, float | bool] = {}
    for kind, name in _POWER_FIELDS.items():
        power = getattr(base, name)
        if power is not None:
            value = _int(f"{name}.value", power.value, -32768, 32767)
            multiplier = _int(f"{name}.multiplier", power.multiplier, -9, 9)
            values[kind] = float(value * 10**multiplier) if multiplier >= 0 else value / 10**-multiplier
    for kind, name in _BOOL_FIELDS.items():
        flag = getattr(base, name)
        if flag is not None:
            values[kind] = bool(flag)
    return values


def control_event(program_mrid: str, primacy: int, control: sep2.DERControl) -> ControlEvent:
    """Validate a DERControl's numbers into a ControlEvent; raises Sep2Error naming the field."""
    status = control.EventStatus_
    response_required = control.responseRequired
    try:
        required = int(response_required, 16) if response_required else 0
    except ValueError as exc:
        raise Sep2Error("invalid", f"responseRequired {response_required!r} is not hex") from exc
    return ControlEvent(
        mrid=control.mRID.upper(), program=program_mrid, primacy=_int("primacy", primacy, 0, 255),
        creation_time=_int("creationTime", control.creationTime, 0, _INT64 - 1),
        start=_int("interval.start", control.interval.start, 0, _INT64 - 1),
        duration=_int("interval.duration", control.interval.duration, 0, 2**32 - 1),
        status=EventStatus(_int("EventStatus.currentStatus", status.currentStatus, 0, 4)),
        status_time=_int("EventStatus.dateTime", status.dateTime, 0, _INT64 - 1),
        values=control_values(control.DERControlBase_),
        randomize_start=_int("randomizeStart", control.randomizeStart or 0, -3600, 3600),
        randomize_duration=_int("randomizeDuration", control.randomizeDuration or 0, -3600, 3600),
        reply_to=control.replyTo, response_required=_int("responseRequired", required, 0, 255), href=control.href)


def default_control(program_mrid: str, primacy: int, default: sep2.DefaultDERControl) -> DefaultControl:
    """Validate a DefaultDERControl into a DefaultControl; raises Sep2Error naming the field."""
    return DefaultControl(program=program_mrid, primacy=_int("primacy", primacy, 0, 255),
                          values=control_values(default.DERControlBase_), mrid=default.mRID.upper())


def _offset(seed: str, mrid: str, what: str, bound: int) -> int:
    """A stable offset in [0, bound] (or [bound, 0]): the same for the same seed, event and purpose."""
    if bound == 0:
        return 0
    digest = hashlib.sha256(f"{seed}/{mrid}/{what}".encode()).digest()
    magnitude = int.from_bytes(digest[:8], "big") % (abs(bound) + 1)
    return magnitude if bound > 0 else -magnitude


def window(event: ControlEvent, seed: str) -> tuple[int, int]:
    """The event's effective [start, end) in server time, randomisation applied, cancellation not."""
    start = event.start + _offset(seed, event.mrid, "start", event.randomize_start)
    end = start + event.duration + _offset(seed, event.mrid, "duration", event.randomize_duration)
    return start, max(start, end)


def _stops_at(event: ControlEvent, seed: str) -> int | None:
    """When an event cancelled with randomization stops, in server time (None: not cancelled so)."""
    if event.status == EventStatus.CANCELLED_WITH_RANDOMIZATION:
        bound = max(abs(event.randomize_start), abs(event.randomize_duration))
        return event.status_time + _offset(seed, event.mrid, "cancel", bound)
    return None


def _running(event: ControlEvent, now: int, seed: str) -> bool:
    if event.status in (EventStatus.CANCELLED, EventStatus.SUPERSEDED):
        return False
    start, end = window(event, seed)
    stop = _stops_at(event, seed)
    if stop is not None:
        end = min(end, stop)
    return start <= now < end


def _rank(event: ControlEvent) -> tuple[int, int, int]:
    """Sort key: the best event sorts first (lowest primacy, newest creation, greatest mRID)."""
    return (event.primacy, -event.creation_time, -int(event.mrid, 16))


def select(events: Iterable[ControlEvent], defaults: Iterable[DefaultControl], now: int, seed: str) -> Selection:
    """The controls in force at server time ``now``: per control, the best running event, else the best default."""
    running = sorted((e for e in events if _running(e, now, seed)), key=_rank)
    controls: dict[str, Applied] = {}
    for event in running:
        for kind, value in event.values.items():
            controls.setdefault(kind, Applied(value, "event", event.mrid, event.program))
    winning = frozenset(a.mrid for a in controls.values())
    for default in sorted(defaults, key=lambda d: (d.primacy, d.program)):
        for kind, value in default.values.items():
            controls.setdefault(kind, Applied(value, "default", default.mrid, default.program))
    return Selection(now=now, controls=controls, running=frozenset(e.mrid for e in running), winning=winning)


def responses_due(events: Iterable[ControlEvent], selection: Selection, sent: Mapping[str, frozenset[int]],
                  seed: str, confirmed: Collection[str] | None = None) -> list[ResponseDue]:
    """The Responses the events' states call for that ``sent`` (mRID → statuses posted) does not hold yet.

    responseRequired bit 0 asks for *received*; bit 1 for the others (started, completed, cancelled,
    superseded, aborted, rejected). An event no longer needs anything once a final status went out.
    With ``confirmed`` (the mRIDs the sites reported applied), *started* waits for that confirmation;
    without it (no control path), an event is started when it wins.
    """
    due: list[ResponseDue] = []
    events = list(events)
    by_mrid = {e.mrid: e for e in events}
    for event in events:
        already = sent.get(event.mrid, frozenset())
        if event.reply_to is None or already & _FINAL:
            continue
        wanted: list[ResponseStatus] = []
        if event.response_required & 0x01:
            wanted.append(ResponseStatus.RECEIVED)
        if event.response_required & 0x02:
            wanted.extend(s for s in _progress(event, selection, already, by_mrid, seed)
                          if s != ResponseStatus.STARTED or confirmed is None or event.mrid in confirmed)
        due.extend(ResponseDue(event.mrid, event.reply_to, s) for s in wanted if s not in already)
    return due


def _progress(event: ControlEvent, selection: Selection, already: frozenset[int],
              by_mrid: Mapping[str, ControlEvent], seed: str) -> list[ResponseStatus]:
    now = selection.now
    if event.status in (EventStatus.CANCELLED, EventStatus.CANCELLED_WITH_RANDOMIZATION) \
            and event.mrid not in selection.running:
        return [ResponseStatus.CANCELLED]
    if event.status == EventStatus.SUPERSEDED:
        return [ResponseStatus.SUPERSEDED]
    if not event.values:
        return [ResponseStatus.REJECTED_NOT_APPLICABLE]
    start, end = window(event, seed)
    if event.mrid in selection.running:
        if event.mrid in selection.winning:
            return [ResponseStatus.STARTED]
        overriders = {a.mrid for k, a in selection.controls.items() if k in event.values and a.source == "event"}
        same_program = any(by_mrid[m].program == event.program for m in overriders if m in by_mrid)
        return [ResponseStatus.SUPERSEDED if same_program else ResponseStatus.ABORTED_ALTERNATE_PROGRAM]
    if now >= end:
        return [ResponseStatus.COMPLETED] if ResponseStatus.STARTED in already else []
    return []
