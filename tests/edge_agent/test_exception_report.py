"""Report by exception: deadband (absolute and percent), heartbeat, quality changes."""

from __future__ import annotations

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.exception_report import ExceptionFilter, FilterBank


def run(f: ExceptionFilter, samples: list[tuple[float, float | None, str]]) -> list[float]:
    """Feed (time, value, quality) samples; return the times that were reported."""
    return [t for t, value, quality in samples if f.offer(value, quality, t)]


def test_absolute_deadband_compares_with_the_last_reported_value() -> None:
    f = ExceptionFilter(deadband=0.5, heartbeat_s=1000)
    samples = [(0, 10.0, "good"), (1, 10.3, "good"), (2, 10.5, "good"), (3, 10.51, "good"),
               (4, 10.2, "good"), (5, 10.0, "good"), (6, 9.9, "good")]
    # 10.5 is exactly the deadband away: suppressed; 10.51 is beyond it; then 10.0 is 0.51 below 10.51
    assert run(f, samples) == [0, 3, 5]


def test_slow_drift_is_reported_once_it_adds_up() -> None:
    f = ExceptionFilter(deadband=1.0, heartbeat_s=1000)
    samples = [(t, 20.0 + 0.3 * t, "good") for t in range(10)]
    assert run(f, samples) == [0, 4, 8]          # 21.2 - 20.0 > 1, 22.4 - 21.2 > 1


def test_percent_deadband_scales_with_the_value() -> None:
    f = ExceptionFilter(deadband_percent=2.0, heartbeat_s=1000)
    samples = [(0, 100.0, "good"), (1, 101.9, "good"), (2, 102.1, "good"), (3, 104.0, "good"), (4, 104.2, "good")]
    # 2 % of 100 is 2.0 → 102.1 reported; 2 % of 102.1 is 2.042 → 104.0 not (1.9), 104.2 yes (2.1)
    assert run(f, samples) == [0, 2, 4]


def test_percent_deadband_of_a_negative_value_uses_its_magnitude() -> None:
    f = ExceptionFilter(deadband_percent=10.0, heartbeat_s=1000)
    assert run(f, [(0, -20.0, "good"), (1, -21.5, "good"), (2, -22.5, "good")]) == [0, 2]


def test_zero_deadband_reports_every_change_and_nothing_else() -> None:
    f = ExceptionFilter(heartbeat_s=1000)
    assert run(f, [(0, 1.0, "good"), (1, 1.0, "good"), (2, 1.0000001, "good"), (3, 1.0000001, "good")]) == [0, 2]


def test_heartbeat_reports_an_unchanged_value() -> None:
    f = ExceptionFilter(deadband=5.0, heartbeat_s=10.0)
    samples = [(t, 50.0, "good") for t in range(0, 35)]
    assert run(f, samples) == [0, 10, 20, 30]


def test_a_report_restarts_the_heartbeat() -> None:
    f = ExceptionFilter(deadband=1.0, heartbeat_s=10.0)
    samples = [(0, 1.0, "good"), (6, 5.0, "good")] + [(t, 5.0, "good") for t in range(7, 20)]
    assert run(f, samples) == [0, 6, 16]


@pytest.mark.parametrize("deadband", [0.0, 2.0])
def test_a_block_reported_whole_then_unchanged_reports_the_heartbeat_due_exactly_at_its_interval(
        deadband: float) -> None:
    """A block reported whole keeps its lists (``FilterBank``'s shortcut): an unchanged block is
    suppressed until the shortest heartbeat, and a point due exactly at its interval is reported."""
    bank = FilterBank([(deadband, 0.0, 1.0), (deadband, 0.0, 4.0), (deadband, 0.0, 4.0)])
    values, qualities = [1.0, 2.0, 3.0], ["good"] * 3
    assert bank.offer(0, values, qualities, 0.0) is None
    assert bank.offer(0, [1.0, 2.0, 3.0], ["good"] * 3, 0.5) == [False, False, False]
    assert bank.offer(0, [1.0, 2.0, 3.0], ["good"] * 3, 1.0) == [True, False, False]
    assert bank.offer(0, [1.0, 2.0, 3.0], ["good"] * 3, 4.0) is None                 # every one due
    assert bank.offer(0, [1.0, 2.0, 3.0], ["good", "stale", "good"], 4.5) == [False, True, False]
    assert [bank.last_reported(i) for i in range(3)] == [(1.0, "good", 4.0), (2.0, "stale", 4.5),
                                                          (3.0, "good", 4.0)]


