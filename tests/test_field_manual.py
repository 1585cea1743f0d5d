"""docs/field-manual.md is true: each row of its table has a check here, and each check runs.

Commands that run on this machine are run as the manual writes them (the scripts, ``ems-edge``,
``ems-northbound``); what needs a cluster is checked in the manifests ``emsctl preview --stack
local --render DIR`` writes, i.e. what ``kubectl`` would address.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from devenv.pki import LocalPki

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "field-manual.md"
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "edge_agent" / "examples" / "sensors.conf"
NS = "ems-system"


def _doc_ids() -> list[str]:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ") and not line.startswith("| id ")]
    return [row.split("|")[1].strip() for row in rows]


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(kind, namespace, name) → manifest, from ``emsctl preview --stack local --render DIR``."""
    out = tmp_path_factory.mktemp("render")
    result = _run([str(BIN / "emsctl"), "preview", "--stack", "local", "--render", str(out)], timeout=300)
    assert result.returncode == 0, result.stderr
    manifests = {}
    for path in out.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                meta = doc["metadata"]
                manifests[(doc["kind"], meta.get("namespace", ""), meta["name"])] = doc
    assert manifests
    return manifests


@pytest.fixture
def site(tmp_path: Path, pki: LocalPki) -> Path:
    """A copy of the example sensors.conf with its pki/ folder (key mode 0600)."""
    (tmp_path / "pki").mkdir()
    pair = pki.client("edge-sub-07")
    shutil.copyfile(pki.ca, tmp_path / "pki" / "ca.crt")
    shutil.copyfile(pair.cert, tmp_path / "pki" / "edge.crt")
    shutil.copyfile(pair.key, tmp_path / "pki" / "edge.key")
    os.chmod(tmp_path / "pki" / "edge.key", 0o600)
    conf = tmp_path / "sensors.conf"
    shutil.copyfile(EXAMPLE, conf)
    os.chmod(conf, 0o640)
    return conf


def _gateway(rendered: dict) -> tuple[dict, dict]:
    return rendered[("Deployment", NS, "ems-gateway")], rendered[("ConfigMap", NS, "ems-gateway-config")]


# --------------------------------------------------------------------------- one check per row


