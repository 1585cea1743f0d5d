"""Event selection and Responses per 2030.5's event rules: tables of (events, time) → controls."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from northbound import sep2
from northbound.errors import Sep2Error
from northbound.events import (
    Applied, ControlEvent, DefaultControl, EventStatus as S, ResponseStatus as R, control_event, control_values,
    responses_due, select, window,
)

SEED = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5/site-a"


def ev(mrid: str, *, primacy: int = 1, created: int = 0, start: int = 100, duration: int = 100, status: S = S.SCHEDULED,
       status_time: int = 0, values: dict | None = None, rs: int = 0, rd: int = 0, program: str = "P1",
       required: int = 0x03) -> ControlEvent:
    return ControlEvent(mrid=mrid, program=program, primacy=primacy, creation_time=created, start=start,
                        duration=duration, status=status, status_time=status_time,
                        values={"exp_lim_w": 1000.0} if values is None else values, randomize_start=rs,
                        randomize_duration=rd, reply_to="/rsps/1/rsp", response_required=required)


DEFAULT = DefaultControl(program="P1", primacy=1, values={"exp_lim_w": 5000.0, "connect": True}, mrid="DD01")

# (name, events, defaults, now, expected {kind: (value, mrid)})
CASES = [
    ("nothing at all", [], [], 150, {}),
    ("default when no event", [], [DEFAULT], 150, {"exp_lim_w": (5000.0, "DD01"), "connect": (True, "DD01")}),
    ("event over default, default keeps other kinds", [ev("A1")], [DEFAULT], 150,
     {"exp_lim_w": (1000.0, "A1"), "connect": (True, "DD01")}),
    ("before start", [ev("A1")], [DEFAULT], 99, {"exp_lim_w": (5000.0, "DD01"), "connect": (True, "DD01")}),
    ("start is inclusive", [ev("A1")], [], 100, {"exp_lim_w": (1000.0, "A1")}),
    ("end is exclusive", [ev("A1")], [], 200, {}),
    ("lower primacy wins even when older",
     [ev("A1", primacy=2, created=50, values={"exp_lim_w": 2000.0}), ev("B2", primacy=1, created=10)], [], 150,
     {"exp_lim_w": (1000.0, "B2")}),
    ("same primacy: newest creation wins",
     [ev("A1", created=10), ev("B2", created=20, values={"exp_lim_w": 3000.0})], [], 150,
     {"exp_lim_w": (3000.0, "B2")}),
    ("same primacy and creation: greater mRID wins",
     [ev("A1", created=10), ev("B2", created=10, values={"exp_lim_w": 3000.0})], [], 150,
     {"exp_lim_w": (3000.0, "B2")}),
    ("overlap only where windows meet",
     [ev("A1", start=100, duration=100), ev("B2", created=5, start=180, duration=100, values={"exp_lim_w": 3000.0})],
     [], 190, {"exp_lim_w": (3000.0, "B2")}),
    ("different kinds run side by side",
     [ev("A1", values={"exp_lim_w": 1000.0}), ev("B2", program="P2", primacy=2, values={"connect": False})], [], 150,
     {"exp_lim_w": (1000.0, "A1"), "connect": (False, "B2")}),
    ("cancelled never runs", [ev("A1", status=S.CANCELLED, status_time=120)], [DEFAULT], 110,
     {"exp_lim_w": (5000.0, "DD01"), "connect": (True, "DD01")}),
    ("superseded stops at once", [ev("A1", status=S.SUPERSEDED, status_time=120),
                                  ev("B2", created=5, values={"exp_lim_w": 700.0})], [], 150,
     {"exp_lim_w": (700.0, "B2")}),
    ("cancelled with randomization, no bounds: stops at status time",
     [ev("A1", status=S.CANCELLED_WITH_RANDOMIZATION, status_time=150)], [], 149, {"exp_lim_w": (1000.0, "A1")}),
    ("cancelled with randomization, after status time", [ev("A1", status=S.CANCELLED_WITH_RANDOMIZATION,
                                                            status_time=150)], [], 150, {}),
    ("active status is just a status", [ev("A1", status=S.ACTIVE)], [], 150, {"exp_lim_w": (1000.0, "A1")}),
    ("defaults: lower primacy program wins per kind",
     [], [DefaultControl("P2", 0, {"exp_lim_w": 100.0}, "DD02"), DEFAULT], 0,
     {"exp_lim_w": (100.0, "DD02"), "connect": (True, "DD01")}),
    ("zero duration never runs", [ev("A1", duration=0)], [], 100, {}),
]


@pytest.mark.parametrize(("name", "events", "defaults", "now", "expected"), CASES, ids=[c[0] for c in CASES])
def test_selection_table(name: str, events: list, defaults: list, now: int, expected: dict) -> None:
    selection = select(events, defaults, now, SEED)
    assert {k: (a.value, a.mrid) for k, a in selection.controls.items()} == expected


@given(st.integers(-3600, 3600), st.integers(-3600, 3600), st.integers(0, 10**6), st.text(min_size=1, max_size=20),
       st.sampled_from(["A1", "B2", "FFEE", "0123456789ABCDEF0123456789ABCDEF"]))
def test_randomized_window_stays_in_bounds_and_is_stable(rs: int, rd: int, duration: int, seed: str, mrid: str) -> None:
    event = ev(mrid, start=10_000, duration=duration, rs=rs, rd=rd)
    start, end = window(event, seed)
    assert min(10_000, 10_000 + rs) <= start <= max(10_000, 10_000 + rs)
    assert start + max(0, duration + min(0, rd)) <= end <= start + max(0, duration + max(0, rd))
    assert window(event, seed) == (start, end)


def test_randomization_spreads_over_the_whole_range() -> None:
    offsets = [window(ev(f"{i:04X}", start=0, rs=600), SEED)[0] for i in range(400)]
    assert min(offsets) >= 0 and max(offsets) <= 600
    assert min(offsets) < 60 and max(offsets) > 540          # both ends of the range are reached
    assert len(set(offsets)) > 200


def test_randomized_start_moves_the_decision() -> None:
    event = ev("A1", start=1000, duration=100, rs=300)
    start, end = window(event, SEED)
    assert select([event], [], start - 1, SEED).controls == {}
    assert select([event], [], start, SEED).controls["exp_lim_w"] == Applied(1000.0, "event", "A1", "P1")
    assert select([event], [], end, SEED).controls == {}


# (name, event(s), now, already sent for the first event, expected statuses for the first event)
RESPONSES = [
    ("nothing required", [ev("A1", required=0)], 150, set(), []),
    ("received only", [ev("A1", required=0x01)], 150, set(), [R.RECEIVED]),
    ("received before start", [ev("A1")], 50, set(), [R.RECEIVED]),
    ("started when it runs", [ev("A1")], 150, {R.RECEIVED}, [R.STARTED]),
    ("completed after a start", [ev("A1")], 250, {R.RECEIVED, R.STARTED}, [R.COMPLETED]),
    ("no completed without a start", [ev("A1")], 250, {R.RECEIVED}, []),
    ("cancelled", [ev("A1", status=S.CANCELLED, status_time=120)], 150, {R.RECEIVED, R.STARTED}, [R.CANCELLED]),
    ("superseded by the server", [ev("A1", status=S.SUPERSEDED)], 150, {R.RECEIVED}, [R.SUPERSEDED]),
    ("outranked in its own program", [ev("A1", created=1), ev("B2", created=2)], 150, {R.RECEIVED}, [R.SUPERSEDED]),
    ("outranked by another program", [ev("A1", primacy=2), ev("B2", program="P2", primacy=1)], 150,
     {R.RECEIVED}, [R.ABORTED_ALTERNATE_PROGRAM]),
    ("nothing we can carry out", [ev("A1", values={})], 150, set(), [R.RECEIVED, R.REJECTED_NOT_APPLICABLE]),
    ("a final status ends it", [ev("A1")], 150, {R.RECEIVED, R.SUPERSEDED}, []),
]


@pytest.mark.parametrize(("name", "events", "now", "sent", "expected"), RESPONSES, ids=[c[0] for c in RESPONSES])
def test_responses_table(name: str, events: list, now: int, sent: set, expected: list) -> None:
    selection = select(events, [], now, SEED)
    due = responses_due(events, selection, {"A1": frozenset(sent)}, SEED)
    assert [d.status for d in due if d.mrid == "A1"] == expected
    assert all(d.reply_to == "/rsps/1/rsp" for d in due)


def _control(**base: object) -> sep2.DERControl:
    return sep2.DERControl(
        mRID="ab12", replyTo="/r", responseRequired="03", creationTime=5,
        EventStatus_=sep2.EventStatus(currentStatus=0, dateTime=5, potentiallySuperseded=False),
        interval=sep2.DateTimeInterval(start=10, duration=60), DERControlBase_=sep2.DERControlBase(**base))


def test_power_of_ten_scaling() -> None:
    event = control_event("P1", 1, _control(opModExpLimW=sep2.ActivePower(value=15, multiplier=3),
                                              opModImpLimW=sep2.ActivePower(value=12345, multiplier=-2),
                                              opModConnect=False))
    assert event.values == {"exp_lim_w": 15000.0, "imp_lim_w": 123.45, "connect": False}
    assert (event.mrid, event.response_required, event.duration) == ("AB12", 3, 60)


@pytest.mark.parametrize(("power", "message"), [
    (sep2.ActivePower(value=40000, multiplier=0), r"opModExpLimW.value must be an integer in -32768..32767"),
    (sep2.ActivePower(value=1, multiplier=10), r"opModExpLimW.multiplier must be an integer in -9..9"),
])
def test_out_of_range_values_are_invalid(power: sep2.ActivePower, message: str) -> None:
    with pytest.raises(Sep2Error, match=message):
        control_values(sep2.DERControlBase(opModExpLimW=power))


def test_out_of_range_event_fields_are_invalid() -> None:
    control = _control(opModConnect=True)
    control.randomizeStart = 7200
    with pytest.raises(Sep2Error, match=r"randomizeStart must be an integer in -3600..3600 \(got 7200\)"):
        control_event("P1", 1, control)
    with pytest.raises(Sep2Error, match=r"primacy must be an integer in 0..255"):
        control_event("P1", 256, _control(opModConnect=True))


def test_started_waits_for_the_sites_confirmation_then_completed_follows() -> None:
    events = [ev("A1")]
    running = select(events, [], 150, SEED)
    assert [d.status for d in responses_due(events, running, {}, SEED, confirmed=set())] == [R.RECEIVED]
    assert [d.status for d in responses_due(events, running, {}, SEED, confirmed={"A1"})] == [R.RECEIVED, R.STARTED]
    assert [d.status for d in responses_due(events, running, {}, SEED)] == [R.RECEIVED, R.STARTED]   # no control path
    ended = select(events, [], 200, SEED)
    assert [d.status for d in responses_due(events, ended, {"A1": frozenset({1, 2})}, SEED, confirmed={"A1"})] \
        == [R.COMPLETED]
    # Never confirmed, now over: nothing claims it started or completed.
    assert responses_due(events, ended, {"A1": frozenset({1})}, SEED, confirmed=set()) == []
    # A rejection posted by the site path is final: nothing after it.
    assert responses_due(events, running, {"A1": frozenset({1, int(R.REJECTED_LATE)})}, SEED, confirmed={"A1"}) == []
