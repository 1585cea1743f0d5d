"""The twin cache (``twin.json``) read back at start-up is hostile until checked.

Hypothesis writes cache files that parse (the right version and site) but hold anything where the
points' states go; ``TwinStore.load`` either keeps the file's state or moves it aside and starts
empty (a cache, rebuilt from the next readings), and the twin keeps working after: new readings,
``changed()`` payloads, ``save()``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.batch import Reading
from edge_agent.config import ThermalAssetConfig
from edge_agent.thermal import ThermalParams
from edge_agent.twin import TwinStore

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=4), st.sampled_from([2**63, -2**63 - 1, "good", "stale", 5]))
_state = st.one_of(
    st.fixed_dictionaries({"value": st.one_of(st.floats(allow_nan=False), st.none(), _scalar), "unit": _scalar,
                           "quality": st.one_of(st.sampled_from(["good", "stale", "device_error"]), _scalar),
                           "ts_ms": st.one_of(st.integers(0, 2**50), _scalar)},
                          optional={"fault": _scalar, "x": _scalar}),
    st.dictionaries(st.sampled_from(["value", "unit", "quality", "ts_ms"]), _scalar, max_size=4),
    _scalar, st.lists(_scalar, max_size=2))
_assets = st.dictionaries(st.sampled_from(["tx1", "fm1", "", "bad asset"]),
                          st.one_of(st.dictionaries(st.sampled_from(["oil_temp", "load", ""]), _state, max_size=3),
                                    _scalar), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_assets, st.one_of(st.dictionaries(st.text(max_size=3), _scalar, max_size=2), _scalar))
def test_a_hostile_cache_is_kept_or_moved_aside_and_the_twin_keeps_working(assets: dict[str, Any],
                                                                          published: Any) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "twin.json"
        path.write_text(json.dumps({"v": 1, "site": "s1", "assets": assets, "published": published}))
        twin = TwinStore(path, site="s1", clock=lambda: 1234.0)
        twin.load()
        twin.update(Reading(seq=1, ts_ms=2**40, asset="tx1", point="oil_temp", value=60.0, unit="degC",
                            quality="good"))
        for asset, payload in twin.changed():
            assert json.loads(payload)["asset"] == asset
            twin.mark_published(asset, payload)
        twin.save()
        again = TwinStore(path, site="s1")
        again.load()
        assert again.state("tx1")["oil_temp"]["value"] == 60.0


def test_a_state_without_a_usable_time_moves_the_cache_aside_naming_the_field(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "twin.json"
    state = {"value": 1.0, "unit": "degC", "quality": "good", "ts_ms": "1000"}
    path.write_text(json.dumps({"v": 1, "site": "s1", "assets": {"tx1": {"oil_temp": state}}}))
    twin = TwinStore(path, site="s1", clock=lambda: 1234.0)
    with caplog.at_level(logging.WARNING, logger="edge_agent.twin"):
        twin.load()
    assert "asset tx1 point oil_temp: ts_ms must be an integer 0..2**63-1 (got '1000')" in caplog.text
    assert (tmp_path / "twin.json.corrupt-1234").exists() and twin.assets() == []


_TX1 = ThermalAssetConfig(asset="tx1", kind="transformer", rated_load=2.0, load_point="load",
                          ambient_point="ambient_temp", top_oil_point="oil_temp", params=ThermalParams())
_number = st.one_of(st.floats(allow_nan=False), st.integers(-2**70, 2**70), st.sampled_from([0, 1e308, -1e308]))
_thermal_state = st.fixed_dictionaries(
    {name: _number for name in ("t_ms", "top_oil", "dh1", "dh2", "loss_of_life_h", "since_ms")},
    optional={name: st.one_of(_number, _scalar) for name in ("restarts", "segment_k", "segment_ambient",
                                                             "segment_rise", "segment_ms")})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.fixed_dictionaries({"state": st.one_of(st.none(), _thermal_state, _scalar),
                                        "load_factor": st.one_of(_number, _scalar),
                                        "ambient": st.one_of(_number, _scalar)}), _scalar))
def test_a_hostile_thermal_state_is_kept_or_moved_aside_and_the_model_keeps_working(run: Any) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "twin.json"
        path.write_text(json.dumps({"v": 1, "site": "s1", "assets": {}, "thermal": {"tx1": run}}))
        twin = TwinStore(path, site="s1", thermal_assets=[_TX1], clock=lambda: 1234.0)
        twin.load()
        for k, (point, value) in enumerate([("load", 1.0), ("ambient_temp", 20.0), ("oil_temp", 50.0),
                                            ("load", 1.2)]):
            twin.update(Reading(seq=k, ts_ms=1_764_000_000_000 + k * 60_000, asset="tx1", point=point, value=value,
                                unit="", quality="good"))
        twin.changed()
        twin.save()
