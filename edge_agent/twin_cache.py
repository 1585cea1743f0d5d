"""The points' states of a twin cache file (``edge_agent.twin``), checked as they are read back.

The cache is this agent's own file, but what is read back from disk is hostile until checked: a
state missing ``ts_ms`` or holding a string there stopped the twin at the next reading of that point,
an asset with no points at the next publish. :func:`cached_assets` returns the states as the twin
keeps them — asset (a valid id) → point (a valid id) → ``{value, unit, quality, ts_ms}`` and,
while a fault code is active, ``fault`` — or raises ValueError naming the asset, the point and the
field; ``TwinStore.load`` then moves the file aside and starts empty.
"""

from __future__ import annotations

import math
from typing import Any

from ems_contract.config_file import shorten
from ems_contract.telemetry import MAX_INT64, QUALITIES, valid_id

__all__ = ["cached_assets"]

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
