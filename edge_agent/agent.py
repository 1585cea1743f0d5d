"""The running agent: every part in one event loop, with explicit lifetimes.

::

    pollers (one task per device, edge_agent.poller.run_device; those of one interval share ticks)
      └─ emit(batch), one per poll ─▶ Spool.append: seq range, commit (fsync), audit
                                   ─▶ TwinStore.take(the sequenced batch)
    drain (delivery.drain):  lease batches ─▶ v1/v2 payloads ─▶ publish ─▶ PUBACK ─▶ ack
    twin (twin.run_twin):      changed assets ─▶ retained QoS 1, cache saved atomically
    calibration watch:         Calibrations.watch(), about once a second
    commands (when sensors.conf has writable points, edge_agent.commands):
                               ems/v1/<site>/command ─▶ checks ─▶ Modbus write ─▶ read-back ─▶ audit
                               ─▶ ems/v1/<site>/command-result; the fail-safe. Writes go over the
                               device's poll connection (one ModbusSource per device, the agent's):
                               a device that takes one connection is not refused, its request budget
                               holds across polls and writes
    metrics refresh + loop heartbeat (for /healthz)

The CLI runs the agent on ``edge_agent.event_loop.new_event_loop()``: uvloop's where installed, else asyncio's.

``Agent.run(stop)`` owns the resources (spool, audit log, MQTT link, HTTP
endpoint) and a task group. Pollers and the drain run under a supervisor:
the one broad ``except`` — it logs the traceback and restarts the task with
backoff. When ``stop`` is set (SIGTERM): pollers stop, the buffered readings
are committed, the drain publishes what the broker accepts within
``shutdown_grace_s`` (leftovers stay in the spool for the next start), the
twin is saved, ``offline`` is published and the link closes cleanly.

Start-up refuses (raises, the CLI exits 2): a config that other users may write,
an unusable TLS file or HTTP port, an audit log or spool that cannot be opened,
and a broker that refuses our certificate on the first attempt. A broker that
is merely unreachable is not fatal: readings are spooled and sent later.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry

from edge_agent.audit import AuditLog
from edge_agent.calibration import Calibrations
from edge_agent.commands import CommandHandler
from edge_agent.config import AgentConfig
from edge_agent.errors import AuditError, BrokerRefused, ConfigError, PublishError, SpoolError
from edge_agent.metrics import AgentMetrics
from edge_agent.batch import ReadingBatch
from edge_agent.modbus_source import ModbusSource, SharedConnections
from edge_agent.poller import PollTicks, run_device
from edge_agent.delivery import drain
from edge_agent.mqtt_link import EdgeMqttLink, TlsFiles
from edge_agent.spool import Spool
from edge_agent.twin import TwinStore, run_twin
from ems_runtime.cert_expiry import register_certificates
from ems_runtime.status_http import StatusEndpoint

__all__ = ["Agent", "check_permissions"]

log = logging.getLogger(__name__)


def check_permissions(config: AgentConfig) -> None:
    """Refuse a config file that other users can write (they could point us at their broker).

    The broker key's mode is checked by ``load_config`` (``config.key_mode_problem``: owner only, as check-config).
    """
    mode = stat.S_IMODE(config.source_path.stat().st_mode)
    if mode & 0o002:
        raise ConfigError("config file", config.source_path,
                          f"is writable by other users (mode {mode:04o}); run: chmod o-w {config.source_path}")


class Agent:
    """Run the edge agent described by ``config`` until ``stop`` is set.

    ``registry`` (default: a new one) backs the metrics served on ``/metrics``.
    ``shutdown_grace_s`` (default 10) bounds the flush on stop.
    """

    def __init__(self, config: AgentConfig, *, registry: CollectorRegistry | None = None,
                 shutdown_grace_s: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.metrics = AgentMetrics(registry)
        for outcome in ("ok", "invalid"):
            self.metrics.config_reloads.labels(outcome)
        self.shutdown_grace_s = shutdown_grace_s
        self.clock = clock
        self._heartbeat = time.monotonic()
        self._spool: Spool | None = None
        self._link: EdgeMqttLink | None = None
        self._commands: CommandHandler | None = None
        self.http: StatusEndpoint | None = None
        self._background: set[asyncio.Task] = set()

    # -- health ------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the event loop is alive (heartbeat younger than 5 s); details for /healthz."""
        lag = time.monotonic() - self._heartbeat
        spool, link = self._spool, self._link
        details = {
            "site": self.config.site,
            "loop_heartbeat_age_s": round(lag, 3),
            "broker_connected": bool(link and link.connected),
            "spool_depth": spool.depth if spool else None,
            "spool_oldest_unacked_age_s": round(spool.oldest_age_s(), 3) if spool else None,
        }
        if self._commands is not None:
            details["commands"] = self._commands.status()
        return lag < 5.0, details

    async def _tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._heartbeat = time.monotonic()
            if self._spool is not None:
                self._spool.refresh_metrics()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    # -- supervision -------------------------------------------------------
    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        """Run ``factory()`` until it returns or ``stop`` is set; restart it with backoff when it crashes."""
        delay = 0.5
        while not stop.is_set():
            started = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:       # the supervisor: log the traceback, restart with backoff
                log.exception("task %s crashed; restarting in %.1fs", name, delay)
            if time.monotonic() - started > 60:
                delay = 0.5
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 30.0)

    # -- running -----------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        check_permissions(cfg)
        broker = cfg.broker
        link = EdgeMqttLink(host=broker.host, port=broker.port, client_id=broker.client_id, site=cfg.site,
                        tls=TlsFiles(broker.ca, broker.cert, broker.key), keepalive_s=broker.keepalive_s,
                        protocol=broker.protocol, metrics=self.metrics)
        link.open()
        spool = Spool(cfg.spool.path, site=cfg.site, max_readings=cfg.spool.max_readings,
                      fsync_batch=cfg.spool.fsync_batch, min_commit_interval_s=cfg.spool.min_commit_interval_s,
                      audit=AuditLog(cfg.audit.path), metrics=self.metrics,
                      clock=self.clock)
        twin = TwinStore(cfg.twin.cache_path, site=cfg.site, clock=self.clock, thermal_assets=cfg.assets,
                         fault_points={(p.asset, p.name): p.faults for d in cfg.devices for p in d.points if p.faults})
        await asyncio.get_running_loop().run_in_executor(None, twin.load)
        calibrations = Calibrations.from_config(cfg)
        register_certificates(self.metrics.registry, "edge", {"broker-client": cfg.broker.cert})
        self.http = StatusEndpoint(cfg.http.host, cfg.http.port, self.metrics.registry, self.health,
                                   config_error=ConfigError)
        self.http.start()
        self._link = link
        shared = SharedConnections(cfg.devices)     # units behind one gateway: one connection when they say so
        # One connection per device for its poller and the command handler both
        sources = {d.name: ModbusSource(d, metrics=self.metrics, shared=shared) for d in cfg.devices}
        try:
            async with spool:
                self._spool = spool
                commands = None
                if cfg.writable_points():
                    commands = CommandHandler(cfg, audit=spool.audit_event, publish=link.publish,
                                              connected=lambda: link.connected, metrics=self.metrics,
                                              sources=sources, clock=self.clock)
                    link.subscribe(commands.topic, commands.submit)
                    await commands.open()
                    self._commands = commands
                try:
                    await self._first_connect(link)
                    link.start()
                    await self._run_tasks(spool, link, twin, calibrations, stop, sources, commands)
                finally:
                    if commands is not None:
                        self._commands = None
                        await commands.close()
        finally:
            for source in sources.values():
                source.close()
            shared.close()
            await link.close()
            self.http.stop()
            self._spool = None
        log.info("agent stopped")

    def reopen_logs(self) -> None:
        """Reopen the audit log after logrotate renamed it (the CLI calls this on SIGHUP).

        Runs in the event loop (a loop signal handler); the reopen itself runs on
        the spool's I/O thread, between commits. A failure is logged and the
        agent keeps writing to the file it has open.
        """
        spool = self._spool
        if spool is None:
            log.info("SIGHUP before the spool is open: nothing to reopen")
            return
        task = asyncio.get_running_loop().create_task(self._reopen(spool), name="reopen-audit")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reopen(self, spool: Spool) -> None:
        try:
            reopened = await spool.reopen_audit()
        except (AuditError, SpoolError) as exc:
            log.error("SIGHUP: %s; still writing to the audit file open before", exc)
            return
        log.info("SIGHUP: audit log %s", "reopened (a new file, linked to the rotated one)" if reopened
                 else "unchanged (not rotated)")

    async def _first_connect(self, link: EdgeMqttLink) -> None:
        try:
            await link.connect()
        except BrokerRefused:
            raise
        except PublishError as exc:
            log.warning("%s; spooling readings and retrying in the background", exc)

    async def _run_tasks(self, spool: Spool, link: EdgeMqttLink, twin: TwinStore, calibrations: Calibrations,
                         stop: asyncio.Event, sources: dict[str, ModbusSource],
                         commands: CommandHandler | None = None) -> None:
        cfg = self.config
        poll_stop, drain_stop, twin_stop, flushing = (asyncio.Event() for _ in range(4))

        async def emit(batch: ReadingBatch) -> None:
            twin.take(await spool.append(batch))

        def drain_factory() -> Awaitable[None]:
            return drain(spool, link, site=cfg.site, batch_max_readings=cfg.broker.batch_max_readings,
                         batch_max_delay_s=cfg.broker.batch_max_delay_s, payload_format=cfg.broker.payload_format,
                         metrics=self.metrics, flushing=flushing, clock=self.clock)

        publish = link.publish if cfg.twin.publish_retained else None
        ticks = PollTicks()             # pollers of one interval wake together: one timer per tick
        async with asyncio.TaskGroup() as group:
            pollers = []
            for device in cfg.devices:
                self.metrics.init_device(device.name)
                pollers.append(group.create_task(self._supervise(
                    f"poller {device.name}",
                    lambda d=device: run_device(d, emit, metrics=self.metrics, calibrations=calibrations,
                                                stop=poll_stop, clock=self.clock, ticks=ticks,
                                                source=sources[d.name]),
                    poll_stop), name=f"poll-{device.name}"))
            drain_task = group.create_task(self._supervise("drain", drain_factory, drain_stop), name="drain")
            twin_task = group.create_task(self._supervise("twin", lambda: run_twin(twin, publish, stop=twin_stop),
                                                          twin_stop), name="twin")
            group.create_task(calibrations.watch(poll_stop, interval_s=1.0, metrics=self.metrics), name="calibration")
            group.create_task(self._tick(twin_stop), name="tick")
            if commands is not None:
                group.create_task(self._supervise("commands", lambda: commands.run(twin_stop), twin_stop),
                                  name="commands")
            log.info("agent for site %s running on %s's event loop: %d devices, %d points", cfg.site,
                     type(asyncio.get_running_loop()).__module__.split(".")[0], len(cfg.devices),
                     sum(len(d.points) for d in cfg.devices))

            await stop.wait()
            started = time.monotonic()
            log.info("stopping: pollers first, then flushing the spool (grace %.0fs)", self.shutdown_grace_s)
            poll_stop.set()
            if pollers:
                _, late = await asyncio.wait(pollers, timeout=min(5.0, self.shutdown_grace_s))
                for task in late:
                    task.cancel()
            await spool.flush()
            flushing.set()
            # The link keeps reconnecting in the background meanwhile; what is not acked in time stays spooled.
            while spool.depth and time.monotonic() - started < self.shutdown_grace_s:
                await asyncio.sleep(0.05)
            drain_stop.set()
            drain_task.cancel()
            if spool.depth:
                log.warning("%d readings stay in the spool for the next start", spool.depth)
            twin_stop.set()
            remaining = max(0.5, self.shutdown_grace_s - (time.monotonic() - started))
            try:
                await asyncio.wait_for(asyncio.shield(twin_task), remaining)
            except asyncio.TimeoutError:
                twin_task.cancel()
                await asyncio.get_running_loop().run_in_executor(None, twin.write, twin.snapshot())
