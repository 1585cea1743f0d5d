"""``ems-edge``: the edge agent's command line.

::

    ems-edge run            [--config PATH]     run the agent until SIGTERM/SIGINT (flushes, exits 0);
                                                SIGHUP reopens the audit log (after logrotate)
    ems-edge check-config   [--config PATH] [--user NAME]
                                                validate sensors.conf and the TLS files, and that the key
                                                files are 0600 and owned by NAME; print a summary
    ems-edge calibrate      --id SENSOR_01 [--offset X] [--gain G] [--config PATH]
                                                update one sensor atomically; the running agent picks it up
    ems-edge audit verify   [--path PATH ... | --config PATH] [--rotated]
                                                check every audit record's CRC and, over several files
                                                (oldest first; --rotated adds logrotate's NAME.1, NAME.2.gz
                                                ...), that each file continues the one before; exit 1 if not
    ems-edge simulate       [--host H] [--port P] [--profile default|bench:DxP|rig:DxR] [--pipelining] [--config PATH]

The config is ``--config``, else ``$EMS_SENSORS_CONF``, else ``/etc/ems/sensors.conf``.
Exit codes: 0 ok, 1 audit corruption, 2 any expected error (bad config,
unreadable key, broker refusing the certificate, ...) printed as one line on
stderr without a traceback. This is the only module that configures logging:
readable lines on a terminal, JSON lines otherwise (``--log-level``, default
info), on stderr or, with ``--log-stream stdout``, on stdout. Secrets and payloads are never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from edge_agent.errors import EdgeAgentError
from ems_contract.config_file import shorten
from ems_runtime.log_setup import configure_logging
from ems_runtime.version import version_text

__all__ = ["main"]

log = logging.getLogger("edge_agent.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ems-edge", description="EMS edge agent: Modbus → MQTT/mTLS.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=version_text("ems-edge"))
    parser.add_argument("--log-stream", default="stderr", choices=["stderr", "stdout"],
                        help="where log lines go (default stderr; containers whose collectors rank stderr as errors: stdout)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="sensors.conf (default: $EMS_SENSORS_CONF or /etc/ems/sensors.conf)")
        return p

    run = with_config(sub.add_parser("run", help="run the agent"))
    run.add_argument("--shutdown-grace", type=float, default=10.0, metavar="SECONDS",
                     help="how long SIGTERM may spend flushing the spool (default 10)")
    check = with_config(sub.add_parser("check-config", help="validate the config and the key files' owner and mode"))
    check.add_argument("--user", help="the service user who must own the key files (default: the user running "
                                      "this; as root, give the package's: --user ems)")
    cal = with_config(sub.add_parser("calibrate", help="set a sensor's offset and/or gain"))
    cal.add_argument("--id", required=True, dest="sensor_id", help="sensor id, e.g. SENSOR_01")
    cal.add_argument("--offset", type=_finite, help="new offset (engineering units)")
    cal.add_argument("--gain", type=_finite, help="new gain (not 0)")
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = with_config(audit_sub.add_parser("verify", help="check the audit log's CRCs"))
    verify.add_argument("--path", action="append", help="audit log (default: the config's audit.path); "
                        "repeat it to verify rotated files as one chain, oldest first")
    verify.add_argument("--rotated", action="store_true",
                        help="with the file, verify its rotations (NAME.1, NAME.2.gz, ...) before it, oldest first")
    sim = with_config(sub.add_parser("simulate", help="serve simulated Modbus devices"))
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=_port, default=5020)
    sim.add_argument("--profile", default="default", help="default | bench:<devices>x<points> | rig:<devices>x<registers>")
    sim.add_argument("--pipelining", action="store_true",
                     help="answer every request of a TCP segment, as a gateway that takes connection = \"shared\" "
                          "or max_inflight > 1 does (without it: pymodbus' server, which answers only the first)")
    return parser


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shorten(text)} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{shorten(text)} must be a finite number")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shorten(text)} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} must be 0..65535")
    return value


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.event_loop import new_event_loop
    from edge_agent.config import config_path, load_config

    config = load_config(config_path(args.config))
    agent = Agent(config, shutdown_grace_s=args.shutdown_grace)
    # What start-up loaded (modules, config) lives until exit: out of the way of the collections
    # that each poll's short-lived objects trigger.
    gc.collect()
    gc.freeze()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, agent.reopen_logs)     # logrotate's postrotate
        await agent.run(stop)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from edge_agent.agent import check_permissions
    from edge_agent.config import config_path, load_config
    from edge_agent.layout import check_key_files, service_user

    path = config_path(args.config)
    keys = check_key_files(load_config(path, check_files=False), args.user)
    config = load_config(path)
    check_permissions(config)
    points = sum(len(d.points) for d in config.devices)
    print(f"key files: {', '.join(map(str, keys))}: mode 0600, owner {service_user(args.user).pw_name}")
    print(f"{config.source_path}: OK — site {config.site}, {len(config.devices)} devices, {points} points, "
          f"broker {config.broker.host}:{config.broker.port} ({config.broker.protocol})"
          + (f", thermal assets: {', '.join(a.asset for a in config.assets)}" if config.assets else "")
          + (f", writable: {', '.join(f'{c} → {w.id}' for c, (_, w) in config.writable_points().items())}"
             if config.writable_points() else ""))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from edge_agent.calibration import apply_calibration
    from edge_agent.config import config_path, load_config

    path = config_path(args.config)
    try:
        changed = apply_calibration(path, args.sensor_id, offset=args.offset, gain=args.gain)
    except OSError as exc:
        raise EdgeAgentError(f"config file {path}: {exc.strerror or exc}") from exc
    point = load_config(path, check_files=False).point(args.sensor_id)
    print(f"{args.sensor_id}: gain {point.gain:g}, offset {point.offset:g} "
          f"({'updated' if changed else 'unchanged, already set'}) in {path}")
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from edge_agent.audit import rotated_files, verify
    from edge_agent.config import config_path, load_config

    paths = [Path(p) for p in args.path] if args.path else \
        [load_config(config_path(args.config), check_files=False).audit.path]
    if args.rotated:
        if len(paths) != 1:
            raise EdgeAgentError("--rotated takes one audit log (its rotations are found beside it)")
        live = paths[0]
        paths = rotated_files(live)
        if not paths:
            raise EdgeAgentError(f"audit log {live}: neither it nor rotations of it exist")
    summary = verify(paths)
    for line in summary.lines():
        print(line)
    return 0 if summary.ok else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    from edge_agent.simulator import serve

    try:
        asyncio.run(serve(args.host, args.port, profile=args.profile, config=Path(args.config) if args.config else None,
                          pipelining=args.pipelining))
    except ValueError as exc:
        raise EdgeAgentError(str(exc)) from exc
    except OSError as exc:
        raise EdgeAgentError(f"simulator cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from exc
    return 0


def _first(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


_COMMANDS = {"run": _cmd_run, "check-config": _cmd_check_config, "calibrate": _cmd_calibrate,
             "simulate": _cmd_simulate}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, sys.stdout if args.log_stream == "stdout" else sys.stderr)
    command = _cmd_audit_verify if args.command == "audit" else _COMMANDS[args.command]
    try:
        return command(args)
    except EdgeAgentError as exc:
        print(f"ems-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ExceptionGroup as group:      # from the agent's task group: report our own errors as one line
        matched, rest = group.split(EdgeAgentError)
        if matched is None or rest is not None:
            raise
        print(f"ems-edge {args.command}: error: {_first(matched)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
