"""``ems-ingest``: the ingest worker and the digital-twin read API.

    ems-ingest run [--config FILE]          consume telemetry into the TSDB (metrics on [metrics] port)
    ems-ingest twin-api [--config FILE]     serve GET /v1/assets/<site>/<asset> and /v1/query over HTTPS
    ems-ingest check-config [--config FILE] validate the config and exit

The config file defaults to ``$EMS_INGEST_CONFIG``, else ``/etc/ems/ingest.toml`` when it
exists; ``EMS_*`` variables (``ingest.config.ENV_OVERRIDES``) override single settings or,
without a file, provide them all.

Exit codes: 0 done, 2 bad usage or config (one line on stderr, no traceback),
1 a runtime failure (broker or TSDB unreachable at start, state dir in use).
Only this module configures logging: readable on a TTY, JSON lines otherwise.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path

from ingest.config import IngestConfig, load_config
from ingest.errors import ConfigError, IngestError
from ems_runtime.log_setup import configure_logging
from ems_runtime.version import version_text

log = logging.getLogger("ingest")
DEFAULT_CONFIG = "/etc/ems/ingest.toml"


def _lock_state_dir(config: IngestConfig) -> int:
    """Hold an exclusive lock on the state dir for the process lifetime: one worker per dedup database."""
    config.state.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.state.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError("state.dir", config.state.dir, "is in use by another ingest worker") from None
    return fd


def run(config: IngestConfig) -> int:
    from ems_contract.telemetry import seen_topic, telemetry_subscription
    from ingest.dedup import SeenSeqs
    from ems_runtime.cert_expiry import register_certificates
    from ems_runtime.status_http import StatusEndpoint
    from ingest.metrics import IngestMetrics
    from ingest.mqtt import MqttLink, TlsFiles
    from ingest.remote_write import RemoteWriter
    from ingest.seq_share import GroupRole
    from ingest.worker import IngestWorker, tune_gc

    b = config.broker
    if config.state.workers and b.client_id not in config.state.workers:
        raise ConfigError("state.workers", list(config.state.workers),
                          f"must include this worker's client_id {b.client_id!r}")
    role = GroupRole(b.client_id, config.state.workers)
    lock = _lock_state_dir(config)
    seen = SeenSeqs(config.state.dir, max_intervals_per_site=config.state.max_intervals_per_site,
                    loss_horizon_ms=config.state.loss_horizon_s * 1000,
                    losses=("group" if role.accountant else "none") if role.shared else "own")
    metrics = IngestMetrics()
    # the accountant of a group also takes every other worker's seen seqs (its own session: they wait for it)
    peers = tuple(seen_topic(w) for w in role.peers) if role.shared and role.accountant else ()
    link = MqttLink(b.host, b.port, TlsFiles(b.ca, b.cert, b.key) if b.tls else None, b.client_id,
                    subscriptions=(telemetry_subscription(b.group), *peers), manual_ack=True, persistent=True,
                    session_expiry_s=b.session_expiry_s, receive_maximum=b.receive_maximum, keepalive_s=b.keepalive_s,
                    on_connection_change=lambda up: metrics.broker_connected.set(1 if up else 0),
                    cert_check_s=b.cert_check_s)
    writer = RemoteWriter(config.tsdb.remote_write_url, timeout_s=config.tsdb.timeout_s, ca=config.tsdb.ca,
                          auth=config.tsdb.auth)
    worker = IngestWorker(link=link, writer=writer, seen=seen, metrics=metrics,
                          max_readings=config.batch.max_readings, max_delay_s=config.batch.max_delay_s,
                          max_backoff_s=config.tsdb.max_backoff_s, shutdown_grace_s=config.shutdown_grace_s,
                          max_future_s=config.time.max_future_s, max_age_s=config.time.max_age_s, role=role)
    def health() -> tuple[bool, dict[str, str]]:
        alive, why = worker.health()
        return alive, {"detail": why}

    register_certificates(metrics.registry, "ingest", {"broker-client": b.cert if b.tls else None})
    # /healthz is the StatefulSet's liveness probe: 503 when the worker loop stalls or paho's thread died.
    server = StatusEndpoint(config.metrics.host, config.metrics.port, metrics.registry, health)
    server.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.request_stop())
    log.info("ingest worker %s: broker %s:%d, subscription %s, TSDB %s, metrics :%d, state %s",
             b.client_id, b.host, b.port, telemetry_subscription(b.group), config.tsdb.remote_write_url,
             server.port, config.state.dir)
    tune_gc()
    link.start()
    try:
        worker.run()
    except Exception:
        # Crash-only: the batch in hand is unacknowledged, and only a reconnect makes the broker
        # redeliver it, so a worker that hit an unexpected error exits and lets its supervisor restart it.
        log.exception("ingest worker %s failed; exiting so that the broker redelivers its unacknowledged messages",
                      b.client_id)
        return 1
    finally:
        link.stop()
        writer.close()
        seen.close()
        server.stop()
        os.close(lock)
    log.info("ingest worker %s stopped", b.client_id)
    return 0


def twin_api(config: IngestConfig) -> int:
    from ingest.twin_api import serve_forever

    if config.twin_api is None:
        raise ConfigError("twin_api", None, "section is required for `ems-ingest twin-api`")
    return serve_forever(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ems-ingest", description="EMS telemetry ingest (MQTT → Prometheus).")
    parser.add_argument("--log-level", default=os.environ.get("EMS_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=version_text("ems-ingest"))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "consume telemetry into the TSDB"), ("twin-api", "serve the digital-twin read API"),
                       ("check-config", "validate the config file and exit")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, help=f"ingest config (TOML; default $EMS_INGEST_CONFIG, else "
                                                     f"{DEFAULT_CONFIG} when it exists, else only EMS_* variables)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        path = args.config or (Path(os.environ["EMS_INGEST_CONFIG"]) if os.environ.get("EMS_INGEST_CONFIG") else None)
        if path is None and Path(DEFAULT_CONFIG).exists():
            path = Path(DEFAULT_CONFIG)
        config = load_config(path)
        if args.command == "check-config":
            print(f"{path or 'environment'}: ok")
            return 0
        return run(config) if args.command == "run" else twin_api(config)
    except ConfigError as exc:
        print(f"ems-ingest: {exc}", file=sys.stderr)
        return 2
    except IngestError as exc:
        print(f"ems-ingest: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ems-ingest: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
