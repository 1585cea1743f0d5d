"""IEC 60076-7 thermal model: steady state, thermal inertia, irregular sampling, ageing and loss of life."""

from __future__ import annotations

import math
import random

import pytest

from edge_agent.thermal import (
    PRESETS, ThermalParams, ThermalState, advance, ageing_rate, start, steady_state, time_to_limit,
)

MIN = 60_000           # one minute in ms
T0 = 1_764_000_000_000
DIST = ThermalParams()                                    # distribution transformer, ONAN (defaults)
POWER = ThermalParams(**{**PRESETS[("power", "ONAN")], "top_oil_rise": 52.0, "hot_spot_gradient": 26.0,
                         "loss_ratio": 6.0})


def run(params: ThermalParams, state: ThermalState, k: float, ambient: float, until_ms: int,
        step_ms: int) -> ThermalState:
    t = state.t_ms
    while t < until_ms:
        t = min(t + step_ms, until_ms)
        state = advance(params, state, k, ambient, t)
    return state


@pytest.mark.parametrize("params", [DIST, POWER], ids=["distribution-ONAN", "power-ONAN"])
def test_steady_state_at_rated_load_is_ambient_plus_rated_rises(params: ThermalParams) -> None:
    expected_top = 20.0 + params.top_oil_rise
    expected_hot = expected_top + params.hot_spot_gradient
    assert steady_state(params, 1.0, 20.0) == pytest.approx((expected_top, expected_hot), abs=1e-9)
    # Started cold (ambient, no load) and held at K = 1 for 20 top-oil time constants, the model settles there.
    cold = start(params, 0.0, 20.0, T0)
    settled = run(params, cold, 1.0, 20.0, T0 + int(20 * params.k11 * params.oil_time_constant_min * MIN), MIN)
    assert settled.top_oil == pytest.approx(expected_top, abs=0.01)
    assert settled.hot_spot == pytest.approx(expected_hot, abs=0.01)


def test_distribution_defaults_give_the_reference_hot_spot_of_98_at_rated_load_and_20_degrees() -> None:
    assert steady_state(DIST, 1.0, 20.0)[1] == pytest.approx(98.0)
    assert (DIST.oil_exponent, DIST.winding_exponent, DIST.k11, DIST.k21, DIST.k22) == (0.8, 1.6, 1.0, 1.0, 2.0)
    assert (DIST.oil_time_constant_min, DIST.winding_time_constant_min) == (180.0, 4.0)


def test_a_load_step_moves_top_oil_with_its_time_constant() -> None:
    before = start(DIST, 0.5, 20.0, T0)
    final_top, _ = steady_state(DIST, 1.0, 20.0)
    tau_ms = int(DIST.k11 * DIST.oil_time_constant_min * MIN)
    # Thermal inertia: one minute after the step the oil has hardly moved.
    one_minute = run(DIST, before, 1.0, 20.0, T0 + MIN, 1000)
    assert (one_minute.top_oil - before.top_oil) / (final_top - before.top_oil) < 0.01
    after_tau = run(DIST, before, 1.0, 20.0, T0 + tau_ms, 10_000)
    fraction = (after_tau.top_oil - before.top_oil) / (final_top - before.top_oil)
    assert fraction == pytest.approx(1 - math.exp(-1), abs=0.005)          # 63.2 % after τo
    after_3tau = run(DIST, before, 1.0, 20.0, T0 + 3 * tau_ms, 10_000)
    assert (after_3tau.top_oil - before.top_oil) / (final_top - before.top_oil) == pytest.approx(
        1 - math.exp(-3), abs=0.005)


def test_hot_spot_follows_a_load_step_with_the_winding_time_constant_and_overshoots_on_power_transformers() -> None:
    before = start(DIST, 0.5, 20.0, T0)
    gradient_before = before.hot_spot - before.top_oil
    gradient_final = DIST.hot_spot_gradient * 1.0 ** DIST.winding_exponent
    tau_w_ms = int(DIST.k22 * DIST.winding_time_constant_min * MIN)         # k22·τw = 8 min
    after = run(DIST, before, 1.0, 20.0, T0 + tau_w_ms, 1000)
    fraction = (after.hot_spot - after.top_oil - gradient_before) / (gradient_final - gradient_before)
    assert fraction == pytest.approx(1 - math.exp(-1), abs=0.01)
    # k21 = 2 (power ONAN): the gradient rises above its final value before the oil flow catches up.
    p_before = start(POWER, 0.5, 20.0, T0)
    peak = max((run(POWER, p_before, 1.0, 20.0, T0 + m * MIN, MIN) for m in range(5, 120, 5)),
               key=lambda s: s.hot_spot - s.top_oil)
    assert peak.hot_spot - peak.top_oil > POWER.hot_spot_gradient * 1.05


def _profile(t_ms: int) -> tuple[float, float]:
    """A day of load steps and an ambient stepping with them (values hold between changes)."""
    hour = (t_ms - T0) / 3_600_000
    k = 0.4 if hour < 6 else 1.2 if hour < 9 else 0.8 if hour < 17 else 1.3 if hour < 19 else 0.6
    ambient = 10.0 if hour < 8 else 22.0 if hour < 18 else 14.0
    return k, ambient


def _changes() -> list[int]:
    return [T0 + h * 3_600_000 for h in (6, 8, 9, 17, 18, 19)]


def _trajectory(times: list[int]) -> dict[int, ThermalState]:
    """Advance through ``times`` holding each sample's inputs until the next one; states at whole hours."""
    k, ambient = _profile(T0)
    state = start(DIST, k, ambient, T0)
    out = {}
    for t in times:
        state = advance(DIST, state, k, ambient, t)
        k, ambient = _profile(t)
        if (t - T0) % 3_600_000 == 0:
            out[t] = state
    return out


def test_irregular_sample_intervals_give_the_same_trajectory_as_regular_ones() -> None:
    end = T0 + 24 * 3_600_000
    regular = list(range(T0 + 1000, end + 1, 1000))                          # a 1 s poll
    rng = random.Random(7)
    irregular = set(_changes()) | {T0 + h * 3_600_000 for h in range(1, 25)}
    t = T0
    while t < end:                                      # 0.5 s .. 20 min between readings
        t += rng.choice([500, 1000, 60_000, 300_000, 1_200_000])
        irregular.add(min(t, end))
    a, b = _trajectory(regular), _trajectory(sorted(irregular))
    assert a.keys() == b.keys() and len(a) == 24
    for hour in a:
        assert b[hour].top_oil == pytest.approx(a[hour].top_oil, abs=0.05), hour
        assert b[hour].hot_spot == pytest.approx(a[hour].hot_spot, abs=0.05), hour
    assert b[end].loss_of_life_h == pytest.approx(a[end].loss_of_life_h, rel=0.005)
    assert a[end].loss_of_life_h > 0


def test_one_long_interval_equals_many_short_ones() -> None:
    state = start(DIST, 0.3, 15.0, T0)
    once = advance(DIST, state, 1.1, 25.0, T0 + 90 * MIN)
    stepped = run(DIST, state, 1.1, 25.0, T0 + 90 * MIN, 1000)
    assert once.top_oil == pytest.approx(stepped.top_oil, abs=0.02)
    assert once.hot_spot == pytest.approx(stepped.hot_spot, abs=0.02)


@pytest.mark.parametrize("hot_spot,expected", [(98.0, 1.0), (104.0, 2.0), (110.0, 4.0), (92.0, 0.5), (86.0, 0.25)])
def test_ageing_rate_of_non_upgraded_paper_doubles_every_6_kelvin(hot_spot: float, expected: float) -> None:
    assert ageing_rate(hot_spot, "non_upgraded") == pytest.approx(expected)


# The standard's table of relative ageing rates for upgraded paper (rounded there to 2 significant digits).
@pytest.mark.parametrize("hot_spot,expected", [(110.0, 1.0), (98.0, 0.3), (104.0, 0.5), (116.0, 1.8), (122.0, 3.3)])
def test_ageing_rate_of_upgraded_paper(hot_spot: float, expected: float) -> None:
    assert ageing_rate(hot_spot, "upgraded") == pytest.approx(expected, abs=0.05)
    assert ageing_rate(110.0, "upgraded") == pytest.approx(1.0, abs=1e-12)


