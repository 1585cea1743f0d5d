"""Helpers for the Modbus-side tests: device/point builders and a TCP listener that never answers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from edge_agent.config import DeviceConfig, PointConfig


def points(count: int, *, type: str = "uint16", register: str = "holding", start: int = 0, step: int | None = None,
           prefix: str = "P", **extra: object) -> tuple[PointConfig, ...]:
    """``count`` points of ``type`` laid out from ``start``, ``step`` registers apart (default: contiguous)."""
    width = 1 if register in ("coil", "discrete") else {"float64": 4}.get(type, 2 if type.endswith("32") else 1)
    step = width if step is None else step
    return tuple(PointConfig(id=f"{prefix}{i:03d}", asset=f"{prefix.lower()}asset", name=f"p{i:03d}", register=register,
                             address=start + i * step, type=type, **extra)  # type: ignore[arg-type]
                 for i in range(count))


def device(name: str, port: int, pts: tuple[PointConfig, ...], **kwargs: object) -> DeviceConfig:
    defaults: dict[str, object] = {"unit": 1, "timeout_s": 0.5, "retries": 0, "poll_interval_s": 0.1}
    defaults.update(kwargs)
    return DeviceConfig(name=name, host="127.0.0.1", port=port, points=pts, **defaults)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server that accepts connections and reads requests but never answers.

    Yields (port, accepted) where ``accepted`` grows by one per connection.
    """
    accepted: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writers.append(writer)
        while await reader.read(1024):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
