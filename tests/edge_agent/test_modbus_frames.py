"""The Modbus TCP framing of ``PipelinedTcpClient``: ``parse_frames`` over any chunking of valid frames,
and hostile bytes from a device (wrong transaction or unit id, short or malformed frames, exception
answers, garbage) — a clear failure of the requests concerned, never a crash of the protocol."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.exceptions import ConnectionException

from edge_agent.modbus_source import ModbusExceptionAnswer, PipelinedTcpClient, _Slots, parse_frames

frames_st = st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.binary(min_size=1, max_size=253)),
                     max_size=8)


def wire(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=200, deadline=None)
@given(frames_st, st.lists(st.integers(0, 4000), max_size=12))
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(frames: list, cuts: list[int]) -> None:
    data = b"".join(wire(*f) for f in frames)
    buffer, out = b"", []
    for chunk in chunked(data, cuts):
        buffer += chunk
        parsed, used = parse_frames(buffer)
        out.extend(parsed)
        buffer = buffer[used:]
    assert out == frames and buffer == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_frames_or_a_clear_error(data: bytes) -> None:
    try:
        frames, used = parse_frames(data)
    except ValueError as exc:
        assert "malformed Modbus TCP header" in str(exc)
        return
    assert 0 <= used <= len(data) and b"".join(wire(*f) for f in frames) == data[:used]
    assert len(data) - used < 7 or 6 + int.from_bytes(data[used + 4:used + 6], "big") > len(data) - used


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def _answered(stream: list[bytes], unit: int = 5, count: int = 3) -> tuple[object, bool]:
    """Send one read of ``count`` holding registers to ``unit`` on a fake connection, feed ``stream``
    (``{tid}`` in a chunk is replaced by the request's transaction id); (its outcome, connection closed)."""
    client = PipelinedTcpClient("device.invalid", 502, timeout_s=5.0, limit=1)
    transport = FakeTransport()
    client.connection_made(transport)
    read = asyncio.ensure_future(client.read_raw("holding", 0, count, unit))
    await asyncio.sleep(0)
    tid = struct.unpack(">H", transport.sent[0][:2])[0]
    for chunk in stream:
        client.data_received(chunk.replace(b"{tid}", struct.pack(">H", tid)))
    await asyncio.sleep(0)
    if not read.done():
        read.cancel()
        return "pending", transport.closed
    try:
        return read.result(), transport.closed
    except (ConnectionException, ModbusExceptionAnswer) as exc:
        return exc, transport.closed


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.booleans())
def test_hostile_answers_fail_the_request_clearly_or_leave_it_waiting(chunks: list[bytes], with_tid: bool) -> None:
    """Whatever the device sends, data_received does not raise: the read gets its data, the device's
    exception, a ConnectionException naming the problem (and the connection is dropped), or keeps waiting."""
    stream = [b"{tid}" + c if with_tid and i == 0 else c for i, c in enumerate(chunks)]
    outcome, closed = asyncio.run(_answered(stream))
    if isinstance(outcome, ConnectionException):
        assert closed and str(outcome)
    else:
        assert outcome == "pending" or isinstance(outcome, (bytes, ModbusExceptionAnswer))


@pytest.mark.parametrize("stream, expect", [
    ([b"{tid}\0\0\0\x09\x05\x03\x06\0\x01\0\x02\0\x03"], b"\0\x01\0\x02\0\x03"),              # the answer
    ([b"{tid}\0\0\0\x09\x05", b"\x03\x06\0\x01", b"\0\x02\0\x03"], b"\0\x01\0\x02\0\x03"),   # in pieces
    ([b"\x99\x99\0\0\0\x09\x05\x03\x06\0\x01\0\x02\0\x03"], "pending"),                       # another tid: ignored
    ([b"{tid}\0\0\0\x03\x05\x83\x02"], ModbusExceptionAnswer),                                # exception code 2
    ([b"{tid}\0\0\0\x09\x06\x03\x06\0\x01\0\x02\0\x03"], "device id 6"),                       # another unit
    ([b"{tid}\0\x01\0\x09\x05\x03\x06\0\x01\0\x02\0\x03"], "malformed Modbus TCP header"),     # protocol id 1
    ([b"{tid}\0\0\x01\0\x05\x03"], "malformed Modbus TCP header"),                            # length 256
    ([b"{tid}\0\0\x01\0\x05\x03" + bytes(254)], "malformed Modbus TCP header"),              # ... all of it sent
    ([b"{tid}\0\0\0\x01\x05"], "malformed Modbus TCP header"),                                # length 1, all sent
    ([b"{tid}\0\0\0\x05\x05\x03\x06\0\x01"], "does not fit"),                                 # byte count 6, 2 sent
    ([b"{tid}\0\0\0\x09\x05"], "pending"),                                                    # short: waits
])
def test_known_answers(stream: list[bytes], expect: object) -> None:
    outcome, closed = asyncio.run(_answered(stream))
    if isinstance(expect, str) and expect != "pending":
        assert isinstance(outcome, ConnectionException) and expect in str(outcome) and closed
    elif isinstance(expect, type):
        assert isinstance(outcome, expect) and outcome.code == 2 and not closed
    else:
        assert outcome == expect and not closed


