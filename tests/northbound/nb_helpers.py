"""Helpers shared by the north-bound tests."""

from __future__ import annotations

from pathlib import Path

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


def write_config(path: Path, pki: LocalPki, client: CertPair, *, url: str = "https://127.0.0.1:8443",
                 extra: str = "", mirror: str | None = None) -> Path:
    mirror = mirror if mirror is not None else (
        '[[mirror]]\nsite = "sub-07"\nasset = "meter1"\npoint = "p_total"\nreading = "active_power"\n')
    path.write_text(f"""
[server]
url = "{url}"
ca = "{pki.ca}"

[client]
cert = "{client.cert}"
key = "{client.key}"

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
[server]
url = "{url}"
ca = "{pki.ca}"
[client]
cert = "{client.cert}"
key = "{client.key}"
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
