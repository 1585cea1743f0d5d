"""The edge agent's event loop, and how early its timers may fire.

``ems-edge run`` runs the agent on ``new_event_loop()``: uvloop's where it is
installed, asyncio's elsewhere. uvloop rounds a timer's delay to whole
milliseconds and its clock moves in millisecond steps, so a timer can fire up
to about a millisecond *before* ``loop.time()`` reaches its deadline. Code that
re-checks a deadline when its timer fires counts the deadline as reached within
``TIMER_SLACK_S``; otherwise it re-arms for the remaining fraction of a
millisecond, which rounds to 0, and the timer fires again on every pass of the
loop until the clock moves (hundreds of wake-ups per deadline, measured).
"""

from __future__ import annotations

import asyncio

__all__ = ["TIMER_SLACK_S", "new_event_loop"]

TIMER_SLACK_S = 0.002


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The agent's event loop: uvloop's, libuv underneath, so the loop's own work per device read
    (socket readiness, callbacks, timers, the Modbus and MQTT transports) runs in C, not in asyncio's
    Python loop: on the 10 ms bench rig about 8 % less agent CPU per reading.

    uvloop is installed only where it has wheels (x86_64 and aarch64 Linux, see pyproject.toml);
    elsewhere (armv7 gateways) the agent runs on asyncio's own loop, with the same behaviour, and
    its start-up log line names the loop it got."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
