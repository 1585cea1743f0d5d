"""Report by exception: which samples of a point are worth sending.

A sample is reported when

* it is the point's first sample,
* its quality differs from the last reported one (good → loop_fault →
  device_error → stale … are always reported),
* the heartbeat interval since the last report has expired (liveness, even
  for a value that never moves), or
* its value moved beyond the deadband from the last *reported* value (not the
  last sample, so a slow drift is reported once it adds up): ``deadband`` is
  absolute (engineering units); ``deadband_percent`` is a percentage of the
  last reported value's magnitude. With both 0, any change is reported.

The comparison is strict: a move of exactly the deadband is suppressed.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["ExceptionFilter", "offer_many"]


class ExceptionFilter:
    """Per-point state of report-by-exception. ``offer(...)`` says whether to report a sample."""

    __slots__ = ("deadband", "deadband_percent", "heartbeat_s", "_reported", "_value", "_quality", "_at")

    def __init__(self, deadband: float = 0.0, deadband_percent: float = 0.0, heartbeat_s: float = 60.0) -> None:
        if deadband < 0 or deadband_percent < 0 or heartbeat_s <= 0:
            raise ValueError(f"deadband {deadband!r} and deadband_percent {deadband_percent!r} must be >= 0 "
                             f"and heartbeat_s {heartbeat_s!r} > 0")
        self.deadband = deadband
        self.deadband_percent = deadband_percent
        self.heartbeat_s = heartbeat_s
        # the last reported sample, kept as three fields: offer() runs once per point and poll
        self._reported = False
        self._value: float | None = None
        self._quality = ""
        self._at = 0.0

    @property
    def last_reported(self) -> tuple[float | None, str, float] | None:
        """(value, quality, time) of the last reported sample, or None before the first."""
        return (self._value, self._quality, self._at) if self._reported else None

    def offer(self, value: float | None, quality: str, now: float) -> bool:
        """True when the sample (``now`` in seconds, any monotonic-enough clock) must be reported."""
        return offer_many((self,), (value,), (quality,), now)[0]


def offer_many(filters: Iterable[ExceptionFilter], values: Iterable[float | None], qualities: Iterable[str],
               now: float) -> list[bool]:
    """``offer`` for each (filter, value, quality) in turn, all at time ``now``: one report flag each.

    The rule lives here alone, inline, because the poller runs it for every point of every read.
    """
    out = []
    report = out.append
    for f, value, quality in zip(filters, values, qualities):
        if f._reported and quality == f._quality and now - f._at < f.heartbeat_s:
            before = f._value
            if before is None or value is None:
                moved = before is not value
            elif f.deadband:
                moved = abs(value - before) > f.deadband
            elif f.deadband_percent:
                moved = abs(value - before) > abs(before) * f.deadband_percent / 100.0
            else:
                moved = value != before
            if not moved:
                report(False)
                continue
        f._reported = True
        f._value, f._quality, f._at = value, quality, now
        report(True)
    return out
