"""Digital-twin state: the latest calibrated value of every point, per asset, kept at the edge.

``TwinStore`` holds, per asset, each point's latest ``{value, unit, quality,
ts_ms}`` (a reading older than the one held is ignored, so a replayed spool
never rewinds the twin). ``save()`` writes the cache atomically (temporary
file, fsync, rename, fsync of the folder), so a restart — or power loss —
finds either the old or the new state, never half of one. ``changed()`` lists
the assets whose retained message differs from the last one the broker
acknowledged (that record is cached too), so a twin is published only when it
changed, also across restarts.

``run_twin()`` is the agent's task: save when dirty and publish changed assets
retained (QoS 1) on ``twin_topic(site, asset)`` about once a second.

``take(batch)`` runs at every poll, so it defers: a batch is held and applied
when the state is next looked at (or 1,024 batches are waiting), and a held
batch is dropped as soon as a later one has the same assets and points, every
one measured no earlier — applying it would change nothing that the later one
does not overwrite. Batches of thermal assets and of points with fault codes,
whose history matters, are applied at once. ``changed()`` and ``snapshot()``
encode again only the assets whose state changed since they last did.

Thermal assets (``[assets.<asset>]`` in sensors.conf, ``ThermalAssetConfig``)
also carry an IEC 60076-7 thermal model (``edge_agent.thermal``). Every newer
reading of the asset advances the model to the reading's measurement time with
the load factor and ambient held since the previous one (report by exception:
a value holds until the next report); then a load or ambient reading becomes
the new input. Only ``good`` readings are inputs; a load factor above
``MAX_LOAD_FACTOR`` or an ambient outside -70..80 °C is refused (logged once)
and, like a ``device_error``, leaves the input unknown: the model waits; so is a
measured top-oil outside ±``thermal.TEMPERATURE_BOUND_DEGC``. The
model starts from the latest good measured top-oil when the asset has that point
(else in the steady state of its first inputs). After a gap longer than
``max_gap_s`` it restarts from the measured top-oil of the reading that ends the
gap, or of the first good top-oil reading within ``RESUME_WINDOW_S`` after it.
Its state is part of the cache, so it survives restarts. The payload gains ``thermal``::

    {"load_factor": 0.86, "top_oil_degC": 54.31, "hot_spot_degC": 74.02, "ageing_rate": 0.1523,
     "loss_of_life_h": 0.0021, "since_ms": ..., "updated_ms": ..., "restarts": 0,
     "model": "iec", "hot_spot_limit_degC": 120.0,
     "time_to_hot_spot_limit_s": 5400.0,    # at the present inputs; null: never reached
     "top_oil_residual_K": 3.69}            # the residual only with a good measured top-oil point

Points with a PLC fault-code map (``edge_agent.faults``) carry the active fault in
their state, ``"fault": {"code": "E04", "text": "over-voltage", "severity": "critical",
"since_ms": ...}``, while the latest good reading shows a mapped code; ``since_ms`` is the
measurement time of the first reading that showed it.

A cache file that cannot be parsed is moved aside (``<name>.corrupt-<time>``)
with a warning and the twin starts empty: it is a cache, rebuilt from the next
readings. A bad thermal block costs only that asset's model (warned; it restarts). A cache that cannot be written raises TwinError.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import orjson

from edge_agent import thermal
from edge_agent.batch import ReadingBatch
from edge_agent.config import ThermalAssetConfig
from edge_agent.faults import FaultCode, active_fault, fault_block
from edge_agent.errors import PublishError, TwinError
from edge_agent.twin_cache import cached_assets, check_thermal_run
from ems_contract.telemetry import Reading, check_finite, encode_twin, twin_topic

__all__ = ["TwinStore", "run_twin"]

log = logging.getLogger(__name__)
_VERSION = 1
AMBIENT_RANGE = (-70.0, 80.0)
RESUME_WINDOW_S = 300.0
_MAX_PENDING = 1024


class _ThermalRun:
    """One thermal asset's model state and its current inputs (None: unknown)."""

    def __init__(self, config: ThermalAssetConfig) -> None:
        self.config = config
        self.state: thermal.ThermalState | None = None
        self.load_factor: float | None = None
        self.ambient: float | None = None
        self.top_oil: float | None = None       # the latest good measured top-oil, when the asset has one
        self.resume_until_ms: int | None = None  # after a restart without a measurement: snap to the next one
        self.refused: set[str] = set()

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.to_json() if self.state else None, "load_factor": self.load_factor,
                "ambient": self.ambient}

    def restore(self, raw: dict[str, Any]) -> None:
        state = raw["state"]
        self.state = thermal.ThermalState.from_json(state) if state is not None else None
        self.load_factor = _finite_or_none(raw["load_factor"])
        self.ambient = _finite_or_none(raw["ambient"])
        check_thermal_run(self.state, self.load_factor, self.ambient, max_load_factor=thermal.MAX_LOAD_FACTOR,
                          ambient_range=AMBIENT_RANGE, temperature_bound=thermal.TEMPERATURE_BOUND_DEGC)

    def take(self, reading: Reading) -> None:
        """Advance the model to the reading's time, then take it as an input if it is one."""
        cfg = self.config
        measured = None
        if reading.point == cfg.top_oil_point:
            value, bound = self._usable(reading), thermal.TEMPERATURE_BOUND_DEGC
            measured = self._check(reading, value, value is not None and -bound <= value <= bound,
                                   f"outside ±{bound:g} degC")
        if self.state is not None and self.load_factor is not None and self.ambient is not None:
            restarts = self.state.restarts
            self.state = thermal.advance(cfg.params, self.state, self.load_factor, self.ambient, reading.ts_ms,
                                         max_gap_s=cfg.max_gap_s, measured_top_oil=measured)
            if self.state.restarts != restarts and measured is None and cfg.top_oil_point:
                self.resume_until_ms = reading.ts_ms + int(min(cfg.max_gap_s, RESUME_WINDOW_S) * 1000)
        if measured is not None and self.state is not None and self.resume_until_ms is not None:
            if reading.ts_ms <= self.resume_until_ms:
                self.state = thermal.with_top_oil(cfg.params, self.state, measured)
            self.resume_until_ms = None
        if reading.point == cfg.load_point:
            value = self._usable(reading)
            k = abs(value) / cfg.rated_load if value is not None else None
            self.load_factor = self._check(reading, k, k is not None and k <= thermal.MAX_LOAD_FACTOR,
                                           f"a load factor above {thermal.MAX_LOAD_FACTOR:g}")
        elif reading.point == cfg.top_oil_point:
            self.top_oil = measured
        elif reading.point == cfg.ambient_point:
            value = self._usable(reading)
            low, high = AMBIENT_RANGE
            self.ambient = self._check(reading, value, value is not None and low <= value <= high,
                                       f"outside {low:g}..{high:g} degC")
        if self.state is None and self.load_factor is not None and self.ambient is not None:
            self.state = thermal.start(cfg.params, self.load_factor, self.ambient, reading.ts_ms,
                                       measured_top_oil=self.top_oil)

    @staticmethod
    def _usable(reading: Reading) -> float | None:
        if reading.quality != "good" or reading.value is None or not math.isfinite(reading.value):
            return None
        return float(reading.value)

    def _check(self, reading: Reading, value: float | None, ok: bool, why: str) -> float | None:
        if value is None:
            return None
        if ok:
            self.refused.discard(reading.point)
            return value
        if reading.point not in self.refused:
            self.refused.add(reading.point)
            log.warning("twin %s: %s = %r is %s; the thermal model waits for a plausible value",
                        reading.asset, reading.point, reading.value, why)
        return None

    def block(self, points: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The payload's ``thermal`` object, or None before the model has started."""
        state = self.state
        if state is None:
            return None
        params = self.config.params
        out: dict[str, Any] = {
            "top_oil_degC": round(state.top_oil, 2),
            "hot_spot_degC": round(state.hot_spot, 2),
            "ageing_rate": float(f"{thermal.ageing_rate(state.hot_spot, params.paper):.4g}"),
            "loss_of_life_h": round(state.loss_of_life_h, 4),
            "since_ms": state.since_ms,
            "updated_ms": state.t_ms,
            "restarts": state.restarts,
            "model": params.model,
            "hot_spot_limit_degC": self.config.hot_spot_limit,
        }
        if self.load_factor is not None:
            out["load_factor"] = round(self.load_factor, 4)
        if self.load_factor is not None and self.ambient is not None:
            seconds = thermal.time_to_limit(params, state, self.load_factor, self.ambient, self.config.hot_spot_limit)
            out["time_to_hot_spot_limit_s"] = None if seconds is None else round(seconds, 1)
        measured = points.get(self.config.top_oil_point or "")
        if measured and measured["quality"] == "good" and measured["value"] is not None:
            out["top_oil_residual_K"] = round(measured["value"] - state.top_oil, 2)
        return out


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"thermal input {value!r} is not a finite number")
    return float(value)


