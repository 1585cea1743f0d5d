"""The points' states of a twin cache file (``edge_agent.twin``), checked as they are read back.

The cache is this agent's own file, but what is read back from disk is hostile until checked: the
twin's hot path trusts every held state (it compares ``ts_ms``, publishes each asset's newest).
:func:`cached_assets` returns the states as the twin keeps them — asset (a valid id) → point (a
valid id) → ``{value, unit, quality, ts_ms}`` and, while a fault code is active, ``fault`` — or
raises ValueError naming the asset, the point and the field; ``TwinStore.load`` then moves the file aside and starts empty. :func:`check_thermal_run`
does the same for a thermal model's restored inputs and state, which the model's arithmetic
trusts (an input ``take`` would refuse can overflow it); it accepts every state the model can
reach, and ``TwinStore.load`` drops only the one asset's model when it refuses one.
"""

from __future__ import annotations

import math
from typing import Any

from edge_agent.thermal import TEMPERATURE_BOUND_DEGC
from ems_contract.config_file import shorten
from ems_contract.telemetry import MAX_INT64, QUALITIES, valid_id

__all__ = ["cached_assets", "check_thermal_run"]

_FAULT_TEXT = ("code", "text", "severity")


def cached_assets(raw: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The checked copy of a cache's ``assets``; ValueError saying which asset, point and field is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"assets must be an object (got {shorten(raw)})")
    assets: dict[str, dict[str, dict[str, Any]]] = {}
    for asset, points in raw.items():
        if not valid_id(asset):
            raise ValueError(f"asset {shorten(asset)} is not a valid id")
        if not isinstance(points, dict) or not points:
            raise ValueError(f"asset {asset}: points must be a non-empty object (got {shorten(points)})")
        assets[asset] = {}
        for point, state in points.items():
            if not valid_id(point):
                raise ValueError(f"asset {asset}: point {shorten(point)} is not a valid id")
            assets[asset][point] = _state(state, f"asset {asset} point {point}")
    return assets


def _state(state: Any, where: str) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise ValueError(f"{where}: state must be an object (got {shorten(state)})")
    value, unit, quality, ts_ms = (state.get(key) for key in ("value", "unit", "quality", "ts_ms"))
    if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
        raise ValueError(f"{where}: value must be a finite number or null (got {shorten(value)})")
    if type(unit) is not str:
        raise ValueError(f"{where}: unit must be a string (got {shorten(unit)})")
    if quality not in QUALITIES:
        raise ValueError(f"{where}: quality must be one of {', '.join(QUALITIES)} (got {shorten(quality)})")
    if type(ts_ms) is not int or not 0 <= ts_ms <= MAX_INT64:
        raise ValueError(f"{where}: ts_ms must be an integer 0..2**63-1 (got {shorten(ts_ms)})")
    checked = {"value": value, "unit": unit, "quality": quality, "ts_ms": ts_ms}
    if "fault" in state:
        fault = state["fault"]
        if not isinstance(fault, dict) or not all(type(fault.get(k)) is str for k in _FAULT_TEXT) \
                or type(fault.get("since_ms")) is not int:
            raise ValueError(f"{where}: fault must hold strings code, text, severity and an integer since_ms "
                             f"(got {shorten(fault)})")
        checked["fault"] = {key: fault[key] for key in (*_FAULT_TEXT, "since_ms")}
    return checked


def check_thermal_run(state: Any, load_factor: float | None, ambient: float | None, *, max_load_factor: float,
                      ambient_range: tuple[float, float], temperature_bound: float = TEMPERATURE_BOUND_DEGC) -> None:
    """ValueError unless a restored thermal model's inputs are ones ``take`` would accept (a load factor
    0..``max_load_factor``, an ambient in ``ambient_range``) and its state (a ``ThermalState``) is one
    ``thermal.advance`` can reach: times 0..2**63-1, temperatures and hot-spot rises within
    ±``temperature_bound`` °C (twice that for the IEEE segment's rise, a top-oil minus an ambient),
    any finite loss of life >= 0."""
    if load_factor is not None and not 0.0 <= load_factor <= max_load_factor:
        raise ValueError(f"thermal load_factor {shorten(load_factor)} is not 0..{max_load_factor:g}")
    low, high = ambient_range
    if ambient is not None and not low <= ambient <= high:
        raise ValueError(f"thermal ambient {shorten(ambient)} is not {low:g}..{high:g} °C")
    if state is None:
        return
    for name in ("t_ms", "since_ms", "segment_ms", "restarts"):
        if not 0 <= getattr(state, name) <= MAX_INT64:
            raise ValueError(f"thermal state {name} {shorten(getattr(state, name))} is not 0..2**63-1")
    for name, bound in (("top_oil", 1), ("dh1", 1), ("dh2", 1), ("segment_ambient", 1), ("segment_rise", 2)):
        if not -bound * temperature_bound <= getattr(state, name) <= bound * temperature_bound:
            raise ValueError(f"thermal state {name} {shorten(getattr(state, name))} is not within "
                             f"±{bound * temperature_bound:g} °C")
    if not 0.0 <= state.segment_k <= max_load_factor:
        raise ValueError(f"thermal state segment_k {shorten(state.segment_k)} is not 0..{max_load_factor:g}")
    if not 0.0 <= state.loss_of_life_h < math.inf:
        raise ValueError(f"thermal state loss_of_life_h {shorten(state.loss_of_life_h)} is not a finite number >= 0")
