"""Digital twin: latest state per asset, atomic cache that survives restarts, publish only when changed."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.batch import ReadingBatch
from edge_agent.config import ThermalAssetConfig
from edge_agent.errors import PublishError
from ems_contract.telemetry import Reading
from edge_agent.thermal import ThermalParams, steady_state
from edge_agent.twin import TwinStore, run_twin


def _r(seq: int, point: str, value: float | None, ts_ms: int, asset: str = "tx1", quality: str = "good") -> Reading:
    return Reading(seq=seq, ts_ms=ts_ms, asset=asset, point=point, value=value, unit="degC", quality=quality)


def test_keeps_the_latest_state_and_ignores_older_readings(tmp_path: Path) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1")
    assert twin.update(_r(1, "oil_temp", 60.0, 1000))
    assert twin.update(_r(2, "oil_temp", 61.0, 2000))
    assert not twin.update(_r(3, "oil_temp", 59.0, 1500))      # a replayed, older reading
    assert not twin.update(_r(4, "oil_temp", 61.0, 2000))      # identical
    twin.update(_r(5, "load", 0.8, 2100))
    assert twin.state("tx1") == {
        "oil_temp": {"value": 61.0, "unit": "degC", "quality": "good", "ts_ms": 2000},
        "load": {"value": 0.8, "unit": "degC", "quality": "good", "ts_ms": 2100},
    }
    body = json.loads(twin.payload("tx1"))
    assert (body["site"], body["asset"], body["ts_ms"]) == ("s1", "tx1", 2100)


def test_cache_survives_a_restart_including_what_was_published(tmp_path: Path) -> None:
    path = tmp_path / "state" / "twin.json"
    twin = TwinStore(path, site="s1")
    twin.update(_r(1, "oil_temp", 60.0, 1000))
    twin.update(_r(2, "flow", 3.5, 1000, asset="fm1"))
    [(a1, p1), (a2, p2)] = twin.changed()
    twin.mark_published(a1, p1)
    twin.save()
    assert not list(path.parent.glob(".*tmp"))                   # the temporary file was renamed

    again = TwinStore(path, site="s1")
    again.load()
    assert again.state("tx1") == twin.state("tx1")
    assert [asset for asset, _ in again.changed()] == ["tx1"]    # fm1 was published, tx1 was not


def test_corrupt_cache_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "twin.json"
    path.write_text('{"v": 1, "site": "s1", "assets": ')
    twin = TwinStore(path, site="s1", clock=lambda: 1234.0)
    twin.load()
    assert twin.assets() == []
    assert (tmp_path / "twin.json.corrupt-1234").exists()


def test_run_twin_publishes_changed_assets_once_and_retries_failures(tmp_path: Path) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1")
    sent: list[tuple[str, bool]] = []
    fail = [True]

    async def publish(topic: str, payload: bytes, *, retain: bool) -> None:
        if fail[0]:
            fail[0] = False
            raise PublishError("not connected")
        sent.append((topic, retain))

    async def go() -> None:
        stop = asyncio.Event()
        twin.update(_r(1, "oil_temp", 60.0, 1000))
        task = asyncio.create_task(run_twin(twin, publish, interval_s=0.02, stop=stop))
        await asyncio.sleep(0.15)
        twin.update(_r(2, "oil_temp", 60.0, 1000))     # unchanged: nothing new to publish
        await asyncio.sleep(0.1)
        twin.update(_r(3, "oil_temp", 62.0, 3000))
        await asyncio.sleep(0.1)
        stop.set()
        await task

    asyncio.run(go())
    assert sent == [("ems/v1/s1/twin/tx1", True), ("ems/v1/s1/twin/tx1", True)]
    saved = json.loads((tmp_path / "twin.json").read_text())
    assert saved["assets"]["tx1"]["oil_temp"]["value"] == 62.0


# -- thermal assets --------------------------------------------------------------------------------

TX1 = ThermalAssetConfig(asset="tx1", kind="transformer", rated_load=2.0, load_point="load",
                         ambient_point="ambient_temp", top_oil_point="oil_temp", params=ThermalParams())
MIN = 60_000


def _p(seq: int, point: str, value: float | None, ts_ms: int, quality: str = "good") -> Reading:
    return Reading(seq=seq, ts_ms=ts_ms, asset="tx1", point=point, value=value, unit="", quality=quality)


def test_thermal_asset_twin_carries_the_thermal_block(tmp_path: Path) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1", thermal_assets=[TX1])
    twin.update(_p(1, "load", 2.0, 0))                                  # K = 1
    assert "thermal" not in json.loads(twin.payload("tx1"))           # no ambient yet: no estimate
    twin.update(_p(2, "ambient_temp", 20.0, 0))
    body = json.loads(twin.payload("tx1"))
    # No measured top-oil to start from: the estimate starts in the steady state (98 °C hot-spot, V = 1).
    assert body["thermal"] == {"load_factor": 1.0, "top_oil_degC": 75.0, "hot_spot_degC": 98.0, "ageing_rate": 1.0,
                               "loss_of_life_h": 0.0, "since_ms": 0, "updated_ms": 0, "restarts": 0,
                               "model": "iec", "hot_spot_limit_degC": 120.0, "time_to_hot_spot_limit_s": None}
    assert body["points"]["load"]["value"] == 2.0                       # the points are still there
    # Ten minutes at rated load and 20 °C: steady, V = 1 → ten minutes of normal ageing.
    twin.update(_p(3, "oil_temp", 74.0, 10 * MIN))
    thermal = json.loads(twin.payload("tx1"))["thermal"]
    assert (thermal["top_oil_degC"], thermal["updated_ms"], thermal["top_oil_residual_K"]) == (75.0, 10 * MIN, -1.0)
    assert thermal["loss_of_life_h"] == pytest.approx(10 / 60, abs=1e-4)


def test_a_measured_top_oil_is_the_starting_point(tmp_path: Path) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1", thermal_assets=[TX1])
    twin.update(_p(1, "oil_temp", 60.0, 0))                             # the transformer is cooler than steady
    twin.update(_p(2, "load", 2.0, 0))                                  # K = 1
    twin.update(_p(3, "ambient_temp", 20.0, 0))
    first = twin.thermal("tx1")
    assert first is not None and (first["top_oil_degC"], first["top_oil_residual_K"]) == (60.0, 0.0)
    # At constant K the top-oil estimate approaches its steady state (75 °C) exponentially with k11·τo.
    twin.update(_p(4, "oil_temp", 61.0, 10 * MIN))
    later = twin.thermal("tx1")
    tau_min = TX1.params.k11 * TX1.params.oil_time_constant_min
    expected = 75.0 - 15.0 * math.exp(-10.0 / tau_min)
    assert later is not None and later["top_oil_degC"] == pytest.approx(expected, abs=0.05)
    assert later["top_oil_residual_K"] == pytest.approx(61.0 - expected, abs=0.05)


def test_a_load_step_moves_the_twin_estimate_gradually(tmp_path: Path) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1", thermal_assets=[TX1])
    twin.update(_p(1, "load", 1.0, 0))                                  # K = 0.5
    twin.update(_p(2, "ambient_temp", 20.0, 0))
    start = twin.thermal("tx1")
    twin.update(_p(3, "load", 2.0, MIN))                                # step to K = 1 at one minute
    twin.update(_p(4, "ambient_temp", 20.0, 2 * MIN))                   # one minute later
    after = twin.thermal("tx1")
    final_top, final_hot = steady_state(TX1.params, 1.0, 20.0)
    assert start is not None and after is not None
    assert start["top_oil_degC"] < after["top_oil_degC"] < start["top_oil_degC"] + 0.01 * (final_top - start["top_oil_degC"])
    assert after["hot_spot_degC"] < final_hot - 5


def test_bad_inputs_are_not_used_and_the_model_waits(tmp_path: Path, caplog) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1", thermal_assets=[TX1])
    twin.update(_p(1, "load", None, 0, quality="device_error"))
    twin.update(_p(2, "ambient_temp", 20.0, 0))
    twin.update(_p(3, "load", 50.0, 1000))                                # K = 25: a bad reading, not a load
    assert twin.thermal("tx1") is None
    assert "load = 50.0 is a load factor above 5" in caplog.text
    twin.update(_p(4, "load", 2.0, 2000))
    assert twin.thermal("tx1")["hot_spot_degC"] == 98.0                   # type: ignore[index]
    twin.update(_p(5, "oil_temp", 70.0, 3000, quality="loop_fault"))
    assert "top_oil_residual_K" not in twin.thermal("tx1")                # type: ignore[operator]


def test_thermal_model_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "twin.json"
    twin = TwinStore(path, site="s1", thermal_assets=[TX1])
    twin.update(_p(1, "load", 1.0, 0))
    twin.update(_p(2, "ambient_temp", 20.0, 0))
    twin.update(_p(3, "load", 2.4, 30 * MIN))
    twin.update(_p(4, "ambient_temp", 25.0, 60 * MIN))
    twin.save()
    before = twin.thermal("tx1")

    again = TwinStore(path, site="s1", thermal_assets=[TX1])
    again.load()
    assert again.thermal("tx1") == before
    # Both continue identically: the state, the held inputs and the loss of life came back.
    for store in (twin, again):
        store.update(_p(5, "oil_temp", 80.0, 90 * MIN))
    assert again.thermal("tx1") == twin.thermal("tx1") != before
    # A store without thermal assets reads the same cache and publishes no thermal block.
    plain = TwinStore(path, site="s1")
    plain.load()
    assert "thermal" not in json.loads(plain.payload("tx1"))


def test_run_twin_publishes_the_thermal_block_retained(tmp_path: Path) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1", thermal_assets=[TX1])
    sent: list[tuple[str, bytes, bool]] = []

    async def publish(topic: str, payload: bytes, *, retain: bool) -> None:
        sent.append((topic, payload, retain))

    async def go() -> None:
        stop = asyncio.Event()
        twin.update(_p(1, "load", 2.0, 0))
        twin.update(_p(2, "ambient_temp", 20.0, 0))
        stop.set()
        await run_twin(twin, publish, interval_s=0.01, stop=stop)

    asyncio.run(go())
    [(topic, payload, retain)] = sent
    assert (topic, retain) == ("ems/v1/s1/twin/tx1", True)
    assert json.loads(payload)["thermal"]["hot_spot_degC"] == 98.0


def test_the_twin_predicts_the_time_to_the_hot_spot_limit_after_a_load_step(tmp_path: Path) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1", thermal_assets=[TX1])
    twin.update(_p(1, "load", 1.0, 0))                                  # K = 0.5
    twin.update(_p(2, "ambient_temp", 30.0, 0))
    twin.update(_p(3, "load", 3.0, MIN))                                # K = 1.5: the steady hot-spot is far above 120
    block = twin.thermal("tx1")
    assert block is not None and block["hot_spot_degC"] < 120.0
    predicted = block["time_to_hot_spot_limit_s"]
    assert predicted is not None and 600 < predicted < 4 * 3600
    t = MIN
    while twin.thermal("tx1")["hot_spot_degC"] < 120.0:                 # type: ignore[index]
        t += 30_000
        twin.update(_p(4, "ambient_temp", 30.0, t))
    assert (t - MIN) / 1000 == pytest.approx(predicted, rel=0.05)
    assert twin.thermal("tx1")["time_to_hot_spot_limit_s"] == 0.0      # type: ignore[index]


def test_after_a_long_gap_the_twin_continues_from_the_measured_top_oil(tmp_path: Path) -> None:
    twin = TwinStore(tmp_path / "twin.json", site="s1", thermal_assets=[TX1])
    twin.update(_p(1, "load", 2.0, 0))
    twin.update(_p(2, "ambient_temp", 20.0, 0))
    gap_end = 3 * 3600 * 1000                                          # longer than max_gap_s (3600)
    twin.update(_p(3, "load", 1.0, gap_end))                           # the gap ends with a load reading
    twin.update(_p(4, "oil_temp", 52.5, gap_end + 2000))               # and the oil is measured 2 s later
    block = twin.thermal("tx1")
    assert block is not None and block["restarts"] == 1
    assert block["top_oil_degC"] == pytest.approx(52.5, abs=0.01)      # not the steady state of K = 0.5
    # A top-oil reading long after the restart is a measurement to compare, not a restart point.
    twin.update(_p(5, "load", 1.0, 2 * gap_end))
    twin.update(_p(6, "oil_temp", 30.0, 2 * gap_end + 600_000))
    late = twin.thermal("tx1")
    assert late is not None and late["restarts"] == 2 and late["top_oil_residual_K"] != 0.0


_POINTS = (("tx1", "oil_temp"), ("tx1", "load"), ("fm1", "flow"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.sampled_from(_POINTS), st.sampled_from([0, 0, 0, 400, 1500])),
                                   min_size=1, max_size=3), st.integers(0, 4),
                          st.integers(0, 2), st.sampled_from(["good", "stale"])), max_size=25),
       st.integers(1, 30))
def test_held_batches_end_in_the_state_of_applying_every_reading(tmp_path_factory: pytest.TempPathFactory,
                                                                  polls: list, look_every: int) -> None:
    """Batches taken at every poll and applied only when the state is looked at (some skipped as
    overwritten) give the state that applying each reading in turn gives: out-of-order times,
    equal times with other values, batches of other points or assets in between, readings of one
    batch at one time or at several."""
    folder = tmp_path_factory.mktemp("twin")
    held, each = TwinStore(folder / "held.json", site="s1"), TwinStore(folder / "each.json", site="s1")
    seq = 1
    for i, (keys, ts_step, value, quality) in enumerate(polls):
        batch = ReadingBatch()
        for (asset, point), later in keys:
            batch.add(1000 * ts_step + later, asset, point, float(value), "degC", quality, "")
        held.take(batch.sequenced(seq, 0))
        for reading in batch.sequenced(seq, 0).readings():
            each.update(reading)
        seq += len(batch)
        if i % look_every == 0:
            assert {a: held.state(a) for a in held.assets()} == {a: each.state(a) for a in each.assets()}
    assert {a: held.state(a) for a in held.assets()} == {a: each.state(a) for a in each.assets()}


def test_a_held_batch_with_a_reading_newer_than_the_next_batch_is_not_skipped(tmp_path: Path) -> None:
    """A batch is skipped only when a later one of the same points was measured no earlier than every
    one of its readings: here its second reading is newer than the later batch, so it counts."""
    twin = TwinStore(tmp_path / "twin.json", site="s1")
    twin.take(ReadingBatch([1000, 2500], ["tx1", "tx1"], ["load", "oil_temp"], [1.0, 50.0], ["MW", "degC"],
                           ["good", "good"], ["", ""], 1))
    twin.take(ReadingBatch([2000, 2000], ["tx1", "tx1"], ["load", "oil_temp"], [2.0, 40.0], ["MW", "degC"],
                           ["good", "good"], ["", ""], 3))
    state = twin.state("tx1")
    assert (state["load"]["value"], state["oil_temp"]["value"], state["oil_temp"]["ts_ms"]) == (2.0, 50.0, 2500)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.sampled_from(_POINTS), st.sampled_from([0, 0, 400])), min_size=1,
                                   max_size=3), st.integers(0, 4), st.sampled_from([0.0, 1.5, -0.0, 1e300, None]),
                          st.sampled_from(["look", "publish", "save", "none"])), max_size=20),
       st.booleans())
def test_payloads_and_cache_encoded_again_only_for_changed_assets_match_a_fresh_encoding(
        tmp_path_factory: pytest.TempPathFactory, polls: list, thermal: bool) -> None:
    """``changed()`` and ``snapshot()`` keep each asset's encoding until its state changes: after any mix
    of batches, publications and saves, they give what a twin encoding everything afresh (loaded from
    the snapshot) gives, and the snapshot holds exactly the state."""
    folder = tmp_path_factory.mktemp("twin")
    assets = (_TX1_THERMAL,) if thermal else ()
    twin = TwinStore(folder / "twin.json", site="s1", thermal_assets=assets)
    seq = 1
    for keys, ts_step, value, action in polls:
        batch = ReadingBatch()
        for (asset, point), later in keys:
            batch.add(1000 * ts_step + later, asset, point, value, "degC", "good" if value is not None else "stale", "")
        twin.take(batch.sequenced(seq, 0))
        seq += len(batch)
        if action == "publish":
            for asset, payload in twin.changed()[::2]:
                twin.mark_published(asset, payload)
        elif action == "save":
            twin.save()
        elif action == "look":
            twin.changed()
        data = twin.snapshot()
        body = json.loads(data)
        assert body["assets"] == {a: twin.state(a) for a in twin.assets()}
        (folder / "fresh.json").write_bytes(data)
        fresh = TwinStore(folder / "fresh.json", site="s1", thermal_assets=assets)
        fresh.load()
        assert fresh.changed() == twin.changed()
        assert [(a, twin.payload(a)) for a, _ in twin.changed()] == twin.changed()


_TX1_THERMAL = ThermalAssetConfig(asset="tx1", kind="transformer", rated_load=2.0, load_point="load",
                                  ambient_point="ambient_temp", top_oil_point="oil_temp", params=ThermalParams())
