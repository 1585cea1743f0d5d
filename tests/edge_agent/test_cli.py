"""``ems-edge`` as a new user meets it: every expected error is one line on stderr and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.demo_edge import write_agent_config
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import LocalPki, make_pki

ROOT = Path(__file__).resolve().parents[2]


def ems_edge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    # `run` logs JSON lines to stderr before it fails (no TTY); the error itself is one plain line
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith('{"ts": ')]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ems-edge {command}: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def config(tmp_path: Path, pki: LocalPki) -> Path:
    return write_agent_config(tmp_path / "site", pki, broker_port=free_port(), modbus_port=free_port())


def test_check_config_ok(config: Path) -> None:
    result = ems_edge("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: OK — site sub-07, 6 devices" in result.stdout
    assert result.stdout.rstrip().endswith(", thermal assets: tx1, writable: exp_lim_w → PV1_EXPORT_LIMIT")


def test_config_from_environment_variable(config: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check-config"], capture_output=True,
                            text=True, cwd=ROOT, env=dict(os.environ, EMS_SENSORS_CONF=str(config)), timeout=60)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_broken_toml(config: Path) -> None:
    config.write_text(config.read_text().replace('site = "sub-07"', 'site = "sub-07'))
    line = _one_line_error(ems_edge("check-config", "--config", str(config)), "check-config")
    assert "is not valid TOML" in line


def test_world_readable_key_is_refused_by_run_and_check(config: Path) -> None:
    os.chmod(config.parent / "pki" / "edge.key", 0o644)
    for command in ("check-config", "run"):
        line = _one_line_error(ems_edge(command, "--config", str(config)), command)
        assert "broker.key" in line and "mode 0644" in line and "chmod 600" in line


def test_world_writable_config_is_refused(config: Path) -> None:
    os.chmod(config, 0o666)
    line = _one_line_error(ems_edge("check-config", "--config", str(config)), "check-config")
    assert line.endswith(f"config file: {str(config)!r} is writable by other users (mode 0666); "
                         f"run: chmod o-w {config}")


def test_missing_config_file(tmp_path: Path) -> None:
    line = _one_line_error(ems_edge("check-config", "--config", str(tmp_path / "nope.conf")), "check-config")
    assert "cannot be read (No such file or directory)" in line


@pytest.mark.integration
def test_run_against_a_broker_refusing_the_certificate(tmp_path: Path, broker: MosquittoBroker) -> None:
    rogue = make_pki(tmp_path / "rogue", ca_name="rogue-ca")
    # the broker's CA for the server, but a client certificate from a CA the broker does not trust
    real_ca = broker.pki.ca
    config = write_agent_config(tmp_path / "site", rogue, broker_port=broker.tls_port, modbus_port=free_port())
    (config.parent / "pki" / "ca.crt").write_bytes(real_ca.read_bytes())
    result = ems_edge("run", "--config", str(config), timeout=60)
    line = _one_line_error(result, "run")
    assert line == (f"ems-edge run: error: broker 127.0.0.1:{broker.tls_port} refused the client certificate "
                    f"{config.parent / 'pki' / 'edge.crt'} (TLS: tlsv1 alert unknown ca)")


def test_log_stream_stdout_moves_the_log_lines_and_leaves_errors_on_stderr(tmp_path: Path,
                                                                            broker: MosquittoBroker) -> None:
    """The in-cluster gateway runs with `--log-stream stdout`: JSON log lines on stdout, the one-line error on stderr."""
    import json

    rogue = make_pki(tmp_path / "rogue", ca_name="rogue-ca")
    config = write_agent_config(tmp_path / "site", rogue, broker_port=broker.tls_port, modbus_port=free_port())
    (config.parent / "pki" / "ca.crt").write_bytes(broker.pki.ca.read_bytes())
    result = ems_edge("--log-stream", "stdout", "run", "--config", str(config), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("ems-edge run: error: broker 127.0.0.1:") and len(result.stderr.strip().splitlines()) == 1
    logs = [json.loads(line) for line in result.stdout.splitlines()]
    assert logs and all({"ts", "level", "logger", "msg"} <= set(entry) for entry in logs)


def test_calibrate_is_atomic_idempotent_and_checked(config: Path) -> None:
    result = ems_edge("calibrate", "--config", str(config), "--id", "SENSOR_01", "--offset", "0.05")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SENSOR_01: gain 1, offset 0.05 (updated)")
    again = ems_edge("calibrate", "--config", str(config), "--id", "SENSOR_01", "--offset", "0.05")
    assert again.returncode == 0 and "(unchanged, already set)" in again.stdout
    line = _one_line_error(ems_edge("calibrate", "--config", str(config), "--id", "NOPE_99", "--gain", "2"),
                           "calibrate")
    assert "NOPE_99" in line
    bad = ems_edge("calibrate", "--config", str(config), "--id", "SENSOR_01", "--offset", "nan")
    assert bad.returncode == 2 and "must be a finite number" in bad.stderr


def test_simulate_rejects_a_bad_profile() -> None:
    line = _one_line_error(ems_edge("simulate", "--port", "0", "--profile", "bench:ten"), "simulate")
    assert "bench:ten" in line


def test_usage_errors_exit_2() -> None:
    result = ems_edge("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr
