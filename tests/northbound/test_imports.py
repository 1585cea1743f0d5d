"""ems-northbound runs in its own image: it must never import pulumi (nor the edge agent or the ingest).

paho is its own dependency since the control path: commands go to the broker (``northbound.command_link``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, pkgutil, sys
import northbound
for info in pkgutil.walk_packages(northbound.__path__, "northbound."):
    importlib.import_module(info.name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_northbound_imports_no_pulumi_nor_other_runtimes() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert {"httpx", "envoy_schema", "lxml", "prometheus_client", "paho", "northbound"} <= loaded   # the probe saw them
    assert not loaded & {"pulumi", "pulumi_kubernetes", "pulumi_aws", "edge_agent", "ingest", "pymodbus"}
