"""The edge agent and ingest images carry only their runtime dependencies (Dockerfile).

Every module of ``ems_contract``, ``ems_runtime``, ``edge_agent`` and ``ingest`` is imported in a fresh interpreter;
the third-party top-level packages it loads must be among those the Dockerfile
installs — in particular never ``pulumi`` (the edge image stays small).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top-level import names of the distributions the Dockerfile's base stage installs (and their own deps).
RUNTIME = {"pymodbus", "paho", "prometheus_client", "cramjam", "tomlkit", "google"}

PROBE = r"""
import importlib, pkgutil, sys
before = set(sys.modules)
for package in ("ems_contract", "ems_runtime", "edge_agent", "ingest"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
stdlib = set(sys.stdlib_module_names)
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
print(" ".join(sorted(n for n in loaded if n not in stdlib and not n.startswith("_") and n not in ("ems_contract", "ems_runtime", "edge_agent", "ingest"))))
"""


def test_runtime_packages_import_only_their_image_dependencies() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    third_party = set(out.stdout.split())
    assert "pulumi" not in third_party
    assert third_party <= RUNTIME, f"imports outside the image's dependencies: {sorted(third_party - RUNTIME)}"
    # The probe must have seen the real dependencies, or it proves nothing.
    assert {"pymodbus", "paho", "prometheus_client"} <= third_party


def test_dockerfile_installs_exactly_those_distributions() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pattern = re.search(r"grep -E '\^\(([^)]*)\)==' requirements\.txt", dockerfile)
    assert pattern, "the Dockerfile no longer selects runtime pins from requirements.txt"
    wanted = set(pattern.group(1).split("|"))
    pinned = {line.split("==")[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    assert wanted <= pinned, f"the Dockerfile selects unpinned distributions: {sorted(wanted - pinned)}"
