"""Transformer thermal model (IEC 60076-7 loading guide): top-oil and hot-spot temperature, insulation ageing.

Pure functions over frozen dataclasses; no I/O, no clock. ``start()`` puts a
transformer in the steady state of its inputs, ``advance()`` moves the state
to a later time with the inputs held over the interval (readings are reported
by exception, so the last reported value holds until the next one).

The model is the difference-equation form of the standard's differential
equations (IEC 60076-7:2018, 8.2 "Top-oil and hot-spot temperatures at varying
ambient temperature and load conditions", differential equations solution),
with load factor ``K`` (load ÷ rated load) and ambient temperature ``θa``::

    Dθo   = Dt / (k11·τo)    · [((1 + R·K²)/(1 + R))^x · Δθor − (θo − θa)]
    DΔθh1 = Dt / (k22·τw)    · [k21 · Hgr · K^y − Δθh1]
    DΔθh2 = Dt / (τo / k22)  · [(k21 − 1) · Hgr · K^y − Δθh2]
    θh    = θo + Δθh1 − Δθh2

The two hot-spot terms reproduce the overshoot of the winding gradient after a
load step (oil flow lags the load). In steady state ``θo = θa + Δθor·((1+R·K²)/(1+R))^x``
and ``θh = θo + Hgr·K^y``. An explicit difference equation is only accurate
with steps well below its time constants, so ``advance()`` splits every
interval into equal sub-steps of at most ``ThermalParams.max_step_min``
(1/20 of the smallest of k11·τo, k22·τw and τo/k22): irregular sample
intervals — 1 s polls, 60 s heartbeats, a 20-minute outage — follow the same
trajectory.

Ageing (IEC 60076-7:2018, clause 6: relative ageing rate and loss of life)::

    non-upgraded paper:  V = 2^((θh − 98)/6)                       (V = 1 at 98 °C, doubles every 6 K)
    upgraded paper:      V = exp(15000/(110 + 273) − 15000/(θh + 273))   (V = 1 at 110 °C)
    loss of life         L = Σ V·Dt   (hours of "normal" ageing)

Defaults (``ThermalParams()``): a distribution transformer, ONAN, from the
standard's table of recommended thermal characteristics for the exponential
and difference equations ("distribution transformers, ONAN": x = 0.8,
y = 1.6, k11 = 1.0, k21 = 1.0, k22 = 2.0, τo = 180 min, τw = 4 min; these
values were checked against two independent implementations of the standard,
the clause, table and equation numbers were not checked against the 2018
text — verify them in a licensed copy).
``PRESETS`` also holds the table's "medium and large power transformers" ONAN
and ONAF rows. The rated top-oil rise Δθor, hot-spot-to-top-oil gradient Hgr
and loss ratio R are properties of one transformer (its heat-run test report),
not of the table: the defaults 55 K, 23 K and 5 are *typical* distribution
values, chosen so that rated load at 20 °C ambient gives the standard's
reference hot-spot of 98 °C (V = 1 for non-upgraded paper). Set them from the
test report; the power presets have none (``None``: the caller must supply them).

Long gaps: when more than ``max_gap_s`` passed since the last update,
``advance()`` does not extrapolate — it restarts from the steady state of the
inputs (the standard's own assumption at the start of a calculation), keeps
the loss of life accumulated so far, does not add ageing for the gap, and
counts the restart in ``ThermalState.restarts``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

__all__ = [
    "PAPERS", "SIZES", "COOLING_MODES", "PRESETS", "MAX_LOAD_FACTOR",
    "ThermalParams", "ThermalState", "steady_state", "start", "advance", "ageing_rate",
]

PAPERS = ("non_upgraded", "upgraded")
SIZES = ("distribution", "power")
COOLING_MODES = ("ONAN", "ONAF")
#: Load factors above this are treated as a bad reading, not a load (a protection trips long before).
MAX_LOAD_FACTOR = 5.0


@dataclass(frozen=True)
class ThermalParams:
    """Thermal characteristics of one transformer (symbols of IEC 60076-7).

    ``top_oil_rise`` Δθor (K) at rated load, ``hot_spot_gradient`` Hgr (K,
    hot-spot-to-top-oil at rated load), ``loss_ratio`` R (load losses at rated
    load ÷ no-load losses), ``oil_exponent`` x, ``winding_exponent`` y,
    ``k11``/``k21``/``k22`` model constants, ``oil_time_constant_min`` τo and
    ``winding_time_constant_min`` τw (minutes), ``paper`` the insulation
    ("non_upgraded" or "upgraded"). Defaults: distribution transformer, ONAN
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

    def __post_init__(self) -> None:
        if self.paper not in PAPERS:
            raise ValueError(f"paper must be one of {', '.join(PAPERS)} (got {self.paper!r})")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "paper" and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{f.name} must be a finite number >= 0 (got {value!r})")
        if self.k21 < 1:
            raise ValueError(f"k21 must be at least 1 (got {self.k21!r})")
        for name in ("k11", "k22", "oil_time_constant_min", "winding_time_constant_min",
                     "oil_exponent", "winding_exponent"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be greater than 0 (got {getattr(self, name)!r})")

    @property
    def max_step_min(self) -> float:
        """Longest sub-step of the difference equations, minutes (1/20 of the shortest time constant)."""
        tau_o, tau_w = self.oil_time_constant_min, self.winding_time_constant_min
        return min(self.k11 * tau_o, self.k22 * tau_w, tau_o / self.k22) / 20.0


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

    ``top_oil`` θo (°C), ``dh1``/``dh2`` the two hot-spot rise terms (K),
    ``loss_of_life_h`` hours of normal ageing accumulated since ``since_ms``,
    ``restarts`` how many gaps longer than ``max_gap_s`` restarted the estimate.
    """

    t_ms: int
    top_oil: float
    dh1: float
    dh2: float
    loss_of_life_h: float
    since_ms: int
    restarts: int = 0

    @property
    def hot_spot(self) -> float:
        """Winding hot-spot temperature θh (°C)."""
        return self.top_oil + self.dh1 - self.dh2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "ThermalState":
        """Rebuild a state from ``to_json()``; ValueError/TypeError/KeyError on anything else."""
        ints = {"t_ms", "since_ms", "restarts"}
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = raw[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"thermal state {f.name} is not a finite number: {value!r}")
            values[f.name] = int(value) if f.name in ints else float(value)
        return cls(**values)


def _ultimate(params: ThermalParams, k: float, ambient: float) -> tuple[float, float, float]:
    """Steady-state (top-oil, Δθh1, Δθh2) for load factor ``k`` and ambient ``ambient``."""
    r = params.loss_ratio
    top_oil = ambient + params.top_oil_rise * ((1 + r * k * k) / (1 + r)) ** params.oil_exponent
    gradient = params.hot_spot_gradient * k ** params.winding_exponent
    return top_oil, params.k21 * gradient, (params.k21 - 1) * gradient


def steady_state(params: ThermalParams, k: float, ambient: float) -> tuple[float, float]:
    """(top-oil, hot-spot) in °C after a long time at load factor ``k`` and ambient ``ambient``."""
    top_oil, dh1, dh2 = _ultimate(params, abs(k), ambient)
    return top_oil, top_oil + dh1 - dh2


def ageing_rate(hot_spot: float, paper: str = "non_upgraded") -> float:
    """Relative ageing rate V at hot-spot ``hot_spot`` °C (1.0 at 98 °C non-upgraded, 110 °C upgraded)."""
    if paper == "non_upgraded":
        return 2.0 ** ((hot_spot - 98.0) / 6.0)
    if paper == "upgraded":
        return math.exp(15000.0 / (110.0 + 273.0) - 15000.0 / (hot_spot + 273.0))
    raise ValueError(f"paper must be one of {', '.join(PAPERS)} (got {paper!r})")


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
                        since_ms=int(t_ms) if since_ms is None else since_ms, restarts=restarts)


def advance(params: ThermalParams, state: ThermalState, k: float, ambient: float, t_ms: int,
            *, max_gap_s: float | None = None) -> ThermalState:
    """The state at ``t_ms``, with load factor ``k`` and ambient ``ambient`` held since ``state.t_ms``.

    A ``t_ms`` not after ``state.t_ms`` returns ``state`` unchanged. More than
    ``max_gap_s`` (None: no limit) after it, the estimate restarts in the
    steady state (module docstring).
    """
    dt_ms = int(t_ms) - state.t_ms
    if dt_ms <= 0:
        return state
    if max_gap_s is not None and dt_ms > max_gap_s * 1000.0:
        return start(params, k, ambient, t_ms, loss_of_life_h=state.loss_of_life_h, since_ms=state.since_ms,
                     restarts=state.restarts + 1)
    top_target, dh1_target, dh2_target = _ultimate(params, abs(k), ambient)
    rise_target = top_target - ambient
    total_min = dt_ms / 60_000.0
    steps = max(1, math.ceil(total_min / params.max_step_min))
    h = total_min / steps
    oil_rate = h / (params.k11 * params.oil_time_constant_min)
    winding_rate = h / (params.k22 * params.winding_time_constant_min)
    oil_flow_rate = h / (params.oil_time_constant_min / params.k22)
    top_oil, dh1, dh2, loss = state.top_oil, state.dh1, state.dh2, state.loss_of_life_h
    for _ in range(steps):
        top_oil += oil_rate * (rise_target - (top_oil - ambient))
        dh1 += winding_rate * (dh1_target - dh1)
        dh2 += oil_flow_rate * (dh2_target - dh2)
        loss += ageing_rate(top_oil + dh1 - dh2, params.paper) * h / 60.0
    return ThermalState(t_ms=int(t_ms), top_oil=top_oil, dh1=dh1, dh2=dh2, loss_of_life_h=loss,
                        since_ms=state.since_ms, restarts=state.restarts)
