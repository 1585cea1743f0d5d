"""Whatever the thermal model reaches from inputs ``take`` accepts survives a save and a load of the twin cache.

The restore check (``twin_cache.check_thermal_run``) must accept every state the agent writes: an
extreme but accepted load (K up to ``MAX_LOAD_FACTOR``) for hours, a power transformer's largest
configured gradients, any measured top-oil. A measured top-oil out of range is refused, never a crash,
and a bad thermal block costs only its own asset's model.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import ThermalAssetConfig
from edge_agent.thermal import MAX_LOAD_FACTOR, ThermalParams, steady_state
from edge_agent.twin import TwinStore
from ems_contract.telemetry import Reading

T0 = 1_764_000_000_000
MIN = 60_000
_DIST = ThermalParams()
_POWER_EXTREME = ThermalParams(top_oil_rise=150.0, hot_spot_gradient=100.0, loss_ratio=1000.0, oil_exponent=3.0,
                               winding_exponent=3.0, k21=10.0, paper="upgraded")


def _tx(params: ThermalParams, asset: str = "tx1") -> ThermalAssetConfig:
    return ThermalAssetConfig(asset=asset, kind="transformer", rated_load=2.0, load_point="load",
                              ambient_point="ambient_temp", top_oil_point="oil_temp", params=params)


def _reading(seq: int, ts_ms: int, point: str, value: float | None, asset: str = "tx1") -> Reading:
    return Reading(seq=seq, ts_ms=ts_ms, asset=asset, point=point, value=value, unit="", quality="good")


def _reload(path: Path, configs: list[ThermalAssetConfig]) -> TwinStore:
    twin = TwinStore(path, site="s1", thermal_assets=configs, clock=lambda: 1235.0)
    twin.load()
    return twin


def _assert_round_trip(twin: TwinStore, path: Path, configs: list[ThermalAssetConfig]) -> None:
    twin.save()
    again = _reload(path, configs)
    assert sorted(p.name for p in path.parent.iterdir()) == ["twin.json"]      # nothing moved aside
    for cfg in configs:
        assert again.thermal(cfg.asset) == twin.thermal(cfg.asset)
        assert again.state(cfg.asset) == twin.state(cfg.asset)


@pytest.mark.parametrize("params", [_DIST, _POWER_EXTREME], ids=["distribution", "extreme-power"])
@pytest.mark.parametrize("load", [5.0, 10.0])                                   # K = 2.5 and K = 5.0
def test_hours_at_an_extreme_accepted_load_survive_a_restart(tmp_path: Path, load: float,
                                                             params: ThermalParams, caplog) -> None:
    path, configs = tmp_path / "twin.json", [_tx(params)]
    twin = TwinStore(path, site="s1", thermal_assets=configs, clock=lambda: 1234.0)
    seq = 0
    for minute in range(0, 6 * 60, 5):
        for point, value in (("load", load), ("ambient_temp", 40.0), ("feeder_v", 230.0)):
            seq += 1
            twin.update(_reading(seq, T0 + minute * MIN, point, value))
    block = twin.thermal("tx1")
    assert block is not None and block["loss_of_life_h"] > 1e6                # years of ageing an hour
    with caplog.at_level(logging.WARNING):
        _assert_round_trip(twin, path, configs)
    assert "unreadable" not in caplog.text


@pytest.mark.parametrize("oil", [1200.0, -1200.0, 1e10, 1.7e308])
def test_an_absurd_measured_top_oil_is_refused_not_a_crash(tmp_path: Path, oil: float, caplog) -> None:
    path, configs = tmp_path / "twin.json", [_tx(_DIST)]
    twin = TwinStore(path, site="s1", thermal_assets=configs, clock=lambda: 1234.0)
    with caplog.at_level(logging.WARNING):
        for i, (point, value) in enumerate((("oil_temp", oil), ("load", 1.0), ("ambient_temp", 20.0),
                                            ("oil_temp", oil), ("load", 1.0))):
            twin.update(_reading(i + 1, T0 + i * MIN, point, value))
    assert f"oil_temp = {oil!r} is outside ±1000 degC" in caplog.text
    assert twin.thermal("tx1")["top_oil_degC"] == pytest.approx(steady_state(_DIST, 0.5, 20.0)[0], abs=0.01)
    _assert_round_trip(twin, path, configs)


def test_a_bad_thermal_block_drops_only_that_assets_model(tmp_path: Path, caplog) -> None:
    path, configs = tmp_path / "twin.json", [_tx(_DIST, "tx1"), _tx(_DIST, "tx2")]
    twin = TwinStore(path, site="s1", thermal_assets=configs, clock=lambda: 1234.0)
    for i, asset in enumerate(("tx1", "tx2")):
        for k, (point, value) in enumerate((("load", 1.0), ("ambient_temp", 20.0), ("load", 1.2))):
            twin.update(_reading(10 * i + k, T0 + k * MIN, point, value, asset))
    twin.save()
    body = json.loads(path.read_text())
    body["thermal"]["tx2"]["state"]["top_oil"] = 5000.0
    path.write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING):
        again = _reload(path, configs)
    assert "the thermal model of tx2 is unreadable (thermal state top_oil 5000.0 is not within ±1000 °C)" in caplog.text
    assert again.assets() == ["tx1", "tx2"] and again.state("tx2") == twin.state("tx2")
    assert again.thermal("tx1") == twin.thermal("tx1") and again.thermal("tx2") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twin.json"]


_value = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.floats(-1e4, 1e4),  # decode: finite
                   st.floats(0.0, 2.0 * MAX_LOAD_FACTOR + 1.0), st.sampled_from([1e10, -1e10, 1.7e308, 1000.0]))
_step = st.tuples(st.sampled_from(["load", "ambient_temp", "oil_temp", "feeder_v"]), _value,
                  st.integers(0, 40 * 86_400_000), st.sampled_from(["good", "good", "stale"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([_DIST, _POWER_EXTREME, ThermalParams(model="ieee")]), st.lists(_step, max_size=12))
def test_whatever_take_accepts_is_written_and_read_back(params: ThermalParams, steps: list) -> None:
    configs = [_tx(params)]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "twin.json"
        twin = TwinStore(path, site="s1", thermal_assets=configs, clock=lambda: 1234.0)
        ts = T0
        for seq, (point, value, dt_ms, quality) in enumerate(steps):
            ts += dt_ms
            twin.update(Reading(seq=seq, ts_ms=ts, asset="tx1", point=point, value=value, unit="", quality=quality))
        twin.changed()
        _assert_round_trip(twin, path, configs)
