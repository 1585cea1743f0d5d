"""Transformer thermal model: top-oil and hot-spot temperature, insulation ageing, time to the hot-spot limit.

Pure functions over frozen dataclasses; no I/O, no clock. ``start()`` puts a
transformer in the steady state of its inputs, ``advance()`` moves the state
to a later time with the inputs held over the interval (readings are reported
by exception, so the last reported value holds until the next one).

Two models (``ThermalParams.model``), both with load factor ``K`` (load ÷
rated load) and ambient ``θa``:

``iec`` — IEC 60076-7:2018, 8.2, the differential equations::

    k11·τo · dθo/dt   = ((1 + R·K²)/(1 + R))^x · Δθor − (θo − θa)
    k22·τw · dΔθh1/dt = k21 · Hgr · K^y − Δθh1
    τo/k22 · dΔθh2/dt = (k21 − 1) · Hgr · K^y − Δθh2
    θh = θo + Δθh1 − Δθh2

With K and θa held over an interval each equation is linear and first order,
so ``advance()`` uses its exact solution, ``u(t) = u∞ + (u0 − u∞)·e^(−t/T)``:
the estimate does not depend on how the interval is cut (1 s polls, 60 s
heartbeats and one 30-minute step give the same temperatures to rounding).
The two hot-spot terms reproduce the overshoot of the winding gradient after a
load step (oil flow lags the load).

``ieee`` — IEEE C57.91-2011 clause 7 (top-oil rise with a variable oil time
constant)::

    Δθo(t) = Δθo,u + (Δθo,i − Δθo,u)·e^(−t/τo)       Δθo,u = Δθor·((1 + R·K²)/(1 + R))^n
    τo     = τo,R · (Δθo,u/Δθor − Δθo,i/Δθor) / ((Δθo,u/Δθor)^(1/n) − (Δθo,i/Δθor)^(1/n))
    Δθh(t) = Δθh,u + (Δθh,i − Δθh,u)·e^(−t/τw)       Δθh,u = Hgr·K^(2m)
    θh = θa + Δθo + Δθh

τo depends on the initial rise Δθo,i of the present load, so the state keeps
the rise at the last change of inputs (``segment_rise``) and the time since
(``segment_ms``): while inputs stay the same the trajectory is the clause's
closed form however often it is evaluated. Symbols map onto ``ThermalParams``:
n = ``oil_exponent``, 2m = ``winding_exponent``, τo,R = ``oil_time_constant_min``,
τw = ``winding_time_constant_min``; k11, k21, k22 are not used. A new
segment starts from the present top-oil (minus the new ambient), so an ambient
step does not jump the oil temperature.

Ageing (IEC 60076-7:2018, clause 6: relative ageing rate and loss of life)::

    non-upgraded paper:  V = 2^((θh − 98)/6)                       (V = 1 at 98 °C, doubles every 6 K)
    upgraded paper:      V = exp(15000/(110 + 273) − 15000/(θh + 273))   (V = 1 at 110 °C)
    loss of life         L = ∫ V dt   (hours of "normal" ageing)

Bounds: steady-state temperatures and hot-spot rises are held within
±``TEMPERATURE_BOUND_DEGC`` (1000 °C), and the ageing rate is evaluated at a
hot-spot held within ``AGEING_RANGE_DEGC`` (-100..300 °C). Both lie far outside
a working transformer's range (the highest hot-spot limit sensors.conf accepts
is 200 °C, and the ageing equations are not meant for temperatures at which the
insulation is being destroyed), so no estimate of a transformer in service
changes; they keep every state ``advance()`` can reach finite and bounded
however extreme the inputs the agent accepts (K up to ``MAX_LOAD_FACTOR``, a
power transformer's largest configured gradients), so the state always
survives a save and load of the twin cache.

The integral has no closed form; ``advance()`` integrates the exact trajectory
with 3-point Gauss–Legendre over sub-intervals of at most
``ThermalParams.max_step_min``, and after 20 of the longest time constants
(where the trajectory is its steady state to 1e-9) at the steady-state rate.

Defaults (``ThermalParams()``): a distribution transformer, ONAN, from the
standard's table of recommended thermal characteristics ("distribution
transformers, ONAN": x = 0.8, y = 1.6, k11 = 1.0, k21 = 1.0, k22 = 2.0,
τo = 180 min, τw = 4 min; checked against two independent implementations of
the standard, the table numbers not against the 2018 text — verify them in a
licensed copy). ``PRESETS`` also holds the table's "medium and large power
transformers" ONAN and ONAF rows. Δθor, Hgr and R belong to one transformer
(its heat-run test report): the defaults 55 K, 23 K and 5 are typical
distribution values giving the reference hot-spot of 98 °C at rated load and
20 °C ambient. ``HOT_SPOT_LIMIT_DEGC`` is IEC 60076-7's hot-spot limit for
normal cyclic loading (120 °C).

Long gaps: when more than ``max_gap_s`` passed since the last update,
``advance()`` does not extrapolate — it restarts at the new time, from the
measured top-oil when the caller passes one (``measured_top_oil``) and
otherwise from the steady state of the inputs; it keeps the loss of life
accumulated so far, adds no ageing for the gap, and counts the restart in
``ThermalState.restarts``.

``time_to_limit()`` runs the exact trajectory forward at the present inputs
and returns the seconds until the hot-spot first reaches a limit (0 when it is
there already, None when it never does).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any, Callable, Mapping

__all__ = [
    "PAPERS", "SIZES", "COOLING_MODES", "MODELS", "PRESETS", "MAX_LOAD_FACTOR", "HOT_SPOT_LIMIT_DEGC",
    "ThermalParams", "ThermalState", "steady_state", "start", "advance", "ageing_rate", "time_to_limit",
    "with_top_oil", "TEMPERATURE_BOUND_DEGC", "AGEING_RANGE_DEGC",
]

PAPERS = ("non_upgraded", "upgraded")
SIZES = ("distribution", "power")
COOLING_MODES = ("ONAN", "ONAF")
MODELS = ("iec", "ieee")
#: Load factors above this are treated as a bad reading, not a load (a protection trips long before).
MAX_LOAD_FACTOR = 5.0
#: IEC 60076-7 hot-spot limit for normal cyclic loading, °C.
HOT_SPOT_LIMIT_DEGC = 120.0
#: Steady-state temperatures and rises are held within ± this, °C (module docstring, "Bounds").
TEMPERATURE_BOUND_DEGC = 1000.0
#: The ageing rate of a hot-spot outside this range is the rate at its nearer end, °C.
AGEING_RANGE_DEGC = (-100.0, 300.0)
_SETTLED = 20.0          # time constants after which e^(-t/T) < 2.1e-9: the trajectory is its steady state
_GL_NODES = ((0.5 - math.sqrt(15) / 10, 5 / 18), (0.5, 8 / 18), (0.5 + math.sqrt(15) / 10, 5 / 18))


@dataclass(frozen=True)
class ThermalParams:
    """Thermal characteristics of one transformer (symbols of IEC 60076-7).

    ``top_oil_rise`` Δθor (K) at rated load, ``hot_spot_gradient`` Hgr (K,
    hot-spot-to-top-oil at rated load), ``loss_ratio`` R (load losses at rated
    load ÷ no-load losses), ``oil_exponent`` x, ``winding_exponent`` y,
    ``k11``/``k21``/``k22`` model constants, ``oil_time_constant_min`` τo and
    ``winding_time_constant_min`` τw (minutes), ``paper`` the insulation
    ("non_upgraded" or "upgraded"), ``model`` "iec" (IEC 60076-7, default) or
    "ieee" (IEEE C57.91 clause 7). Defaults: distribution transformer, ONAN
    (see the module docstring for sources; Δθor, Hgr and R are typical values).
    """

    top_oil_rise: float = 55.0
    hot_spot_gradient: float = 23.0
    loss_ratio: float = 5.0
    oil_exponent: float = 0.8
    winding_exponent: float = 1.6
    k11: float = 1.0
    k21: float = 1.0
    k22: float = 2.0
    oil_time_constant_min: float = 180.0
    winding_time_constant_min: float = 4.0
    paper: str = "non_upgraded"
    model: str = "iec"

    def __post_init__(self) -> None:
        if self.paper not in PAPERS:
            raise ValueError(f"paper must be one of {', '.join(PAPERS)} (got {self.paper!r})")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)} (got {self.model!r})")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("paper", "model") and not (
                    isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{f.name} must be a finite number >= 0 (got {value!r})")
        if self.k21 < 1:
            raise ValueError(f"k21 must be at least 1 (got {self.k21!r})")
        for name in ("k11", "k22", "oil_time_constant_min", "winding_time_constant_min",
                     "oil_exponent", "winding_exponent"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be greater than 0 (got {getattr(self, name)!r})")

    @property
    def time_constants_min(self) -> tuple[float, float, float]:
        """The IEC model's (k11·τo, k22·τw, τo/k22), minutes."""
        tau_o, tau_w = self.oil_time_constant_min, self.winding_time_constant_min
        return self.k11 * tau_o, self.k22 * tau_w, tau_o / self.k22

    @property
    def max_step_min(self) -> float:
        """Longest quadrature sub-interval of the ageing integral, minutes (1/20 of the shortest time constant)."""
        return min(*self.time_constants_min, self.winding_time_constant_min) / 20.0


