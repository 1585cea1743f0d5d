"""``ems-edge check-config`` audits the key files: mode 0600, owned by the service user, and names the fix."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.demo_edge import write_agent_config
from devenv.mosquitto import free_port
from devenv.pki import LocalPki

ROOT = Path(__file__).resolve().parents[2]
ME = pwd.getpwuid(os.geteuid())
OTHER = pwd.getpwnam("nobody")          # present on every Debian system, never the test's own user


def check_config(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", "check-config", "--config", str(config), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture
def config(pki: LocalPki, tmp_path: Path) -> Path:
    return write_agent_config(tmp_path / "site", pki, broker_port=free_port(), modbus_port=free_port())


def test_keys_of_the_current_user_at_0600_pass(config: Path) -> None:
    key = config.parent / "pki" / "edge.key"
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    assert f"key files: {key}: mode 0600, owner {ME.pw_name}" in result.stdout


def test_a_group_readable_key_is_refused_with_the_fix(config: Path) -> None:
    key = config.parent / "pki" / "edge.key"
    os.chmod(key, 0o640)
    result = check_config(config)
    assert result.returncode == 2
    assert result.stderr.rstrip().endswith(f"{key}' is mode 0640; key files must be 0600 and owned by the service "
                                           f"user {ME.pw_name}; run: chmod 600 {key}")
    assert result.stderr.startswith("ems-edge check-config: error: broker.key:")


def test_the_agent_refuses_at_start_what_check_config_refuses(config: Path) -> None:
    """One rule: a group-readable key stops check-config and ``ems-edge run`` alike (exit 2, the same chmod fix)."""
    key = config.parent / "pki" / "edge.key"
    os.chmod(key, 0o640)
    run = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (run.returncode, check_config(config).returncode) == (2, 2)
    assert run.stderr.rstrip().endswith(f"ems-edge run: error: broker.key: '{key}' is accessible to its group "
                                        f"(mode 0640); run: chmod 600 {key}")


def test_keys_not_owned_by_the_service_user_are_refused_all_at_once(config: Path) -> None:
    """Runs as root (os.chown), like the rest of the install-kit tests."""
    key = config.parent / "pki" / "edge.key"
    secret = config.parent / "secret-key.conf"
    secret.write_text("token = 'x'\n")
    os.chmod(secret, 0o644)
    result = check_config(config, "--user", OTHER.pw_name)
    assert result.returncode == 2
    group = grp.getgrgid(OTHER.pw_gid).gr_name
    assert f"{key}' is owned by {ME.pw_name}; key files must be 0600 and owned by the service user " \
           f"{OTHER.pw_name} (1 more key files too)" in result.stderr
    assert f"run: chown {OTHER.pw_name}:{group} {key} {secret} && chmod 600 {secret}" in result.stderr
    for path in (key, secret):
        os.chown(path, OTHER.pw_uid, OTHER.pw_gid)
        os.chmod(path, 0o600)
    fixed = check_config(config, "--user", OTHER.pw_name)
    assert fixed.returncode == 0, fixed.stderr
    assert f"key files: {key}, {secret}: mode 0600, owner {OTHER.pw_name}" in fixed.stdout


def test_the_fix_names_every_bad_key_in_full_however_long(config: Path) -> None:
    """Twenty keys with 150-character names: the reason stays short, the chown/chmod command is not cut."""
    pki_dir = config.parent / "pki"
    keys = []
    for i in range(20):
        key = pki_dir / f"{i:02d}-{'k' * 140} 'odd'.key"
        key.write_text("not a key\n")
        os.chmod(key, 0o644)
        keys.append(key)
    result = check_config(config)
    assert result.returncode == 2
    quoted = " ".join(shlex.quote(str(k)) for k in sorted(keys))
    assert result.stderr.rstrip().endswith(f"(19 more key files too); run: chmod 600 {quoted}"), result.stderr[-300:]
    fix = result.stderr.rstrip().rpartition("; run: ")[2]
    subprocess.run(["sh", "-c", fix], check=True, timeout=30)          # the hint, run as printed, fixes them all
    assert check_config(config).returncode == 0


def test_an_unknown_service_user_is_named(config: Path) -> None:
    result = check_config(config, "--user", "no-such-user-ems")
    assert result.returncode == 2 and "--user: 'no-such-user-ems' is not a user on this machine" in result.stderr


def test_calibrate_as_root_keeps_the_owner_and_group_of_sensors_conf(config: Path) -> None:
    """root runs `ems-edge calibrate` on /etc/ems/sensors.conf (root:ems 0640): the agent's group keeps reading it."""
    os.chown(config, ME.pw_uid, OTHER.pw_gid)
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "calibrate", "--config", str(config),
                             "--id", "SENSOR_01", "--offset", "0.25"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    info = config.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (ME.pw_uid, OTHER.pw_gid, 0o640)
    assert "offset = 0.25" in config.read_text()
