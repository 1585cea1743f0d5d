"""The edge bench's summary of the agent's CPU against Node-RED's over pairs of runs."""

from __future__ import annotations

import pytest

from bench.bench_edge import ratio_pairs, ratio_summary
from bench.rig import RigError


def _run(cpu_percent: float, us_per_reading: float) -> dict[str, float]:
    return {"cpu_percent": cpu_percent, "cpu_us_per_reading": us_per_reading}


def _pairs(per_core: list[float], per_reading: list[float]) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Pairs whose agent ÷ Node-RED ratios are the given ones (Node-RED at 40 % and 4 µs per reading)."""
    return [(_run(40 * c, 4 * r), _run(40.0, 4.0)) for c, r in zip(per_core, per_reading)]


def test_each_pair_is_its_own_ratio_and_the_median_is_the_middle_one() -> None:
    pairs = [(_run(17.0, 1.50), _run(38.6, 3.30)), (_run(20.0, 2.00), _run(32.0, 3.20)),
             (_run(15.0, 1.70), _run(33.0, 3.96))]
    text = ratio_summary(pairs)
    assert text.startswith("0.44, 0.62, 0.45 per core (17.0 ÷ 38.6 %, 20.0 ÷ 32.0 %, 15.0 ÷ 33.0 %)")
    assert "median 0.45 per core, 0.45 per reading (0.45, 0.62, 0.43)" in text


def test_the_median_is_neither_the_last_nor_the_largest_ratio() -> None:
    text = ratio_summary(_pairs([0.50, 0.70, 0.45], [0.40, 0.30, 0.60]))
    assert "median 0.50 per core, 0.40 per reading" in text


def test_of_an_even_count_the_median_is_the_higher_middle_value() -> None:
    text = ratio_summary(_pairs([0.6, 0.2, 0.4, 0.3], [0.3, 0.5, 0.1, 0.9]))
    assert "median 0.40 per core, 0.50 per reading" in text


def test_one_pair_has_no_median() -> None:
    assert ratio_summary([(_run(16.0, 1.6), _run(32.0, 3.2))]) == "0.50 per core (16.0 ÷ 32.0 %), 0.50 per reading"


def test_no_pairs_is_an_error() -> None:
    with pytest.raises(ValueError, match="no pairs"):
        ratio_summary([])


@pytest.mark.parametrize("value, pairs", [("1", 1), ("2", 2), ("4", 4), (" 6 ", 6)])
def test_one_pair_or_an_even_count_is_taken(value: str, pairs: int) -> None:
    assert ratio_pairs(value) == pairs


@pytest.mark.parametrize("value, reason", [("3", "1 or an even number"), ("0", "1 or an even number"),
                                           ("-2", "1 or an even number"), ("four", "whole number"),
                                           ("", "whole number"), ("2.0", "whole number")])
def test_an_odd_count_or_not_a_number_is_refused_naming_the_setting(value: str, reason: str) -> None:
    with pytest.raises(RigError, match=f"BENCH_EDGE_RATIO_PAIRS=.*{reason}"):
        ratio_pairs(value)
