"""The edge bench's summary of the agent's CPU against Node-RED's over pairs of runs."""

from __future__ import annotations

import pytest

from bench.bench_edge import ratio_summary


def _run(cpu_percent: float, us_per_reading: float) -> dict[str, float]:
    return {"cpu_percent": cpu_percent, "cpu_us_per_reading": us_per_reading}


def test_each_pair_is_its_own_ratio_and_the_median_is_the_middle_one() -> None:
    pairs = [(_run(17.0, 1.70), _run(38.6, 3.96)), (_run(20.0, 2.00), _run(32.0, 3.20)),
             (_run(15.0, 1.50), _run(33.0, 3.30))]
    text = ratio_summary(pairs)
    assert text.startswith("0.44, 0.62, 0.45 per core (17.0 ÷ 38.6 %, 20.0 ÷ 32.0 %, 15.0 ÷ 33.0 %)")
    assert "median 0.45 per core, 0.45 per reading (0.43, 0.62, 0.45)" in text


def test_of_an_even_count_the_median_is_the_higher_middle_value() -> None:
    pairs = [(_run(10.0, 1.0), _run(40.0, 4.0)), (_run(20.0, 2.0), _run(40.0, 4.0))]     # 0.25 and 0.50
    assert "median 0.50 per core, 0.50 per reading" in ratio_summary(pairs)


def test_one_pair_has_no_median() -> None:
    assert ratio_summary([(_run(16.0, 1.6), _run(32.0, 3.2))]) == "0.50 per core (16.0 ÷ 32.0 %), 0.50 per reading"


def test_no_pairs_is_an_error() -> None:
    with pytest.raises(ValueError, match="no pairs"):
        ratio_summary([])
