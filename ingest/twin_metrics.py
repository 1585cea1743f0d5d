"""Metrics derived from every site's retained twins, served by the twin API on its metrics port.

The twins are the one path by which a remote site's state reaches the cloud
without being scraped, so the alerts on thermal state, PLC faults and point
quality read these (``components/alerts.py``):

=============================================================  ===========================================
``ems_twin_point_quality{site,asset,point,quality}``            1 for the point's current quality
``ems_twin_fault_active{site,asset,point,code,severity,text}``  1 while the point shows a PLC fault code
``ems_twin_thermal_hot_spot_celsius{site,asset}``               model hot-spot (also top_oil, ageing_rate,
                                                                 top_oil_residual_kelvin, hot_spot_limit_celsius)
``ems_twin_thermal_time_to_hot_spot_limit_seconds{site,asset}`` predicted time to the limit; +Inf: never
``ems_twin_rejected_total{reason}``                             twins refused as invalid
=============================================================  ===========================================

Twins are hostile input that the store already bounded (size, depth, 256 assets a
site); here every label value is checked again for what it becomes: qualities from
the contract's list, fault codes, texts and severities as ``edge_agent.faults``
allows, numbers finite. Anything else is left out, never raised: one bad twin
must not break a scrape.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ems_contract.telemetry import QUALITIES, valid_id

__all__ = ["TwinCollector"]

_THERMAL = (("top_oil_degC", "top_oil_celsius", "Model top-oil temperature."),
            ("hot_spot_degC", "hot_spot_celsius", "Model winding hot-spot temperature."),
            ("ageing_rate", "ageing_rate", "Relative ageing rate of the insulation (1 = normal)."),
            ("top_oil_residual_K", "top_oil_residual_kelvin", "Measured minus model top-oil."),
            ("hot_spot_limit_degC", "hot_spot_limit_celsius", "The asset's hot-spot limit."),
            ("loss_of_life_h", "loss_of_life_hours", "Insulation loss of life accumulated by the model, hours."),
            ("load_factor", "load_factor", "Load factor K (load current / rated current) the model runs on."))
_SEVERITIES = ("critical", "warning", "info")
_FORBIDDEN = frozenset('"\\\'`{}')


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _label_text(value: Any, limit: int) -> bool:
    return (isinstance(value, str) and 1 <= len(value) <= limit and value.isprintable()
            and not _FORBIDDEN.intersection(value))


class TwinCollector(Collector):
    """Collects from ``twins()`` — an iterable of twin documents (``encode_twin``'s shape) — at each scrape."""

    def __init__(self, twins: Callable[[], Iterable[dict[str, Any]]], rejected: Callable[[], dict[str, int]]) -> None:
        self.twins = twins
        self.rejected = rejected

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        quality = GaugeMetricFamily("ems_twin_point_quality", "1 for the quality of the point's latest reading.",
                                    labels=["site", "asset", "point", "quality"])
        faults = GaugeMetricFamily("ems_twin_fault_active", "1 while a point shows a PLC fault code.",
                                   labels=["site", "asset", "point", "code", "severity", "text"])
        thermal = {key: GaugeMetricFamily(f"ems_twin_thermal_{name}", text, labels=["site", "asset"])
                   for key, name, text in _THERMAL}
        to_limit = GaugeMetricFamily("ems_twin_thermal_time_to_hot_spot_limit_seconds",
                                     "Predicted time until the hot-spot limit at the present load and ambient "
                                     "(+Inf: not reached).", labels=["site", "asset"])
        for doc in self.twins():
            site, asset = doc.get("site"), doc.get("asset")
            if not (isinstance(site, str) and isinstance(asset, str) and valid_id(site) and valid_id(asset)):
                continue
            for point, state in (doc.get("points") or {}).items():
                if not (isinstance(point, str) and valid_id(point) and isinstance(state, dict)):
                    continue
                if state.get("quality") in QUALITIES:
                    quality.add_metric([site, asset, point, state["quality"]], 1.0)
                fault = state.get("fault")
                if isinstance(fault, dict) and isinstance(fault.get("code"), str) and valid_id(fault["code"]) \
                        and len(fault["code"]) <= 16 and fault.get("severity") in _SEVERITIES \
                        and _label_text(fault.get("text"), 80):
                    faults.add_metric([site, asset, point, fault["code"], fault["severity"], fault["text"]], 1.0)
            block = doc.get("thermal")
            if isinstance(block, dict):
                for key, _, _ in _THERMAL:
                    value = _number(block.get(key))
                    if value is not None:
                        thermal[key].add_metric([site, asset], value)
                if "time_to_hot_spot_limit_s" in block:
                    raw = block["time_to_hot_spot_limit_s"]
                    seconds = math.inf if raw is None else _number(raw)
                    if seconds is not None and seconds >= 0:
                        to_limit.add_metric([site, asset], seconds)
        rejected = CounterMetricFamily("ems_twin_rejected", "Twin messages refused as invalid, by reason.",
                                       labels=["reason"])
        for reason, count in sorted(self.rejected().items()):
            rejected.add_metric([reason], float(count))
        yield quality
        yield faults
        yield from thermal.values()
        yield to_limit
        yield rejected
