"""A renewed 2030.5 client certificate reaches the client: it stops cleanly and asks to be started again.

The certificate is the client's identity at the server (LFDI/SFDI), and an existing Secret
(``ems:northbound.clientSecret``) is not known to the Pulumi program, so no pod-template digest can follow it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from devenv.pki import CertPair, LocalPki
from devenv.sep2_server import Sep2TestServer
from northbound.config import load_config
from northbound.service import RESTART_EXIT, NorthboundService
from tests.northbound.nb_helpers import POLLING, start_cli_registered, write_config
from tests.northbound.test_service import FixedSource, RecordingSink


def _live_config(tmp_path: Path, pki: LocalPki, aggregator: CertPair, url: str) -> tuple[Path, CertPair]:
    """A config whose client certificate and key are copies this test may replace."""
    live = CertPair(tmp_path / "tls.crt", tmp_path / "tls.key")
    shutil.copyfile(aggregator.cert, live.cert)
    shutil.copyfile(aggregator.key, live.key)
    path = write_config(tmp_path / "nb.toml", pki, live, url=url, mirror="")
    path.write_text(path.read_text().replace("pin = 111115\n", "pin = 111115\n" + POLLING, 1))
    return path, live


def _install(new: CertPair, live: CertPair) -> None:
    """Replace the live pair as an atomic rename each (the key first, as an operator would)."""
    for source, target in ((new.key, live.key), (new.cert, live.cert)):
        shutil.copyfile(source, target.with_suffix(".new"))
        os.replace(target.with_suffix(".new"), target)


def test_a_pair_that_does_not_match_is_refused_and_a_renewed_one_stops_the_loop(
        sep2_server: Sep2TestServer, pki: LocalPki, aggregator: CertPair, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    path, live = _live_config(tmp_path, pki, aggregator, sep2_server.url)
    service = NorthboundService(load_config(path), source=FixedSource(), sink=RecordingSink(), cert_check_s=0.2)
    renewed = pki.client("ems-northbound-renewed")

    async def go() -> tuple[bool, bool]:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(sep2_server.state.devices) < 2:
            await asyncio.sleep(0.1)
        assert len(sep2_server.state.devices) == 2, "the client did not register both sites"
        shutil.copyfile(pki.client("someone-else").key, live.key)          # a key of another certificate
        await asyncio.sleep(1.5)
        running_after_mismatch = not runner.done()
        _install(renewed, live)
        try:
            await asyncio.wait_for(runner, 10)
        finally:
            stop.set()
        return running_after_mismatch, service.restart_required

    with caplog.at_level(logging.WARNING, logger="northbound.service"):
        running_after_mismatch, restart = asyncio.run(go())
    assert running_after_mismatch and restart
    refusals = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(refusals) == 1 and str(live.key) in refusals[0].getMessage()
    assert any(f"2030.5 client certificate {live.cert} changed" in r.getMessage() for r in caplog.records)


def test_touching_the_files_is_no_renewal(sep2_server: Sep2TestServer, pki: LocalPki, aggregator: CertPair,
                                          tmp_path: Path) -> None:
    path, live = _live_config(tmp_path, pki, aggregator, sep2_server.url)
    service = NorthboundService(load_config(path), source=FixedSource(), sink=RecordingSink(), cert_check_s=0.2)

    async def go() -> bool:
        stop = asyncio.Event()
        runner = asyncio.create_task(service.run(stop))
        await asyncio.sleep(1.0)
        _install(CertPair(aggregator.cert, aggregator.key), live)            # same bytes, new inodes
        await asyncio.sleep(1.5)
        done = runner.done()
        stop.set()
        await asyncio.wait_for(runner, 10)
        return done
    assert asyncio.run(go()) is False and service.restart_required is False


def test_run_exits_with_the_restart_status_after_a_renewal(sep2_server: Sep2TestServer, pki: LocalPki,
                                                           aggregator: CertPair, tmp_path: Path) -> None:
    path, live = _live_config(tmp_path, pki, aggregator, sep2_server.url)
    proc = start_cli_registered(path, sep2_server.state)
    try:
        _install(pki.client("ems-northbound-renewed"), live)
        out, _ = proc.communicate(timeout=30)         # the default check interval is 5 s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
    assert proc.returncode == RESTART_EXIT, out.decode()[-2000:]
    assert b"Traceback" not in out
