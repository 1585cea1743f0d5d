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

A cache file that cannot be parsed is moved aside (``<name>.corrupt-<time>``)
with a warning and the twin starts empty: it is a cache, rebuilt from the next
readings. A cache that cannot be written raises TwinError.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from edge_agent.errors import PublishError, TwinError
from edge_agent.schema import Reading, encode_twin, twin_topic

__all__ = ["TwinStore", "run_twin"]

log = logging.getLogger(__name__)
_VERSION = 1


class TwinStore:
    """Latest state per asset for ``site``, cached in ``cache_path`` (JSON)."""

    def __init__(self, cache_path: str | os.PathLike[str], *, site: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(cache_path)
        self.site = site
        self.clock = clock
        self._assets: dict[str, dict[str, dict[str, Any]]] = {}
        self._published: dict[str, str] = {}
        self.dirty = False

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
            assets = {str(a): {str(p): dict(s) for p, s in points.items()} for a, points in body["assets"].items()}
            published = {str(a): str(d) for a, d in body.get("published", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self.clock())}")
            os.replace(self.path, aside)
            log.warning("twin cache %s is unreadable (%s); moved to %s, starting empty", self.path, exc, aside)
            return
        self._assets, self._published = assets, published

    def update(self, reading: Reading) -> bool:
        """Take a reading into its asset's state; True when the state changed."""
        points = self._assets.setdefault(reading.asset, {})
        held = points.get(reading.point)
        if held is not None and held["ts_ms"] > reading.ts_ms:
            return False
        state = {"value": reading.value, "unit": reading.unit, "quality": reading.quality, "ts_ms": reading.ts_ms}
        if held == state:
            return False
        points[reading.point] = state
        self.dirty = True
        return True

    def assets(self) -> list[str]:
        return sorted(self._assets)

    def state(self, asset: str) -> dict[str, dict[str, Any]]:
        """point → {value, unit, quality, ts_ms} of one asset (a copy)."""
        return {p: dict(s) for p, s in self._assets.get(asset, {}).items()}

    def payload(self, asset: str) -> bytes:
        points = self._assets[asset]
        ts_ms = max(s["ts_ms"] for s in points.values())
        return encode_twin(self.site, asset, ts_ms, points)

    def changed(self) -> list[tuple[str, bytes]]:
        """(asset, payload) for every asset whose payload differs from the last acknowledged one."""
        out = []
        for asset in sorted(self._assets):
            payload = self.payload(asset)
            if self._published.get(asset) != hashlib.sha256(payload).hexdigest():
                out.append((asset, payload))
        return out

    def mark_published(self, asset: str, payload: bytes) -> None:
        self._published[asset] = hashlib.sha256(payload).hexdigest()
        self.dirty = True

    def save(self) -> None:
        """Write the cache atomically; raises TwinError on I/O failure."""
        body = {"v": _VERSION, "site": self.site, "saved_ms": int(self.clock() * 1000), "assets": self._assets,
                "published": self._published}
        data = json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
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
            raise TwinError(f"twin cache {self.path}: cannot write ({exc.strerror or exc})") from exc
        self.dirty = False


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
        if twin.dirty:
            await loop.run_in_executor(None, twin.save)
        if stop.is_set():
            return
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass
