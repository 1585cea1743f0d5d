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

``FilterBank`` keeps this state for a run of points as columns and judges a
whole block's samples at once (the poller has one bank per device);
``ExceptionFilter`` is the same rule for one point.
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import ge, ne, or_, sub
from typing import Sequence

__all__ = ["ExceptionFilter", "FilterBank"]

_NEVER = ""     # the quality "last reported" before the first report: differs from every real quality


class FilterBank:
    """Report-by-exception state of ``n`` points (one ``(deadband, deadband_percent, heartbeat_s)`` each),
    as columns indexed by point: the last reported value, quality and time of each."""

    __slots__ = ("deadband", "deadband_percent", "heartbeat_s", "value", "quality", "at", "_together", "_runs",
                 "_unwritten")

    def __init__(self, specs: Sequence[tuple[float, float, float]]) -> None:
        for deadband, deadband_percent, heartbeat_s in specs:
            if deadband < 0 or deadband_percent < 0 or heartbeat_s <= 0:
                raise ValueError(f"deadband {deadband!r} and deadband_percent {deadband_percent!r} must be >= 0 "
                                 f"and heartbeat_s {heartbeat_s!r} > 0")
        self.deadband = [float(s[0]) for s in specs]
        self.deadband_percent = [float(s[1]) for s in specs]
        self.heartbeat_s = [float(s[2]) for s in specs]
        n = len(specs)
        self.value: list[float | None] = [None] * n
        self.quality = [_NEVER] * n
        self.at = [-float("inf")] * n
        # runs of points (start, stop) whose last reports were all at one time: that time
        self._together: dict[tuple[int, int], float] = {}
        # per run offered: its longest and shortest heartbeat, and whether it has no deadband at all
        self._runs: dict[tuple[int, int], tuple[float, float, bool]] = {}
        # runs (disjoint, each also in _together) whose last report was the whole run: (time, values,
        # qualities) as offered, not yet copied into the columns, so that a block reported whole at
        # every poll costs one dictionary store and nothing per point
        self._unwritten: dict[tuple[int, int], tuple[float, list[float | None], list[str]]] = {}

    def last_reported(self, index: int) -> tuple[float | None, str, float] | None:
        """(value, quality, time) of point ``index``'s last reported sample, or None before the first."""
        if self._unwritten:
            self._write_back(index, index + 1)
        if self.quality[index] == _NEVER:
            return None
        return self.value[index], self.quality[index], self.at[index]

    def offer(self, start: int, values: list[float | None], qualities: list[str], now: float) -> list[bool] | None:
        """Judge the samples of points ``start``, ``start + 1`` … (``now`` in seconds, any monotonic-enough
        clock) and remember the reported ones: one report flag per sample, or None when every one is reported.

        Whole-run steps (C-level list operations) when every point's heartbeat has expired (all are
        reported) or no point of the run has a deadband (reported: a changed value or quality, or an
        expired heartbeat); point by point otherwise. Every time test is ``now - at >= heartbeat``
        as the point-by-point rule computes it, or a bound that implies it exactly. When every sample
        is reported, ``values`` and ``qualities`` are kept (not copied) until a later offer or
        ``last_reported`` needs them point by point: the caller must not change them. The next offer
        of the same run is then one step when it is reported whole again, or when nothing in it
        changed (equal values are not moved by any deadband) and no heartbeat is due."""
        stop = start + len(values)
        run = (start, stop)
        facts = self._runs.get(run)
        if facts is None:
            heartbeats = self.heartbeat_s[start:stop]
            facts = self._runs[run] = (max(heartbeats), min(heartbeats),
                                       not any(self.deadband[start:stop]) and not any(self.deadband_percent[start:stop]))
        widest, shortest, plain = facts
        unwritten = self._unwritten
        if unwritten:
            held = unwritten.get(run)
            if held is not None:
                if now - held[0] >= widest:
                    unwritten[run] = (now, values, qualities)   # reported whole again: the heartbeat poll
                    return None
                if now - held[0] < shortest and values == held[1] and qualities == held[2]:
                    return [False] * len(values)                # nothing moved, no heartbeat due (see _judge)
            self._write_back(start, stop)
        together = self._together.get(run)
        if together is not None:        # one report time for the whole run: now - at is one number
            every_due = now - together >= widest
        else:
            every_due = all(map(ge, map(sub, repeat(now), self.at[start:stop]), self.heartbeat_s[start:stop]))
        flags = None
        if not every_due:
            flags = self._judge(start, stop, values, qualities, now, shortest) if plain \
                else self._judge_each(start, stop, values, qualities, now)
        if flags is None:               # every sample reported
            self._forget(start, stop)
            self._together[run] = now
            unwritten[run] = (now, values, qualities)
        return flags

    def _judge(self, start: int, stop: int, values: list[float | None], qualities: list[str], now: float,
               shortest: float) -> list[bool] | None:
        """A run without deadbands: reported where the value or quality changed or the heartbeat expired.
        Remembers the reported samples unless all are (then returns None). Values are never NaN (decode
        refuses NaN and calibration cannot make one): list ``==`` treats the same NaN object as equal,
        where ``ne`` point by point would report it."""
        last_values, last_qualities, at = self.value, self.quality, self.at
        # now - min(at) < shortest heartbeat: no heartbeat due (subtraction rounds monotonically)
        if now - min(at[start:stop]) < shortest:
            before = last_values[start:stop]
            if values == before and qualities == last_qualities[start:stop]:
                return [False] * len(values)        # nothing moved, no heartbeat due: the usual poll
            flags = list(map(ne, values, before))
            if qualities != last_qualities[start:stop]:
                flags = list(map(or_, flags, map(ne, qualities, last_qualities[start:stop])))
        else:
            flags = list(map(or_, map(or_, map(ne, values, last_values[start:stop]),
                                          map(ne, qualities, last_qualities[start:stop])),
                             map(ge, map(sub, repeat(now), at[start:stop]), self.heartbeat_s[start:stop])))
        if False not in flags:
            return None
        if True in flags:
            for i in compress(range(start, stop), flags):
                last_values[i], last_qualities[i], at[i] = values[i - start], qualities[i - start], now
            self._forget(start, stop)
        return flags

    def _judge_each(self, start: int, stop: int, values: list[float | None], qualities: list[str],
                    now: float) -> list[bool]:
        """The rule point by point (deadbands); remembers the reported samples."""
        out = []
        report = out.append
        last_values, last_qualities, at = self.value, self.quality, self.at
        deadbands, percents, heartbeats = self.deadband, self.deadband_percent, self.heartbeat_s
        for i, value, quality in zip(range(start, stop), values, qualities):
            if quality == last_qualities[i] and now - at[i] < heartbeats[i]:
                before = last_values[i]
                if before is None or value is None:
                    moved = before is not value
                elif deadbands[i]:
                    moved = abs(value - before) > deadbands[i]
                elif percents[i]:
                    moved = abs(value - before) > abs(before) * percents[i] / 100.0
                else:
                    moved = value != before
                if not moved:
                    report(False)
                    continue
            last_values[i], last_qualities[i], at[i] = value, quality, now
            report(True)
        if True in out:
            self._forget(start, stop)
        return out

    def _write_back(self, start: int, stop: int) -> None:
        """Copy the unwritten runs overlapping points ``start:stop`` into the columns (they stay together)."""
        for run in [run for run in self._unwritten if run[0] < stop and start < run[1]]:
            at, values, qualities = self._unwritten.pop(run)
            self.value[run[0]:run[1]] = values
            self.quality[run[0]:run[1]] = qualities
            self.at[run[0]:run[1]] = [at] * (run[1] - run[0])
            self._together[run] = at

    def _forget(self, start: int, stop: int) -> None:
        """Points ``start:stop`` were reported: the runs overlapping them are no longer reported together."""
        if not self._together:
            return
        for run in [run for run in self._together if run[0] < stop and start < run[1]]:
            del self._together[run]


class ExceptionFilter:
    """Report-by-exception state of one point. ``offer(...)`` says whether to report a sample."""

    __slots__ = ("_bank",)

    def __init__(self, deadband: float = 0.0, deadband_percent: float = 0.0, heartbeat_s: float = 60.0) -> None:
        self._bank = FilterBank([(deadband, deadband_percent, heartbeat_s)])

    @property
    def last_reported(self) -> tuple[float | None, str, float] | None:
        """(value, quality, time) of the last reported sample, or None before the first."""
        return self._bank.last_reported(0)

    def offer(self, value: float | None, quality: str, now: float) -> bool:
        """True when the sample (``now`` in seconds, any monotonic-enough clock) must be reported."""
        flags = self._bank.offer(0, [value], [quality], now)
        return flags is None or flags[0]