class TwinStore:
    """Latest state per asset for ``site``, cached in ``cache_path`` (JSON).

    ``thermal_assets`` (default none) get a thermal model each; ``fault_points`` maps
    (asset, point) to its fault-code map (default none; module docstring).
    """

    def __init__(self, cache_path: str | os.PathLike[str], *, site: str,
                 clock: Callable[[], float] = time.time,
                 thermal_assets: Iterable[ThermalAssetConfig] = (),
                 fault_points: Mapping[tuple[str, str], tuple[FaultCode, ...]] | None = None) -> None:
        self.path = Path(cache_path)
        self.site = site
        self.clock = clock
        self._assets: dict[str, dict[str, dict[str, Any]]] = {}
        self._published: dict[str, str] = {}
        self._thermal = {cfg.asset: _ThermalRun(cfg) for cfg in thermal_assets}
        self._faults = dict(fault_points or {})
        self._eager = {cfg.asset for cfg in thermal_assets} | {asset for asset, _ in self._faults}
        self._pending: dict[int, ReadingBatch] = {}     # held batches by arrival number, in arrival order
        # (arrival number, latest ts_ms, assets, points) of the held batches, by a key that equal columns share
        self._held: dict[tuple, list[tuple[int, int, list[str], list[str]]]] = {}
        self._arrivals = 0
        self._dirty = False
        # what changed() and snapshot() encoded per asset, and the assets changed since (encoded again)
        self._payloads: dict[str, tuple[bytes, str]] = {}
        self._members: dict[str, bytes] = {}
        self._unpublished: set[str] = set()
        self._unsaved: set[str] = set()

    @property
    def dirty(self) -> bool:
        """True when the state changed since the last ``save()``."""
        self._settle()
        return self._dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self._dirty = value

    def load(self) -> None:
        """Read the cache if there is one (a corrupt one is moved aside, see the module doc)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TwinError(f"twin cache {self.path}: cannot read ({exc.strerror or exc})") from exc
        try:
            body = json.loads(raw)
            if body.get("v") != _VERSION or body.get("site") != self.site:
                raise ValueError(f"version/site {body.get('v')!r}/{body.get('site')!r} is not "
                                 f"{_VERSION}/{self.site!r}")
            assets = cached_assets(body["assets"])
            published = {str(a): str(d) for a, d in body.get("published", {}).items()}
            runs = {a: _ThermalRun(r.config) for a, r in self._thermal.items()}
            for asset, raw in body.get("thermal", {}).items():
                if asset in runs:               # an asset no longer declared thermal: its model is dropped
                    self._restore(runs, asset, raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self.clock())}")
            os.replace(self.path, aside)
            log.warning("twin cache %s is unreadable (%s); moved to %s, starting empty", self.path, exc, aside)
            return
        self._assets, self._published, self._thermal = assets, published, runs
        self._payloads, self._members = {}, {}

    def _restore(self, runs: dict[str, _ThermalRun], asset: str, raw: Any) -> None:
        """Restore one asset's thermal model; a bad one is dropped (the model restarts), the rest of the cache kept."""
        try:
            runs[asset].restore(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            runs[asset] = _ThermalRun(runs[asset].config)
            log.warning("twin cache %s: the thermal model of %s is unreadable (%s); it restarts from the next readings",
                        self.path, asset, exc)

    def take(self, batch: ReadingBatch) -> None:
        """Take a sequenced batch (``Spool.append``'s result) into the assets' state (see the module doc)."""
        if self._eager and not self._eager.isdisjoint(batch.asset):
            self._settle()
            self._apply(batch)
            return
        assets, points, ts = batch.asset, batch.point, batch.ts_ms
        first = ts[0]
        if ts.count(first) == len(ts):          # one measurement time, as a one-block poll has: no min, no max
            earliest = latest = first
        else:
            earliest, latest = min(ts), max(ts)
        self._arrivals += 1
        mine = (self._arrivals, latest, assets, points)
        key = (len(points), points[0], points[-1], assets[0], assets[-1])
        held = self._held.get(key)
        if held is None:
            self._held[key] = [mine]
        elif len(held) == 1 and earliest >= held[0][1] and held[0][3] is points and held[0][2] is assets:
            del self._pending[held[0][0]]       # the usual poll: the same block's lists, measured later
            held[0] = mine
        else:
            pending, kept = self._pending, []
            for entry in held:
                if earliest >= entry[1] and (entry[3] is points or entry[3] == points) \
                        and (entry[2] is assets or entry[2] == assets):
                    del pending[entry[0]]       # overwritten by this batch wherever it would change the state
                else:
                    kept.append(entry)
            kept.append(mine)
            self._held[key] = kept
        self._pending[self._arrivals] = batch
        if len(self._pending) >= _MAX_PENDING:
            self._settle()

    def _settle(self) -> None:
        """Apply the held batches in the order they came."""
        if not self._pending:
            return
        pending, self._pending, self._held = self._pending, {}, {}
        for batch in pending.values():
            self._apply(batch)

    def _apply(self, batch: ReadingBatch) -> int:
        """Apply one batch now; how many points changed."""
        changed = 0
        assets, faults, thermal = self._assets, self._faults, self._thermal
        last_asset, points = None, {}
        touched = set()
        for ts_ms, asset, point, value, unit, quality in zip(batch.ts_ms, batch.asset, batch.point, batch.value,
                                                             batch.unit, batch.quality):
            if asset is not last_asset:             # a batch is usually one device's: one asset, or a few in runs
                points = assets.get(asset)
                if points is None:
                    points = assets[asset] = {}
                last_asset = asset
            held = points.get(point)
            if held is None:
                held = points[point] = {"value": value, "unit": unit, "quality": quality, "ts_ms": ts_ms}
            elif held["ts_ms"] > ts_ms or (held["ts_ms"] == ts_ms and held["value"] == value
                                           and held["quality"] == quality and held["unit"] == unit):
                continue
            else:               # in place: the state of a point is updated at every poll
                held["value"], held["unit"], held["quality"], held["ts_ms"] = value, unit, quality, ts_ms
            changed += 1
            touched.add(asset)
            if faults:
                codes = faults.get((asset, point))
                if codes:
                    fault = active_fault(codes, value, quality)
                    before = held.get("fault") or {}
                    if fault is None:
                        held.pop("fault", None)
                    else:
                        held["fault"] = fault_block(fault, before["since_ms"] if before.get("code") == fault.code
                                                    else ts_ms)
            if thermal:
                run = thermal.get(asset)
                if run is not None:
                    run.take(Reading(0, ts_ms, asset, point, value, unit, quality))
        if changed:
            self._dirty = True
            self._unpublished |= touched
            self._unsaved |= touched
        return changed

    def update(self, reading: Reading) -> bool:
        """Take one reading into its asset's state; True when the state changed."""
        batch = ReadingBatch([reading.ts_ms], [reading.asset], [reading.point], [reading.value], [reading.unit],
                             [reading.quality], [""], reading.seq)
        self._settle()
        return self._apply(batch) == 1

    def assets(self) -> list[str]:
        self._settle()
        return sorted(self._assets)

    def state(self, asset: str) -> dict[str, dict[str, Any]]:
        """point → {value, unit, quality, ts_ms} of one asset (a copy)."""
        self._settle()
        return {p: dict(s) for p, s in self._assets.get(asset, {}).items()}

    def thermal(self, asset: str) -> dict[str, Any] | None:
        """The asset's ``thermal`` payload block; None when it is not a thermal asset or has no estimate yet."""
        self._settle()
        run = self._thermal.get(asset)
        return run.block(self._assets.get(asset, {})) if run is not None else None

    def payload(self, asset: str) -> bytes:
        self._settle()
        points = self._assets[asset]
        ts_ms = max(s["ts_ms"] for s in points.values())
        return encode_twin(self.site, asset, ts_ms, points, thermal=self.thermal(asset))

    def changed(self) -> list[tuple[str, bytes]]:
        """(asset, payload) for every asset whose payload differs from the last acknowledged one."""
        self._settle()
        out = []
        encoded, stale = self._payloads, self._unpublished
        for asset in sorted(self._assets):
            known = encoded.get(asset)
            if known is None or asset in stale:
                payload = self.payload(asset)
                known = encoded[asset] = (payload, hashlib.sha256(payload).hexdigest())
                stale.discard(asset)
            if self._published.get(asset) != known[1]:
                out.append((asset, known[0]))
        return out

    def mark_published(self, asset: str, payload: bytes) -> None:
        self._published[asset] = hashlib.sha256(payload).hexdigest()
        self.dirty = True

    def save(self) -> None:
        """Write the cache atomically; raises TwinError on I/O failure."""
        self.write(self.snapshot())

    def snapshot(self) -> bytes:
        """The cache file's content now, and the state counts as saved (``write`` it, from any thread)."""
        self._settle()
        members, stale = self._members, self._unsaved
        encoded = []
        for asset in sorted(self._assets):
            member = members.get(asset)
            if member is None or asset in stale:
                member = members[asset] = _member(asset, self._assets[asset])
                stale.discard(asset)
            encoded.append(member)
        body = {"v": _VERSION, "site": self.site, "saved_ms": int(self.clock() * 1000),
                "assets": orjson.Fragment(b"{" + b",".join(encoded) + b"}"), "published": self._published,
                "thermal": orjson.Fragment(_json({a: r.to_json() for a, r in self._thermal.items()}))}
        try:
            data = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:      # not UTF-8 (a lone surrogate read back from the cache): plain json
            body["published"] = orjson.Fragment(_json(self._published))
            data = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        self._dirty = False
        return data

    def write(self, data: bytes) -> None:
        """Replace the cache file with ``snapshot()``'s ``data`` atomically; raises TwinError on I/O
        failure (the state is then dirty again)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self._dirty = True
            raise TwinError(f"twin cache {self.path}: cannot write ({exc.strerror or exc})") from exc


def _json(item: Any) -> bytes:
    """``item`` as compact JSON with sorted keys; ValueError for a NaN or infinite float."""
    return json.dumps(item, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def _member(asset: str, points: dict[str, dict[str, Any]]) -> bytes:
    """``"asset":{points}`` of the cache's ``assets`` object (orjson; plain json for what orjson cannot
    write, such as an integer beyond 64 bits read back from the cache); ValueError for a value that
    is not finite."""
    check_finite([state["value"] for state in points.values()])
    try:
        encoded = orjson.dumps(points, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        encoded = _json(points)
    return _json(asset) + b":" + encoded


async def run_twin(twin: TwinStore, publish: Callable[..., Any] | None, *, interval_s: float = 1.0,
                   stop: asyncio.Event | None = None) -> None:
    """Every ``interval_s``: publish changed assets retained (when ``publish`` is given) and save if dirty.

    ``publish(topic, payload, retain=True)`` must return after the PUBACK or
    raise PublishError (then the asset stays "changed" and is tried again).
    Runs until ``stop`` is set, then saves one last time.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    while True:
        if publish is not None:
            for asset, payload in twin.changed():
                try:
                    await publish(twin_topic(twin.site, asset), payload, retain=True)
                except PublishError as exc:
                    log.debug("twin %s not published yet (%s)", asset, exc)
                    break
                twin.mark_published(asset, payload)
        if twin.dirty:      # the state is read here, on the loop; only the file I/O leaves it
            await loop.run_in_executor(None, twin.write, twin.snapshot())
        if stop.is_set():
            return
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass
