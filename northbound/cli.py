"""``ems-northbound``: the IEEE 2030.5 north-bound client's command line.

::

    ems-northbound identity --cert FILE [--json]          LFDI and SFDI of a PEM or DER certificate
    ems-northbound identity --fingerprint HEX [--json]    ... of a certificate's SHA-256 fingerprint
    ems-northbound identity [--lfdi HEX] [--sfdi N] [--json]
                                                          check identifiers (both given: they must match)
    ems-northbound check-config --config PATH             validate the config, print a summary
    ems-northbound run --config PATH                      run the client until SIGTERM/SIGINT

``--json`` prints one object ``{"lfdi": …, "sfdi": …, "valid": …}`` (plus
``"error"`` when invalid). Exit codes: 0 ok, 1 an identifier is invalid, 2 any
other expected error (bad config, unreadable certificate) as one line on
stderr. This is the only module that configures logging: readable lines on a
terminal, JSON lines otherwise. Keys and payloads are never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from ems_runtime.log_setup import configure_logging
from ems_runtime.version import version_text
from northbound.identity import (
    DeviceIdentity, IdentityError, identity_from_certificate, identity_from_fingerprint, parse_fingerprint,
    parse_lfdi, parse_sfdi, sfdi_from_lfdi,
)

__all__ = ["main"]

log = logging.getLogger("northbound.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ems-northbound", description="IEEE 2030.5 north-bound client.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=version_text("ems-northbound"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ident = sub.add_parser("identity", help="compute or check LFDI/SFDI (IEEE 2030.5 §6.3.4)")
    source = ident.add_mutually_exclusive_group()
    source.add_argument("--cert", metavar="FILE", help="certificate, PEM or DER")
    source.add_argument("--fingerprint", metavar="HEX", help="the certificate's SHA-256, 64 hex digits")
    ident.add_argument("--lfdi", metavar="HEX", help="an LFDI to check (40 hex digits)")
    ident.add_argument("--sfdi", metavar="N", help="an SFDI to check (decimal, with check digit)")
    ident.add_argument("--json", action="store_true", help="print one JSON object")
    for name, text in (("check-config", "validate the config and exit"), ("run", "run the client")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="northbound TOML config")
    return parser


def _identity(args: argparse.Namespace) -> int:
    """Print LFDI/SFDI; exit 1 when an identifier given to check is invalid, 2 when the input is unusable."""
    if not (args.cert or args.fingerprint or args.lfdi or args.sfdi):
        print("ems-northbound identity: give --cert, --fingerprint, --lfdi or --sfdi", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"lfdi": None, "sfdi": None, "valid": True}
    try:
        if args.cert:
            try:
                data = Path(args.cert).read_bytes()
            except OSError as exc:
                print(f"ems-northbound identity: cannot read --cert {args.cert}: {exc.strerror or exc}", file=sys.stderr)
                return 2
            computed: DeviceIdentity | None = identity_from_certificate(data)
        elif args.fingerprint:
            computed = identity_from_fingerprint(parse_fingerprint(args.fingerprint))
        else:
            computed = None
    except IdentityError as exc:
        print(f"ems-northbound identity: {exc}", file=sys.stderr)
        return 2
    if computed is not None:
        result.update(lfdi=computed.lfdi, sfdi=computed.sfdi)
    try:
        if args.lfdi is not None:
            lfdi = parse_lfdi(args.lfdi)
            if computed is not None and lfdi != computed.lfdi:
                raise IdentityError("lfdi", args.lfdi, f"does not match the certificate's {computed.lfdi}")
            result.update(lfdi=lfdi, sfdi=result["sfdi"] if computed else sfdi_from_lfdi(lfdi))
        if args.sfdi is not None:
            sfdi = parse_sfdi(args.sfdi)
            if result["sfdi"] is not None and sfdi != result["sfdi"]:
                raise IdentityError("sfdi", args.sfdi, f"does not match the LFDI's SFDI {result['sfdi']}")
            result["sfdi"] = sfdi
    except IdentityError as exc:
        result.update(valid=False, error=str(exc))
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("lfdi", "sfdi"):
            if result[key] is not None:
                print(f"{key}: {result[key]}")
        print("valid" if result["valid"] else f"invalid: {result['error']}")
    return 0 if result["valid"] else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "identity":
        return _identity(args)
    configure_logging(args.log_level)
    from northbound.config import load_config
    from northbound.errors import NorthboundError
    try:
        config = load_config(Path(args.config))
        if args.command == "check-config":
            print(config.summary())
            return 0
        return _run(config)
    except NorthboundError as exc:
        print(f"ems-northbound: {exc}", file=sys.stderr)
        return 2


def _run(config: Any) -> int:
    """Run the client until SIGTERM or SIGINT; 0 on a clean stop, ``RESTART_EXIT`` after a renewed client certificate."""
    from northbound.service import RESTART_EXIT, NorthboundService

    async def serve() -> bool:
        service = NorthboundService(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)
        return service.restart_required

    return RESTART_EXIT if asyncio.run(serve()) else 0


if __name__ == "__main__":
    sys.exit(main())