def test_loss_of_life_is_the_integral_of_the_ageing_rate() -> None:
    # Rated load at 20 °C: θh = 98 °C, V = 1 — one day of normal ageing per day.
    state = run(DIST, start(DIST, 1.0, 20.0, T0), 1.0, 20.0, T0 + 24 * 60 * MIN, 60_000)
    assert state.loss_of_life_h == pytest.approx(24.0, rel=1e-6)
    # 6 K hotter ambient: twice as fast.
    hot = run(DIST, start(DIST, 1.0, 26.0, T0), 1.0, 26.0, T0 + 24 * 60 * MIN, 60_000)
    assert hot.loss_of_life_h == pytest.approx(48.0, rel=1e-6)


def test_a_gap_longer_than_max_gap_restarts_the_estimate_without_counting_ageing() -> None:
    state = run(DIST, start(DIST, 1.0, 20.0, T0), 1.0, 20.0, T0 + 60 * MIN, 60_000)
    later = advance(DIST, state, 0.5, 10.0, T0 + 60 * MIN + 7_200_000, max_gap_s=3600)
    assert (later.top_oil, later.hot_spot) == pytest.approx(steady_state(DIST, 0.5, 10.0))
    assert later.loss_of_life_h == state.loss_of_life_h and later.restarts == 1 and later.since_ms == T0
    within = advance(DIST, state, 0.5, 10.0, T0 + 60 * MIN + 1_800_000, max_gap_s=3600)
    assert within.restarts == 0 and within.loss_of_life_h > state.loss_of_life_h


def test_time_going_backwards_changes_nothing_and_state_round_trips_through_json() -> None:
    state = run(DIST, start(DIST, 0.7, 18.0, T0), 1.2, 18.0, T0 + 30 * MIN, MIN)
    assert advance(DIST, state, 2.0, 40.0, T0) is state
    assert ThermalState.from_json(state.to_json()) == state
    with pytest.raises(ValueError):
        ThermalState.from_json({**state.to_json(), "top_oil": float("nan")})


def test_params_reject_impossible_constants() -> None:
    with pytest.raises(ValueError, match="k21 must be at least 1"):
        ThermalParams(k21=0.5)
    with pytest.raises(ValueError, match="paper must be one of non_upgraded, upgraded"):
        ThermalParams(paper="kraft")


# --- exact integration, long gaps, the IEEE variant, the time-to-limit prediction ---------------------------------

IEEE = ThermalParams(model="ieee")


@pytest.mark.parametrize("params", [DIST, POWER, IEEE], ids=["iec-distribution", "iec-power", "ieee"])
def test_the_estimate_is_the_same_within_a_hundredth_of_a_kelvin_called_every_second_minute_or_half_hour(
        params: ThermalParams) -> None:
    end = T0 + 24 * 3_600_000

    def trajectory(step_ms: int) -> dict[int, ThermalState]:
        k, ambient = _profile(T0)
        state = start(params, k, ambient, T0)
        out = {}
        for t in range(T0 + step_ms, end + 1, step_ms):
            state = advance(params, state, k, ambient, t)
            k, ambient = _profile(t)            # the profile changes on whole hours: every pattern sees them
            if (t - T0) % 1_800_000 == 0:
                out[t] = state
        return out

    second, minute, half_hour = trajectory(1000), trajectory(60_000), trajectory(1_800_000)
    assert second.keys() == minute.keys() == half_hour.keys() and len(second) == 48
    for t in second:
        for other in (minute[t], half_hour[t]):
            assert abs(other.top_oil - second[t].top_oil) < 0.01, t
            assert abs(other.hot_spot - second[t].hot_spot) < 0.01, t
    assert half_hour[end].loss_of_life_h == pytest.approx(second[end].loss_of_life_h, rel=1e-4)
    # And the inputs did move the state: it is not flat.
    assert max(s.hot_spot for s in second.values()) - min(s.hot_spot for s in second.values()) > 20


def test_after_a_long_gap_the_estimate_continues_from_the_measured_top_oil() -> None:
    state = run(DIST, start(DIST, 1.0, 20.0, T0), 1.0, 20.0, T0 + 60 * MIN, MIN)
    later = advance(DIST, state, 0.5, 10.0, T0 + 60 * MIN + 7_200_000, max_gap_s=3600, measured_top_oil=47.5)
    assert later.top_oil == 47.5 and later.restarts == 1
    assert later.hot_spot - later.top_oil == pytest.approx(steady_state(DIST, 0.5, 10.0)[1]
                                                           - steady_state(DIST, 0.5, 10.0)[0])
    # From there it relaxes with the oil time constant, not from a jump to the steady state.
    after = advance(DIST, later, 0.5, 10.0, later.t_ms + 10 * MIN)
    assert 47.5 > after.top_oil > steady_state(DIST, 0.5, 10.0)[0]


