"""A small asyncio TCP proxy that makes a link slow and unreliable, for fault tests.

    proxy = LossyProxy("127.0.0.1", broker.tls_port, latency_s=0.05, jitter_s=0.02,
                       cut_probability=0.02, refuse_probability=0.1, max_faults=10, seed=7)
    with ProxyThread(proxy):          # or: await proxy.start() / await proxy.stop() on your own loop
        ... connect to 127.0.0.1:proxy.port ...

* every chunk is delayed by ``latency_s`` + uniform(0, ``jitter_s``), in order, per direction
  (a writer task per direction, so latency does not cap throughput);
* with ``cut_probability`` per forwarded chunk the connection is cut (both sides reset, mid-stream);
* with ``refuse_probability`` a new connection is accepted and immediately reset;
* randomness comes from ``random.Random(seed)``, so a run is repeatable up to timing; faults stop
  after ``max_faults`` (bounded), after which the proxy only delays.

Counters: ``connections``, ``cuts``, ``refusals``, ``bytes_up``, ``bytes_down``. Bytes are
forwarded untouched (TLS passes through end to end).

    python -m devenv.lossy_proxy --target-port 8883 --latency 0.1 --cut 0.01   # manual experiments
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
from dataclasses import dataclass, field

__all__ = ["LossyProxy", "ProxyThread"]


@dataclass
class LossyProxy:
    target_host: str
    target_port: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    latency_s: float = 0.0
    jitter_s: float = 0.0
    cut_probability: float = 0.0
    refuse_probability: float = 0.0
    max_faults: int | None = 20
    seed: int = 0
    connections: int = 0
    cuts: int = 0
    refusals: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    _server: asyncio.base_events.Server | None = field(default=None, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _live: set = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        for name in ("cut_probability", "refuse_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be 0..1 (got {value})")
        if self.latency_s < 0 or self.jitter_s < 0:
            raise ValueError("latency_s and jitter_s must be >= 0")
        self._rng = random.Random(self.seed)

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return self._server.sockets[0].getsockname()[1]

    def _fault(self, probability: float) -> bool:
        if probability <= 0 or (self.max_faults is not None and self.cuts + self.refusals >= self.max_faults):
            return False
        return self._rng.random() < probability

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.listen_host, self.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._live):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    def cut_all(self) -> None:
        """Reset every open connection now (counted as cuts)."""
        for writer in list(self._live):
            writer.transport.abort()
        self.cuts += 1

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._fault(self.refuse_probability):
            self.refusals += 1
            client_writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._live |= {client_writer, up_writer}
        cut = asyncio.Event()
        try:
            pumps = [asyncio.create_task(self._pump(client_reader, up_writer, cut, up=True)),
                     asyncio.create_task(self._pump(up_reader, client_writer, cut, up=False))]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for writer in (client_writer, up_writer):
                self._live.discard(writer)
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: asyncio.Event,
                    *, up: bool) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                if not data or cut.is_set():
                    break
                if self._fault(self.cut_probability):
                    self.cuts += 1
                    cut.set()
                    break
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                jitter = self._rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0
                queue.put_nowait((loop.time() + self.latency_s + jitter, data))
            if not cut.is_set():
                queue.put_nowait(None)
                await delivery          # flush what was read before the peer closed
        except (ConnectionError, OSError):
            pass
        finally:
            if not loop.is_closed():    # closed: this coroutine is being thrown away with its loop (GeneratorExit)
                delivery.cancel()


class ProxyThread:
    """Run a LossyProxy on its own event loop in a daemon thread (for synchronous tests)."""

    def __init__(self, proxy: LossyProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lossy-proxy", daemon=True)

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)
        return self.proxy

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the proxy's loop (e.g. ``proxy.cut_all``)."""
        self.loop.call_soon_threadsafe(fn, *args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Lossy TCP proxy for fault experiments.")
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--cut", type=float, default=0.0, help="probability of cutting per chunk")
    parser.add_argument("--refuse", type=float, default=0.0, help="probability of refusing a connection")
    parser.add_argument("--max-faults", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    async def run() -> None:
        proxy = LossyProxy(args.target_host, args.target_port, listen_port=args.port, latency_s=args.latency,
                           jitter_s=args.jitter, cut_probability=args.cut, refuse_probability=args.refuse,
                           max_faults=args.max_faults, seed=args.seed)
        await proxy.start()
        print(f"proxy 127.0.0.1:{proxy.port} → {args.target_host}:{args.target_port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