#: Rows of the standard's table of recommended thermal characteristics, by (size, cooling).
#: Δθor, Hgr and R are ``None`` for power transformers: take them from the heat-run test report.
PRESETS: Mapping[tuple[str, str], Mapping[str, float | None]] = {
    ("distribution", "ONAN"): dict(oil_exponent=0.8, winding_exponent=1.6, k11=1.0, k21=1.0, k22=2.0,
                                   oil_time_constant_min=180.0, winding_time_constant_min=4.0,
                                   top_oil_rise=55.0, hot_spot_gradient=23.0, loss_ratio=5.0),
    ("power", "ONAN"): dict(oil_exponent=0.8, winding_exponent=1.3, k11=0.5, k21=2.0, k22=2.0,
                            oil_time_constant_min=210.0, winding_time_constant_min=10.0,
                            top_oil_rise=None, hot_spot_gradient=None, loss_ratio=None),
    ("power", "ONAF"): dict(oil_exponent=0.8, winding_exponent=1.3, k11=0.5, k21=2.0, k22=2.0,
                            oil_time_constant_min=150.0, winding_time_constant_min=7.0,
                            top_oil_rise=None, hot_spot_gradient=None, loss_ratio=None),
}


@dataclass(frozen=True)
class ThermalState:
    """The model's state at ``t_ms`` (ms since the epoch).

    ``top_oil`` θo (°C), ``dh1``/``dh2`` the two hot-spot rise terms (K; the
    IEEE model uses ``dh1`` only), ``loss_of_life_h`` hours of normal ageing
    accumulated since ``since_ms``, ``restarts`` how many gaps longer than
    ``max_gap_s`` restarted the estimate. ``segment_*`` (IEEE model): the
    inputs held since the last change, the top-oil rise at that change and the
    time since it.
    """

    t_ms: int
    top_oil: float
    dh1: float
    dh2: float
    loss_of_life_h: float
    since_ms: int
    restarts: int = 0
    segment_k: float = 0.0
    segment_ambient: float = 0.0
    segment_rise: float = 0.0
    segment_ms: int = 0

    @property
    def hot_spot(self) -> float:
        """Winding hot-spot temperature θh (°C)."""
        return self.top_oil + self.dh1 - self.dh2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "ThermalState":
        """Rebuild a state from ``to_json()`` (fields with defaults may be missing: older caches);
        ValueError/TypeError/KeyError on anything else."""
        ints = {"t_ms", "since_ms", "restarts", "segment_ms"}
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw and f.default is not MISSING:
                continue
            value = raw[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"thermal state {f.name} is not a finite number: {value!r}")
            values[f.name] = int(value) if f.name in ints else float(value)
        return cls(**values)


def _ultimate(params: ThermalParams, k: float, ambient: float) -> tuple[float, float, float]:
    """Steady-state (top-oil, Δθh1, Δθh2) for load factor ``k`` and ambient ``ambient``, each within
    ±``TEMPERATURE_BOUND_DEGC``."""
    r, bound = params.loss_ratio, TEMPERATURE_BOUND_DEGC
    top_oil = ambient + params.top_oil_rise * ((1 + r * k * k) / (1 + r)) ** params.oil_exponent
    top_oil = min(max(top_oil, -bound), bound)
    gradient = min(params.hot_spot_gradient * k ** params.winding_exponent, bound / params.k21)
    if params.model == "ieee":
        return top_oil, gradient, 0.0
    return top_oil, params.k21 * gradient, (params.k21 - 1) * gradient


def steady_state(params: ThermalParams, k: float, ambient: float) -> tuple[float, float]:
    """(top-oil, hot-spot) in °C after a long time at load factor ``k`` and ambient ``ambient``."""
    top_oil, dh1, dh2 = _ultimate(params, abs(k), ambient)
    return top_oil, top_oil + dh1 - dh2


def ageing_rate(hot_spot: float, paper: str = "non_upgraded") -> float:
    """Relative ageing rate V at hot-spot ``hot_spot`` °C (1.0 at 98 °C non-upgraded, 110 °C upgraded);
    a hot-spot outside ``AGEING_RANGE_DEGC`` counts as the nearer end of it."""
    low, high = AGEING_RANGE_DEGC
    hot_spot = min(max(hot_spot, low), high)
    if paper == "non_upgraded":
        return 2.0 ** ((hot_spot - 98.0) / 6.0)
    if paper == "upgraded":
        return math.exp(15000.0 / (110.0 + 273.0) - 15000.0 / (hot_spot + 273.0))
    raise ValueError(f"paper must be one of {', '.join(PAPERS)} (got {paper!r})")


def _ieee_oil_tau(params: ThermalParams, initial_rise: float, ultimate_rise: float) -> float:
    """IEEE C57.91 clause 7 variable top-oil time constant (minutes) for a step from ``initial_rise``."""
    tau_r, n, rated = params.oil_time_constant_min, params.oil_exponent, params.top_oil_rise
    if rated <= 0 or n == 1.0:
        return tau_r
    a, b = max(ultimate_rise, 0.0) / rated, max(initial_rise, 0.0) / rated
    if abs(a - b) < 1e-9:                      # the 0/0 limit: d(x)/d(x^(1/n)) = n·x^(1 − 1/n)
        return tau_r * n * a ** (1 - 1 / n) if a > 1e-9 else tau_r
    return tau_r * (a - b) / (a ** (1 / n) - b ** (1 / n))


def _trajectory(params: ThermalParams, state: ThermalState, k: float,
                ambient: float) -> tuple[Callable[[float], tuple[float, float, float]], float, ThermalState]:
    """The exact trajectory at held inputs: (f(minutes) → (top_oil, dh1, dh2), longest time constant, state).

    The returned state is ``state`` with its IEEE segment moved to these inputs when they changed.
    """
    k = abs(k)
    top_u, dh1_u, dh2_u = _ultimate(params, k, ambient)
    if params.model == "ieee":
        if (state.segment_k, state.segment_ambient) != (k, ambient):
            state = replace(state, segment_k=k, segment_ambient=ambient, segment_rise=state.top_oil - ambient,
                            segment_ms=0)
        rise_u, rise_i = top_u - ambient, state.segment_rise
        tau_o = _ieee_oil_tau(params, rise_i, rise_u)
        tau_w = params.winding_time_constant_min
        elapsed = state.segment_ms / 60_000.0
        dh1_0 = state.dh1

        def ieee(t_min: float) -> tuple[float, float, float]:
            rise = rise_u + (rise_i - rise_u) * math.exp(-(elapsed + t_min) / tau_o)
            return ambient + rise, dh1_u + (dh1_0 - dh1_u) * math.exp(-t_min / tau_w), 0.0
        return ieee, max(tau_o, tau_w), state
    a, b, c = params.time_constants_min
    o0, h10, h20 = state.top_oil, state.dh1, state.dh2

    def iec(t_min: float) -> tuple[float, float, float]:
        return (top_u + (o0 - top_u) * math.exp(-t_min / a), dh1_u + (h10 - dh1_u) * math.exp(-t_min / b),
                dh2_u + (h20 - dh2_u) * math.exp(-t_min / c))
    return iec, max(a, b, c), state