def check_calibrate(site: Path, rendered: dict) -> None:
    from edge_agent.config import load_config

    env = {"EMS_SENSORS_CONF": str(site), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    first = _run(["./scripts/calibrate_sensor.sh", "--id", "SENSOR_01", "--offset", "0.05"], env=env)
    assert first.returncode == 0 and "updated" in first.stdout, first.stderr
    assert load_config(site, check_files=False).point("SENSOR_01").offset == 0.05
    again = _run(["./scripts/calibrate_sensor.sh", "--id", "SENSOR_01", "--offset", "0.05"], env=env)
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stderr


def check_calibration_formula(site: Path, rendered: dict) -> None:
    from edge_agent.calibration import Calibration, calibrate
    from edge_agent.config import load_config

    env = {"EMS_SENSORS_CONF": str(site), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = _run(["./scripts/calibrate_sensor.sh", "--id", "SENSOR_01", "--offset", "0.05", "--gain", "1.02"], env=env)
    assert result.returncode == 0, result.stderr
    point = load_config(site, check_files=False).point("SENSOR_01")
    assert (point.gain, point.offset) == (1.02, 0.05)
    assert point.current_loop is None
    assert calibrate(point, 100.0, Calibration(point.gain, point.offset)) == (pytest.approx(100.0 * 1.02 + 0.05), "good")


def check_sensors_conf(site: Path, rendered: dict) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EMS_SENSORS_CONF"}
    result = subprocess.run([str(BIN / "ems-edge"), "check-config"], capture_output=True, text=True, timeout=60, env=env)
    if Path("/etc/ems/sensors.conf").exists():
        assert "/etc/ems/sensors.conf" in result.stdout + result.stderr
    else:
        assert result.returncode == 2 and "/etc/ems/sensors.conf" in result.stderr, result.stderr
    ok = _run([str(BIN / "ems-edge"), "check-config"], env={"EMS_SENSORS_CONF": str(site)})
    assert ok.returncode == 0 and str(site) in ok.stdout, ok.stderr


def check_key_files(site: Path, rendered: dict) -> None:
    key = site.parent / "pki" / "edge.key"
    os.chmod(key, 0o644)
    refused = _run([str(BIN / "ems-edge"), "check-config", "--config", str(site)])
    assert refused.returncode == 2 and f"run: chmod 600 {key}" in refused.stderr, refused.stderr
    os.chmod(key, 0o600)
    accepted = _run([str(BIN / "ems-edge"), "check-config", "--config", str(site)])
    assert accepted.returncode == 0, accepted.stderr
    other = "nobody"                      # not the owner: the service user of the box would be `ems`
    refused = _run([str(BIN / "ems-edge"), "check-config", "--config", str(site), "--user", other])
    assert refused.returncode == 2 and f"run: chown {other}:" in refused.stderr and str(key) in refused.stderr


def check_audit_log(site: Path, rendered: dict) -> None:
    from edge_agent.config import AuditConfig

    assert str(AuditConfig().path) == "/var/log/ems/telemetry-audit.log"
    deploy, conf = _gateway(rendered)
    assert 'path = "/var/log/ems/telemetry-audit.log"' in conf["data"]["sensors.conf"]
    pod = deploy["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/var/log/ems"]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", NS, claim) in rendered and not mount.get("readOnly")
    _audit_log_on_the_box()


def _edge_unit() -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in (ROOT / "packaging" / "edge-deb" / "ems-edge.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            keys[name] = value
    return keys


def _audit_log_on_the_box() -> None:
    unit = _edge_unit()
    assert unit["User"] == "ems" and unit["ProtectSystem"] == "strict" and unit["LogsDirectory"] == "ems"
    rotate = (ROOT / "packaging" / "edge-deb" / "ems-edge.logrotate").read_text()
    assert rotate.startswith("# ") and "\n/var/log/ems/telemetry-audit.log {" in rotate
    assert "create 0640 ems ems" in rotate and "copytruncate" not in rotate.split("{", 1)[1]
    assert "/usr/lib/ems-edge/reopen-audit-log" in rotate


def check_gateway_logs(site: Path, rendered: dict) -> None:
    deploy, conf = _gateway(rendered)
    assert deploy["kind"] == "Deployment" and deploy["metadata"]["namespace"] == NS
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["--log-stream", "stdout", "run"]
    # The agent writes no log file: nothing in its config names one.
    assert "log" not in re.sub(r"(telemetry-audit\.log|/var/log/ems)", "", conf["data"]["sensors.conf"])


def check_gateway_restart(site: Path, rendered: dict) -> None:
    deploy, _ = _gateway(rendered)
    assert deploy["spec"]["strategy"] == {"type": "Recreate"} and deploy["spec"]["replicas"] == 1
    pod = deploy["spec"]["template"]["spec"]
    [spool] = [v for v in pod["volumes"] if v["name"] == "spool"]
    assert ("PersistentVolumeClaim", NS, spool["persistentVolumeClaim"]["claimName"]) in rendered
    runtime = ROOT / "tests" / "program" / "test_ems_gateway_runtime.py"
    assert "loses_nothing_across_a_restart" in runtime.read_text()


def check_rs485_gateways(site: Path, rendered: dict) -> None:
    import tomllib

    _, conf = _gateway(rendered)
    devices = tomllib.loads(conf["data"]["sensors.conf"])["devices"]
    assert devices and all(d["transport"] in ("tcp", "rtu-over-tcp") for d in devices)
    policy = rendered[("NetworkPolicy", NS, "ems-gateway")]
    modbus = [rule for rule in policy["spec"]["egress"] if any(p["port"] == d["port"] for p in rule["ports"] for d in devices)]
    assert {rule["to"][0]["ipBlock"]["cidr"] for rule in modbus} == {f"{d['host']}/32" for d in devices}


def check_ports(site: Path, rendered: dict) -> None:
    services = [m for (kind, _, _), m in rendered.items() if kind == "Service"]
    external = {p["port"] for s in services if s["spec"].get("type") in ("LoadBalancer", "NodePort") for p in s["spec"]["ports"]}
    assert external == {8883, 443}
    # 1883 plain MQTT stays inside: on the broker pod's loopback (kubectl exec / port-forward), in no Service.
    assert 1883 not in {p["port"] for s in services for p in s["spec"]["ports"]}
    conf = rendered[("ConfigMap", NS, "broker-config")]["data"]["mosquitto.conf"]
    assert "\nlistener 1883 127.0.0.1\n" in conf


def check_sysctls(site: Path, rendered: dict) -> None:
    ingest = rendered[("StatefulSet", NS, "ingest")]
    sysctls = {s["name"]: s["value"] for s in ingest["spec"]["template"]["spec"]["securityContext"]["sysctls"]}
    assert sysctls == {"net.core.somaxconn": "1024", "net.ipv4.tcp_fin_timeout": "15"}


def check_tcp_low_latency(site: Path, rendered: dict) -> None:
    assert "tcp_low_latency" not in yaml.safe_dump(list(rendered.values()))


def check_north_bound(site: Path, rendered: dict) -> None:
    result = _run([str(BIN / "ems-northbound"), "--help"])
    assert result.returncode == 0 and "2030.5" in result.stdout, result.stdout + result.stderr


CHECKS: dict[str, Callable[[Path, dict], None]] = {
    name[len("check_"):].replace("_", "-"): fn for name, fn in dict(globals()).items() if name.startswith("check_")
}


def test_every_row_has_a_check_and_every_check_a_row() -> None:
    ids = _doc_ids()
    assert len(ids) == len(set(ids)), ids
    assert sorted(ids) == sorted(CHECKS)


@pytest.mark.parametrize("row", _doc_ids())
def test_the_manual_row_holds(row: str, site: Path, rendered: dict) -> None:
    CHECKS[row](site, rendered)
