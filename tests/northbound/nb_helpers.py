"""Helpers shared by the north-bound tests."""

from __future__ import annotations

from pathlib import Path

from devenv.pki import CertPair, LocalPki


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
