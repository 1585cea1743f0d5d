"""Helpers shared by the north-bound tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devenv.pki import CertPair, LocalPki

# Fast polling and an ephemeral status port for the service tests.
POLLING = """
[polling]
backoff_initial_s = 0.05
backoff_max_s = 0.4
max_poll_s = 2
default_post_s = 1
[http]
host = "127.0.0.1"
port = 0
"""


def _server_and_client(pki: LocalPki, client: CertPair, url: str) -> str:
    """The ``[server]`` and ``[client]`` sections every test config starts with."""
    return f"""[server]
url = "{url}"
ca = "{pki.ca}"

[client]
cert = "{client.cert}"
key = "{client.key}"
"""


def write_config(path: Path, pki: LocalPki, client: CertPair, *, url: str = "https://127.0.0.1:8443",
                 extra: str = "", mirror: str | None = None) -> Path:
    mirror = mirror if mirror is not None else (
        '[[mirror]]\nsite = "sub-07"\nasset = "meter1"\npoint = "p_total"\nreading = "active_power"\n')
    path.write_text(f"""
{_server_and_client(pki, client, url)}
[sites.sub-07]
pin = 111115

[sites.sub-08]
{extra}
{mirror}
""")
    return path


def write_broker_config(path: Path, pki: LocalPki, client: CertPair, *, url: str, broker_port: int,
                        broker_client: CertPair | None = None, sites: tuple[str, ...] = ("sub-07",),
                        broker_extra: str = "", extra: str = "") -> Path:
    """A north-bound config with the command path: 2030.5 server ``url``, the broker on ``broker_port``
    (``broker_client``'s certificate, else ``client``'s), the tests' fast polling, ``extra`` sections
    (e.g. ``[operator_api]``) and one ``[sites.<id>]`` per site."""
    mqtt = broker_client or client
    sections = "".join(f"[sites.{site}]\n" for site in sites)
    path.write_text(f"""
{_server_and_client(pki, client, url)}
[broker]
host = "127.0.0.1"
port = {broker_port}
ca = "{pki.ca}"
cert = "{mqtt.cert}"
key = "{mqtt.key}"
{broker_extra}
{extra}
{POLLING}
{sections}""")
    return path


def start_cli_registered(path: Path, server_state: Any, sites: int = 2) -> subprocess.Popen:
    """``ems-northbound run --config path`` as a process (stdout and stderr piped together), returned once
    the 2030.5 test server has ``sites`` registered devices; AssertionError after 30 s without them."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "northbound.cli", "run", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(server_state.devices) < sites and proc.poll() is None:
        time.sleep(0.1)
    if len(server_state.devices) < sites:
        proc.kill()
        out, _ = proc.communicate(timeout=20)
        raise AssertionError(f"the client did not register {sites} sites: {out.decode()[-2000:]}")
    return proc