@pytest.mark.parametrize("sequence,expected", [
    ([(0, 5.0, "good"), (1, 5.0, "loop_fault"), (2, 5.0, "loop_fault"), (3, 5.0, "good")], [0, 1, 3]),
    ([(0, 5.0, "good"), (1, None, "device_error"), (2, None, "device_error"), (3, None, "stale"),
      (4, None, "stale"), (5, 5.0, "good")], [0, 1, 3, 5]),
])
def test_quality_changes_are_always_reported(sequence, expected) -> None:
    f = ExceptionFilter(deadband=100.0, heartbeat_s=1000)
    assert run(f, sequence) == expected


def test_value_missing_on_both_sides_is_not_a_change() -> None:
    f = ExceptionFilter(heartbeat_s=5.0)
    assert run(f, [(0, None, "stale"), (1, None, "stale"), (5, None, "stale")]) == [0, 5]


def test_last_reported() -> None:
    f = ExceptionFilter(deadband=1.0)
    assert f.last_reported is None
    f.offer(3.0, "good", 7.0)
    f.offer(3.5, "good", 8.0)
    assert f.last_reported == (3.0, "good", 7.0)


@pytest.mark.parametrize("kwargs", [{"deadband": -1}, {"deadband_percent": -0.1}, {"heartbeat_s": 0}])
def test_bad_parameters(kwargs) -> None:
    with pytest.raises(ValueError):
        ExceptionFilter(**kwargs)


class Reference:
    """The rule of the module docstring, point by point, written plainly."""

    def __init__(self, deadband: float, deadband_percent: float, heartbeat_s: float) -> None:
        self.deadband, self.deadband_percent, self.heartbeat_s = deadband, deadband_percent, heartbeat_s
        self.last: tuple[float | None, str, float] | None = None

    def offer(self, value: float | None, quality: str, now: float) -> bool:
        last = self.last
        if last is not None and quality == last[1] and now - last[2] < self.heartbeat_s:
            before = last[0]
            if before is None or value is None:
                moved = before is not value
            elif self.deadband:
                moved = abs(value - before) > self.deadband
            elif self.deadband_percent:
                moved = abs(value - before) > abs(before) * self.deadband_percent / 100.0
            else:
                moved = value != before
            if not moved:
                return False
        self.last = (value, quality, now)
        return True


_spec = st.tuples(st.sampled_from([0.0, 0.5, 2.0]), st.sampled_from([0.0, 10.0]), st.sampled_from([0.1, 0.25, 1.0]))
_sample = st.tuples(st.one_of(st.none(), st.sampled_from([0.0, 1.4, -2.0])), st.sampled_from(["good", "good", "stale"]))


@settings(max_examples=500, deadline=None)
@given(st.lists(_spec, min_size=1, max_size=6), st.data())
def test_a_bank_judges_runs_of_points_as_each_point_alone_would(specs: list, data: st.DataObject) -> None:
    """Offers over runs of a bank — whole blocks, single points split out of them, overlapping runs, at
    times that step by heartbeat-sized amounts (0.1 + 0.2 is not 0.3) — flag each sample as the
    plain point-by-point rule does (None: every sample reported)."""
    bank = FilterBank(specs)
    points = [Reference(*spec) for spec in specs]
    now = 0.0
    for _ in range(data.draw(st.integers(1, 25))):
        now += data.draw(st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.25, 1.0]))
        start = data.draw(st.integers(0, len(specs) - 1))
        stop = data.draw(st.integers(start + 1, len(specs)))
        samples = data.draw(st.lists(_sample, min_size=stop - start, max_size=stop - start))
        flags = bank.offer(start, [v for v, _ in samples], [q for _, q in samples], now)
        expected = [p.offer(v, q, now) for p, (v, q) in zip(points[start:stop], samples)]
        assert (flags if flags is not None else [True] * len(samples)) == expected
        if flags is None:
            assert all(expected)
    assert [bank.last_reported(i) for i in range(len(specs))] == [p.last for p in points]
