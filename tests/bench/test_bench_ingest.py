"""The ingest benchmark's drain arithmetic: the steady rate and its 1-second windows."""

from __future__ import annotations

import pytest

from bench.bench_ingest import _steady


def test_steady_drain_starts_at_the_first_written_sample_and_cuts_whole_windows() -> None:
    # start-up until 0.5 s, then 100/s until 2.5 s, then 300/s until 3.5 s (written 500 at the end)
    trace = [(0.0, 0.0), (0.5, 0.0), (1.0, 50.0), (2.0, 150.0), (2.5, 200.0), (3.0, 350.0), (3.5, 500.0)]
    rate, windows = _steady(trace)
    assert rate == pytest.approx((500 - 50) / 2.5)
    assert windows == pytest.approx([100.0, 200.0])        # [1, 2] and [2, 3]; [3, 3.5] is not whole


def test_a_drain_shorter_than_a_window_has_no_window() -> None:
    rate, windows = _steady([(0.0, 0.0), (0.3, 10.0), (0.6, 40.0)])
    assert rate == pytest.approx(30 / 0.3) and windows == []
