"""``make demo``'s third step as a process: the telemetry pipeline, the alert step and the north-bound step
end ``RESULT: OK``.

Real services on 127.0.0.1 (Mosquitto with the generated roles, Prometheus with the generated alert rules,
Alertmanager, the simulator, the edge agent, the ingest, the twin API, the 2030.5 test server,
``ems-northbound``). The assertions read what the demo printed from the services themselves: the server's
records, the register read back over Modbus, Alertmanager's alerts and the twin API's alert list.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from components.alerts import alert_rules
from edge_agent.audit import read_audit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_shows_the_alert_and_north_bound_steps_and_ends_ok(tmp_path: Path) -> None:
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
    # The alert step: E04 raised in the simulator → EmsPlcFault firing in Alertmanager with the fault-code map's
    # labels → on the operator page's list → cleared → resolved.
    assert re.search(r"^alert: EmsPlcFault firing in Alertmanager \d+\.\d+s later: E04 over-voltage \(critical\) "
                     r"on sub-07/tx1/relay_fault$", out, re.M), out
    assert "       summary: E04 over-voltage on sub-07/tx1/relay_fault\n" in out
    assert re.search(r"^twin API> GET /v1/alerts \(the operator page's alert list\) → \d+ firing \([^)]*EmsPlcFault[^)]*\), "
                     r"EmsPlcFault E04 among them$", out, re.M), out
    assert re.search(r"^simulator: E04 cleared → EmsPlcFault resolved in Alertmanager \d+\.\d+s later$", out, re.M), out
    assert re.search(r"^Alertmanager:  http://127\.0\.0\.1:\d+/#/alerts$", out, re.M), out
    # The relay really reported 4 and then 0 (the agent's audit log), Prometheus loaded the generated rules,
    # and the twin API was pointed at the demo's Alertmanager.
    relay = [r["value"] for _, r in sorted(read_audit(tmp_path / "site" / "telemetry-audit.log").readings.items())
             if (r["asset"], r["point"]) == ("tx1", "relay_fault")]
    assert 4.0 in relay and relay[-1] == 0.0, relay
    assert (tmp_path / "alertmanager" / "ems-alerts.yml").read_text() == alert_rules()
    assert str(tmp_path / "alertmanager" / "ems-alerts.yml") in (tmp_path / "prometheus" / "prometheus.yml").read_text()
    assert re.search(r'^alertmanager_url = "http://127\.0\.0\.1:\d+"$',
                     (tmp_path / "twin-api" / "ingest.toml").read_text(), re.M)