def test_a_request_times_out_at_its_deadline_and_fails_the_others_on_the_connection() -> None:
    """One timer per connection: the unanswered read raises TimeoutError at about ``timeout_s``, the
    connection is dropped and the read behind it fails as ConnectionException; an answered read first
    leaves no timeout behind it."""
    async def scenario() -> tuple[float, type, type, bool]:
        client = PipelinedTcpClient("device.invalid", 502, timeout_s=0.2, limit=2)
        transport = FakeTransport()
        client.connection_made(transport)
        first = asyncio.ensure_future(client.read_raw("holding", 0, 1, 1))
        await asyncio.sleep(0)
        client.data_received(transport.sent[0][:2] + b"\0\0\0\x05\x01\x03\x02\0\x07")
        assert await first == b"\0\x07"
        started = asyncio.get_running_loop().time()
        late = asyncio.ensure_future(client.read_raw("holding", 0, 1, 1))
        await asyncio.sleep(0.1)
        behind = asyncio.ensure_future(client.read_raw("holding", 1, 1, 1))
        outcomes = await asyncio.gather(late, behind, return_exceptions=True)
        return (asyncio.get_running_loop().time() - started, type(outcomes[0]), type(outcomes[1]), transport.closed)

    elapsed, late, behind, closed = asyncio.run(scenario())
    assert 0.19 <= elapsed < 1.0 and late is asyncio.TimeoutError and behind is ConnectionException and closed


def test_request_slots_are_handed_on_in_order_and_never_lost_to_a_cancelled_waiter() -> None:
    """``max_inflight`` slots: waiters get a released slot first come first served; a waiter cancelled
    while waiting, or cancelled just after the slot was handed to it, passes it on."""
    async def scenario() -> list[str]:
        slots = _Slots(1)
        order: list[str] = []
        slots.free -= 1                                 # the first request holds the only slot

        async def waiter(name: str) -> None:
            await slots.wait()
            order.append(name)
            await asyncio.sleep(0)
            slots.release()

        b, c, d = (asyncio.ensure_future(waiter(n)) for n in "bcd")
        await asyncio.sleep(0)
        b.cancel()                                      # cancelled while waiting
        await asyncio.sleep(0)
        slots.release()                                 # handed to c ...
        c.cancel()                                      # ... which is cancelled before it runs: d gets it
        await asyncio.gather(b, c, d, return_exceptions=True)
        order.append(f"free={slots.free}")
        return order

    assert asyncio.run(scenario()) == ["d", "free=1"]


def test_a_waiter_cancelled_just_before_a_release_gets_its_cancellation_not_a_value_error() -> None:
    async def go() -> tuple[str, int, int]:
        slots = _Slots(1)
        slots.free -= 1                           # one holder
        waiter = asyncio.create_task(slots.wait())
        await asyncio.sleep(0)                    # queued
        waiter.cancel()                           # cancelled, and the holder releases before the waiter runs:
        slots.release()                           # release() drops the cancelled future from the queue
        try:
            await waiter
        except asyncio.CancelledError:
            outcome = "cancelled"
        except ValueError as exc:                 # what the old wait() raised (not in deque)
            outcome = type(exc).__name__
        return outcome, slots.free, len(slots._queue)
    assert asyncio.run(go()) == ("cancelled", 1, 0)


def test_a_timeout_wakes_its_connection_timer_a_few_times_not_once_per_loop_pass_on_uvloop() -> None:
    """uvloop's timers may fire up to a millisecond before ``loop.time()`` reaches the deadline
    (ms-rounded delays, ms clock); re-arming for the remainder spun the timer hundreds of times
    per timed-out read until the deadline counted as due within ``TIMER_SLACK_S``."""
    from edge_agent.event_loop import new_event_loop

    calls: list[int] = []

    class Counting(PipelinedTcpClient):
        def _check_deadlines(self) -> None:
            calls[-1] += 1
            super()._check_deadlines()

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        for k in range(20):                         # timeouts off the millisecond grid: 10.3 .. 12.2 ms
            calls.append(0)
            client = Counting("d.invalid", 502, timeout_s=0.0103 + k * 0.0001, limit=1)
            client.connection_made(FakeTransport())
            with pytest.raises(asyncio.TimeoutError):
                await client.read_raw("holding", 0, 3, 5)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    assert max(calls) <= 3, calls
