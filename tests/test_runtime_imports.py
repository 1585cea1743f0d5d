"""The edge agent, ingest and north-bound images carry only their runtime dependencies (Dockerfile).

Every module of ``ems_contract``, ``ems_runtime`` and ``edge_agent`` (then ``ingest``) is imported in a fresh interpreter;
the third-party top-level packages it loads must be among those the Dockerfile
installs — in particular never ``pulumi`` (the edge image stays small). The same for
``northbound`` (its own image target) against the distributions its stage installs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top-level import names of the distributions the Dockerfile's edge stage installs (and their own deps);
# cryptography also reads certificate expiry (ems_runtime/cert_expiry.py).
# cython_runtime: uvloop's compiled modules.
RUNTIME = {"pymodbus", "paho", "prometheus_client", "cramjam", "orjson", "uvloop", "cython_runtime", "tomlkit", "google",
           "jwt", "cryptography"}
# The ingest stage adds numpy (its column paths); the edge agent's image does not carry it.
INGEST_RUNTIME = RUNTIME | {"numpy"}

# Top-level import names of the north-bound stage's distributions (cython_runtime: lxml's compiled modules).
NORTHBOUND_RUNTIME = {"httpx", "httpcore", "h11", "anyio", "idna", "certifi", "envoy_schema", "pydantic", "pydantic_core",
                      "pydantic_xml", "lxml", "annotated_types", "typing_inspection", "typing_extensions",
                      "cryptography", "cffi", "paho", "prometheus_client", "orjson", "cython_runtime"}

PROBE_TEMPLATE = r"""
import importlib, pkgutil, sys
before = set(sys.modules)
packages = PACKAGES
for package in packages:
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
stdlib = set(sys.stdlib_module_names)
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
print(" ".join(sorted(n for n in loaded if n not in stdlib and not n.startswith("_") and n not in packages)))
"""
PROBE = PROBE_TEMPLATE.replace("PACKAGES", repr(("ems_contract", "ems_runtime", "edge_agent")))
INGEST_PROBE = PROBE_TEMPLATE.replace("PACKAGES", repr(("ems_contract", "ems_runtime", "ingest")))
NORTHBOUND_PROBE = PROBE_TEMPLATE.replace("PACKAGES", repr(("ems_contract", "ems_runtime", "northbound")))


def test_northbound_imports_only_its_image_dependencies() -> None:
    out = subprocess.run([sys.executable, "-c", NORTHBOUND_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    third_party = set(out.stdout.split())
    assert not third_party & {"pulumi", "pymodbus", "edge_agent", "ingest"}
    assert third_party <= NORTHBOUND_RUNTIME, f"imports outside the image's dependencies: {sorted(third_party - NORTHBOUND_RUNTIME)}"
    assert {"httpx", "envoy_schema", "lxml", "paho", "cryptography", "prometheus_client"} <= third_party


def test_runtime_packages_import_only_their_image_dependencies() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    third_party = set(out.stdout.split())
    assert "pulumi" not in third_party
    assert third_party <= RUNTIME, f"imports outside the image's dependencies: {sorted(third_party - RUNTIME)}"
    # The probe must have seen the real dependencies, or it proves nothing.
    assert {"pymodbus", "paho", "prometheus_client"} <= third_party


def test_ingest_imports_only_its_image_dependencies() -> None:
    out = subprocess.run([sys.executable, "-c", INGEST_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    third_party = set(out.stdout.split())
    assert "pulumi" not in third_party
    assert third_party <= INGEST_RUNTIME, f"imports outside the image's dependencies: {sorted(third_party - INGEST_RUNTIME)}"
    assert {"numpy", "paho", "prometheus_client"} <= third_party


def test_dockerfile_installs_exactly_those_distributions() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Each -build stage runs scripts/image-venv.sh with its package list, built from the global ARGs.
    lists = dict(re.findall(r"^ARG (\w+_PACKAGES)=(\S+)$", dockerfile, re.MULTILINE))
    calls = re.findall(r'^FROM builder AS (\S+)-build\n(?:ARG \w+\n)*RUN sh image-venv\.sh "([^"]+)"', dockerfile, re.MULTILINE)
    assert [stage for stage, _ in calls] == ["edge", "ingest", "northbound"], \
        "the Dockerfile no longer selects runtime pins with image-venv.sh (edge, ingest, northbound)"
    patterns = [re.sub(r"\$\{(\w+)\}", lambda m: lists[m.group(1)], arg) for _, arg in calls]
    pinned = {line.split("==")[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    for pattern in patterns:
        wanted = set(pattern.split("|"))
        assert wanted <= pinned, f"the Dockerfile selects unpinned distributions: {sorted(wanted - pinned)}"
    # The north-bound stage installs with --no-deps: every distribution its imports need must be listed.
    from importlib.metadata import packages_distributions
    dists = packages_distributions()
    needed = {d.lower().replace("_", "-") for name in NORTHBOUND_RUNTIME - {"cython_runtime"} for d in dists.get(name, [name])}
    assert needed <= set(patterns[2].split("|")), sorted(needed - set(patterns[2].split("|")))
    assert set(patterns[1].split("|")) == set(patterns[0].split("|")) | {"numpy"}, "ingest = the edge's pins and numpy"


def test_image_venv_refuses_a_package_list_that_requirements_txt_does_not_pin(tmp_path: Path) -> None:
    """A misspelt or unpinned name stops the image build before pip runs (grep alone would skip it silently)."""
    (tmp_path / "requirements.txt").write_text("pymodbus==3.11.1\norjson==3.10.0\n")
    out = subprocess.run(["sh", str(ROOT / "scripts/image-venv.sh"), "pymodbus|orjsn"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == "image-venv.sh: requirements.txt pins 1 of the 2 distributions in 'pymodbus|orjsn'"
    assert not (tmp_path / "venv").exists()
