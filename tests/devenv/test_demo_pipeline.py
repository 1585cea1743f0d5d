"""``make demo``'s third step as a process: the telemetry pipeline and the north-bound step end ``RESULT: OK``.

Real services on 127.0.0.1 (Mosquitto with the generated roles, Prometheus, the simulator, the edge agent,
the ingest, the twin API, the 2030.5 test server, ``ems-northbound``). The assertions read what the demo
printed from the services themselves: the server's records and the register read back over Modbus.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_shows_the_north_bound_step_and_ends_ok(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "devenv.demo_pipeline", "--seconds", "6", "--workdir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = run.stdout
    assert run.returncode == 0 and "\nRESULT: OK\n" in out, out[-4000:] + run.stderr[-2000:]
    assert "cipher(s) negotiated: ECDHE-ECDSA-AES128-CCM8\n" in out
    assert re.search(r"EndDevice /edev/1 registered by the client: LFDI [0-9A-F]{40}, SFDI \d{1,12} \(site sub-07\)", out)
    for point in ("pv1/active_power", "feeder1/voltage", "tx1/energy"):
        assert re.search(rf"^    {re.escape(point)} +value -?\d+ ", out, re.M), point
    assert re.search(r"read back over Modbus: 5000 W \(before the step: (?!5000 )", out), out
    assert "Responses recorded by the server: 1 received, 2 started" in out
    assert "lost: 0; duplicated: 0" in out
    # The broker ran the generated roles: its config loads the dynamic-security plugin with the demo's file.
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert "mosquitto_dynamic_security.so" in conf and "use_username_as_clientid true" in conf
