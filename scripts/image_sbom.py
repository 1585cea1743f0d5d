"""Writes an SPDX 2.3 JSON SBOM of a container image's root filesystem to stdout.

Runs inside the image build (Dockerfile, runtime stages) with the image's own interpreter and the
standard library only: the Debian packages come from dpkg's status database, the Python
distributions from the ``.dist-info`` directories of the virtualenv. Every package carries its
version and a purl (``pkg:deb/debian/…``, ``pkg:pypi/…``) so scanners can match advisories.

Usage: ``python3 image_sbom.py --name edge-agent --venv /opt/ems/venv [--root /] > sbom.spdx.json``
"""

from __future__ import annotations

import argparse
import email.parser
import json
import re
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path


def debian_packages(root: Path) -> list[tuple[str, str, str]]:
    """``(name, version, architecture)`` of every installed package in ``var/lib/dpkg/status``."""
    status = root / "var/lib/dpkg/status"
    found = []
    for stanza in status.read_text(encoding="utf-8").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            found.append((fields["Package"], fields.get("Version", ""), fields.get("Architecture", "")))
    return sorted(found)


def python_distributions(venv: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of every distribution installed in the virtualenv."""
    found = []
    for metadata in venv.glob("lib/python3*/site-packages/*.dist-info/METADATA"):
        headers = email.parser.Parser().parsestr(metadata.read_text(encoding="utf-8"), headersonly=True)
        found.append((headers["Name"], headers["Version"]))
    return sorted(found, key=lambda d: d[0].lower())


def _spdx_id(kind: str, name: str) -> str:
    return "SPDXRef-" + kind + "-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def sbom(name: str, root: Path, venv: Path) -> dict:
    """The SPDX document: one package per Debian package and per Python distribution."""
    packages = []
    for pkg, version, arch in debian_packages(root):
        packages.append({
            "SPDXID": _spdx_id("deb", pkg), "name": pkg, "versionInfo": version, "downloadLocation": "NOASSERTION",
            "supplier": "Organization: Debian",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": f"pkg:deb/debian/{pkg}@{version}?arch={arch}&distro=debian-12"}],
        })
    for dist, version in python_distributions(venv):
        normal = re.sub(r"[-_.]+", "-", dist).lower()
        packages.append({
            "SPDXID": _spdx_id("pypi", normal), "name": dist, "versionInfo": version, "downloadLocation": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": f"pkg:pypi/{normal}@{version}"}],
        })
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"ems-platform-{name}",
        "documentNamespace": f"https://spdx.org/spdxdocs/ems-platform-{name}-{uuid.uuid4()}",
        "creationInfo": {"created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "creators": ["Tool: ems-platform-image_sbom"]},
        "packages": packages,
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                           "relatedSpdxElement": p["SPDXID"]} for p in packages],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="image name, e.g. edge-agent")
    parser.add_argument("--venv", required=True, type=Path, help="the image's virtualenv")
    parser.add_argument("--root", default=Path("/"), type=Path, help="root filesystem (default /)")
    args = parser.parse_args(argv)
    document = sbom(args.name, args.root, args.venv)
    if not any(p["SPDXID"].startswith("SPDXRef-pypi-") for p in document["packages"]):
        print(f"error: no Python distribution under --venv {args.venv}", file=sys.stderr)
        return 1
    json.dump(document, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
