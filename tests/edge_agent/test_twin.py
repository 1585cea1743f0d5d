"""Digital twin: latest state per asset, atomic cache that survives restarts, publish only when changed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edge_agent.errors import PublishError
from edge_agent.schema import Reading
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