def test_ieee_clause_7_step_from_no_load_to_rated_uses_the_rated_oil_time_constant() -> None:
    before = start(IEEE, 0.0, 20.0, T0)
    assert before.top_oil == pytest.approx(20.0 + IEEE.top_oil_rise * (1 / 6) ** 0.8)
    final_top, final_hot = steady_state(IEEE, 1.0, 20.0)
    assert (final_top, final_hot) == pytest.approx((75.0, 98.0))
    tau = IEEE.oil_time_constant_min
    initial_rise, ultimate_rise = before.top_oil - 20.0, final_top - 20.0
    a, b, n = ultimate_rise / 55.0, initial_rise / 55.0, IEEE.oil_exponent
    expected_tau = tau * (a - b) / (a ** (1 / n) - b ** (1 / n))          # clause 7, variable time constant
    assert expected_tau != pytest.approx(tau, rel=0.01)                    # it does vary with the step
    after = advance(IEEE, before, 1.0, 20.0, T0 + int(expected_tau * MIN))
    assert (after.top_oil - before.top_oil) / (final_top - before.top_oil) == pytest.approx(1 - math.exp(-1))
    # The hot-spot gradient follows with the winding time constant alone (no k21/k22 overshoot terms).
    assert after.dh2 == 0.0
    stepped = run(IEEE, before, 1.0, 20.0, T0 + int(expected_tau * MIN), 7_000)
    assert stepped.top_oil == pytest.approx(after.top_oil, abs=1e-6)


def test_ieee_with_oil_exponent_one_is_a_plain_exponential() -> None:
    linear = ThermalParams(model="ieee", oil_exponent=1.0)
    before = start(linear, 0.3, 20.0, T0)
    final_top, _ = steady_state(linear, 1.2, 20.0)
    after = advance(linear, before, 1.2, 20.0, T0 + 180 * MIN)
    assert (after.top_oil - before.top_oil) / (final_top - before.top_oil) == pytest.approx(1 - math.exp(-1))


@pytest.mark.parametrize("params", [DIST, POWER, IEEE], ids=["iec-distribution", "iec-power", "ieee"])
def test_after_a_load_step_the_predicted_time_to_the_hot_spot_limit_is_when_the_model_gets_there(
        params: ThermalParams) -> None:
    state = start(params, 0.6, 30.0, T0)
    limit = 120.0
    assert steady_state(params, 1.5, 30.0)[1] > limit                       # the step will exceed the limit
    predicted_s = time_to_limit(params, state, 1.5, 30.0, limit)
    assert predicted_s is not None and predicted_s > 600
    t, reached_ms = T0, None
    while reached_ms is None and t < T0 + 48 * 3_600_000:
        t += 10_000
        state = advance(params, state, 1.5, 30.0, t)
        if state.hot_spot >= limit:
            reached_ms = t - T0
    assert reached_ms is not None
    assert predicted_s == pytest.approx(reached_ms / 1000.0, rel=0.05)
    assert abs(predicted_s - reached_ms / 1000.0) <= 10.0                  # in fact to the 10 s step of the run


def test_time_to_limit_is_zero_above_the_limit_and_none_when_it_is_never_reached() -> None:
    cool = start(DIST, 0.5, 20.0, T0)
    assert time_to_limit(DIST, cool, 0.5, 20.0, 120.0) is None
    assert time_to_limit(DIST, cool, 0.5, 20.0, cool.hot_spot - 1) == 0.0
    hot = start(DIST, 1.3, 30.0, T0)
    assert time_to_limit(DIST, hot, 1.3, 30.0, steady_state(DIST, 1.3, 30.0)[1] + 0.01) is None


def test_state_from_an_older_cache_without_segment_fields_loads() -> None:
    state = start(DIST, 0.7, 18.0, T0)
    old = {k: v for k, v in state.to_json().items() if not k.startswith("segment_")}
    assert ThermalState.from_json(old).top_oil == state.top_oil