def start(params: ThermalParams, k: float, ambient: float, t_ms: int, *, measured_top_oil: float | None = None,
          loss_of_life_h: float = 0.0, since_ms: int | None = None, restarts: int = 0) -> ThermalState:
    """A state in the steady state of (``k``, ``ambient``) at ``t_ms``; loss of life counted from ``since_ms``.

    With ``measured_top_oil`` the top-oil state starts from that measurement instead of the
    steady state: a transformer is rarely in equilibrium when its agent starts, and starting
    from the steady state would show a residual that is only the model's own start-up error.
    """
    top_oil, dh1, dh2 = _ultimate(params, abs(k), ambient)
    if measured_top_oil is not None:
        top_oil = measured_top_oil
    return ThermalState(t_ms=int(t_ms), top_oil=top_oil, dh1=dh1, dh2=dh2, loss_of_life_h=loss_of_life_h,
                        since_ms=int(t_ms) if since_ms is None else since_ms, restarts=restarts,
                        segment_k=abs(k), segment_ambient=ambient, segment_rise=top_oil - ambient, segment_ms=0)


def with_top_oil(params: ThermalParams, state: ThermalState, top_oil: float) -> ThermalState:
    """``state`` with its top-oil set to a measurement (the hot-spot terms kept); a new IEEE segment starts."""
    return replace(state, top_oil=top_oil, segment_rise=top_oil - state.segment_ambient, segment_ms=0)


def advance(params: ThermalParams, state: ThermalState, k: float, ambient: float, t_ms: int,
            *, max_gap_s: float | None = None, measured_top_oil: float | None = None) -> ThermalState:
    """The state at ``t_ms``, with load factor ``k`` and ambient ``ambient`` held since ``state.t_ms``.

    A ``t_ms`` not after ``state.t_ms`` returns ``state`` unchanged. More than
    ``max_gap_s`` (None: no limit) after it, the estimate restarts at ``t_ms``
    from ``measured_top_oil`` when given, else in the steady state (module docstring).
    """
    dt_ms = int(t_ms) - state.t_ms
    if dt_ms <= 0:
        return state
    if max_gap_s is not None and dt_ms > max_gap_s * 1000.0:
        return start(params, k, ambient, t_ms, measured_top_oil=measured_top_oil,
                     loss_of_life_h=state.loss_of_life_h, since_ms=state.since_ms, restarts=state.restarts + 1)
    path, longest, state = _trajectory(params, state, k, ambient)
    total = dt_ms / 60_000.0
    transient = min(total, _SETTLED * longest)
    steps = max(1, math.ceil(transient / params.max_step_min))
    h = transient / steps
    ageing_min = 0.0
    for i in range(steps):
        for node, weight in _GL_NODES:
            top_oil, dh1, dh2 = path((i + node) * h)
            ageing_min += weight * h * ageing_rate(top_oil + dh1 - dh2, params.paper)
    top_oil, dh1, dh2 = path(total)
    ageing_min += (total - transient) * ageing_rate(top_oil + dh1 - dh2, params.paper)
    return replace(state, t_ms=int(t_ms), top_oil=top_oil, dh1=dh1, dh2=dh2,
                   loss_of_life_h=state.loss_of_life_h + ageing_min / 60.0, segment_ms=state.segment_ms + dt_ms)


def time_to_limit(params: ThermalParams, state: ThermalState, k: float, ambient: float,
                  limit: float = HOT_SPOT_LIMIT_DEGC) -> float | None:
    """Seconds until the hot-spot first reaches ``limit`` °C with ``k`` and ``ambient`` held from ``state``.

    0.0 when it is at or above the limit now; None when the trajectory never
    reaches it (it settles below, including any overshoot on the way). Exact
    to about a second: the trajectory is scanned in steps of a quarter of the
    shortest time constant, then the crossing is bisected.
    """
    if state.hot_spot >= limit:
        return 0.0
    path, longest, _ = _trajectory(params, state, k, ambient)

    def hot(t_min: float) -> float:
        top_oil, dh1, dh2 = path(t_min)
        return top_oil + dh1 - dh2

    step = params.max_step_min * 5.0
    horizon = _SETTLED * longest
    low, t = 0.0, step
    while True:
        if hot(t) >= limit:
            break
        if t >= horizon:
            return None
        low, t = t, min(t + step, horizon)
    high = t
    while (high - low) * 60.0 > 0.5:
        mid = (low + high) / 2
        low, high = (low, mid) if hot(mid) >= limit else (mid, high)
    return high * 60.0
