"""The edge package under systemd: ``make deb``'s package installed on a Debian box whose PID 1 is systemd.

PID 1 of this machine is not systemd, so the box is a container (``scripts/edge-box-image.sh``: a
Debian 12 root file system with systemd, made with mmdebstrap, run with ``podman --systemd=always``)
sharing the host's network, where the test broker and the Modbus simulator run. In it: ``dpkg -i``,
the site's config and keys, ``systemctl start ems-edge``; the agent runs as ``ems`` with the unit's
sandbox (checked on the running process: no new privileges, no capabilities, seccomp, the file system
read-only but its own folders), ``systemctl reload`` after renaming the audit log makes the agent
start a linked file without a restart, ``logrotate --force`` rotates through the package's config and
its postrotate (which reloads the unit), and ``ems-edge audit verify --rotated`` accepts the files;
every audited reading reached the broker.

Opt-in (marker ``systemd``, deselected by ``make test``; ``make edge-systemd`` runs it): the first
run builds the box image (1-2 minutes), the test itself takes about a minute. A missing podman,
or mmdebstrap fails it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from devenv.demo_edge import write_agent_config
from devenv.mosquitto import MosquittoBroker, free_port, wait_for_port
from devenv.pki import LocalPki
from edge_agent.audit import decode_record
from tests.edge_agent.delivery_helpers import Subscriber
from tests import test_edge_deb
from tests.test_edge_deb import _audited_seqs, _wait, sh
from tests.test_images import ENGINE, LIMITS     # runc and explicit rlimits: this host refuses the engine's defaults

ROOT = Path(__file__).resolve().parents[1]
AUDIT = "/var/log/ems/telemetry-audit.log"

pytestmark = [pytest.mark.systemd, pytest.mark.integration]
deb = test_edge_deb.deb          # the fixture that builds the package (make deb), once per module


class Box:
    """The running box: ``run(*cmd)`` executes in it as root, ``copy(src, dst)`` copies (``box:`` = in the box)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *cmd: str, check: bool = True, timeout: float = 120, privileged: bool = False) -> subprocess.CompletedProcess:
        # --privileged only to enter the agent's namespaces (the engine's default capabilities lack SYS_PTRACE).
        extra = ["--privileged"] if privileged else []
        return sh(*ENGINE, "exec", *extra, self.name, *cmd, check=check, timeout=timeout)

    def copy(self, source: str, target: str) -> None:
        sh(*ENGINE, "cp", source.replace("box:", f"{self.name}:", 1), target.replace("box:", f"{self.name}:", 1))


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    """A running box: systemd as PID 1, the host's network (the broker and the simulator run there)."""
    for tool in ("podman", "mmdebstrap"):
        assert shutil.which(tool), f"{tool} is missing: scripts/install-system-packages.sh --images"
    built = subprocess.run([str(ROOT / "scripts/edge-box-image.sh")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    image = built.stdout.strip().splitlines()[-1]
    box = Box(f"ems-edge-box-{uuid.uuid4().hex[:10]}")
    # CAP_SYS_ADMIN for systemd (PID 1 of a real box has every capability): without it systemd cannot build
    # the unit's mount namespace and, "assuming containerized execution", silently runs the agent without
    # ProtectSystem & co. (seen here: the agent's mount namespace was PID 1's, / writable).
    sh(*ENGINE, "run", "-d", "--name", box.name, "--systemd=always", "--cap-add", "SYS_ADMIN", "--network", "host",
       *LIMITS, image, "/sbin/init")
    try:
        # `degraded` is fine (a unit the box does not need may fail in a container); `starting` is not yet.
        assert _wait(lambda: box.run("systemctl", "is-system-running", check=False).stdout.strip()
                     in ("running", "degraded"), timeout=90), box.run("systemctl", "--failed", check=False).stdout
        yield box
    finally:
        subprocess.run([*ENGINE, "rm", "--force", "--time", "10", box.name], capture_output=True, timeout=120)


def _show(run, *props: str) -> dict[str, str]:
    out = run("systemctl", "show", "ems-edge.service", *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _first_record_kind(run) -> str:
    return decode_record(run("head", "-n", "1", AUDIT).stdout.encode().rstrip(b"\n"))["k"]


@pytest.mark.timeout(900)
def test_unit_runs_hardened_reloads_and_rotates_under_systemd(box: Box, deb: Path, pki: LocalPki,
                                                                broker: MosquittoBroker, tmp_path: Path) -> None:
    run = box.run
    journal = lambda: run("journalctl", "-u", "ems-edge", "--no-pager", "-n", "60", check=False).stdout  # noqa: E731
    box.copy(str(deb), "box:/tmp/ems-edge.deb")
    run("dpkg", "-i", "/tmp/ems-edge.deb", timeout=300)
    assert run("systemctl", "is-enabled", "ems-edge").stdout.strip() == "enabled"
    # Not started by the install: the unit waits for /etc/ems/sensors.conf (ConditionPathExists).
    assert run("systemctl", "is-active", "ems-edge", check=False).stdout.strip() == "inactive"

    # The site's config and keys, as docs/edge-install.md says: key ems:ems 0600, config root:ems 0640.
    example = tmp_path / "sensors.conf.example"
    box.copy("box:/etc/ems/sensors.conf.example", str(example))
    modbus_port = free_port()
    site = tmp_path / "site"
    config = write_agent_config(site, pki, broker_port=broker.tls_port, modbus_port=modbus_port, source=example)
    for path in ("sensors.conf", "pki/ca.crt", "pki/edge.crt", "pki/edge.key"):
        box.copy(str(site / path), f"box:/etc/ems/{path}")
    run("sh", "-c", "chown root:ems /etc/ems/sensors.conf && chmod 0640 /etc/ems/sensors.conf && "
        "chown root:root /etc/ems/pki/ca.crt /etc/ems/pki/edge.crt && chmod 0644 /etc/ems/pki/*.crt && "
        "chown ems:ems /etc/ems/pki/edge.key && chmod 0600 /etc/ems/pki/edge.key")

    simulator = subprocess.Popen([str(Path(sys.executable).parent / "ems-edge"), "simulate", "--port", str(modbus_port),
                                  "--config", str(config)],
                                 stdout=subprocess.DEVNULL, stderr=open(tmp_path / "simulator.log", "w"))
    subscriber = Subscriber(broker.plain_port, topic="ems/v1/+/telemetry").start()

    def delivered_20_more() -> bool:
        target = len(subscriber.received.unique_seqs()) + 20
        return subscriber.wait_for(lambda r: len(r.unique_seqs()) >= target, timeout=90)

    try:
        wait_for_port(modbus_port, timeout=30, proc=simulator)
        run("systemctl", "start", "ems-edge", timeout=120)
        assert _wait(lambda: _show(run, "ActiveState")["ActiveState"] == "active", timeout=60), journal()
        assert subscriber.wait_for(lambda r: len(r.unique_seqs()) >= 20, timeout=90), journal()
        pid = _show(run, "MainPID")["MainPID"]
        _assert_sandboxed(run, pid)

        # systemctl reload: the audit log was renamed (to the name logrotate gives it); the agent reopens
        # the path and the new file starts with the record that links it to the old one. Same process.
        run("mv", AUDIT, f"{AUDIT}.1")
        run("systemctl", "reload", "ems-edge")
        assert _wait(lambda: _first_record_kind(run) == "cont", timeout=30), journal()
        assert _show(run, "MainPID")["MainPID"] == pid
        assert delivered_20_more(), journal()

        # logrotate through the package's config: its postrotate runs `systemctl reload ems-edge`.
        for rotation in (1, 2):
            inode = run("stat", "-c", "%i", AUDIT).stdout
            rotated = run("logrotate", "--force", "--verbose", "--state", "/var/lib/logrotate/ems-test.state",
                          "/etc/logrotate.d/ems-edge", check=False)
            assert rotated.returncode == 0, rotated.stdout + rotated.stderr
            assert run("stat", "-c", "%i", AUDIT).stdout != inode
            assert _wait(lambda: _first_record_kind(run) == "cont", timeout=30), journal()
            assert _show(run, "MainPID")["MainPID"] == pid     # reloaded, not restarted
            assert delivered_20_more(), journal()
        reloads = run("journalctl", "-u", "ems-edge", "--no-pager", "-o", "cat").stdout
        assert reloads.count("Reloaded ems-edge.service") >= 3, reloads[-3000:]

        run("systemctl", "stop", "ems-edge", timeout=120)
        stopped = _show(run, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0",
                           "NRestarts": "0"}, (stopped, journal())
        verify = run("runuser", "-u", "ems", "--", "/usr/bin/ems-edge", "audit", "verify", "--rotated", check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "and 3 rotated files before it (3 links checked): " in verify.stdout, verify.stdout
        assert "OK: every record's CRC matches" in verify.stdout

        logs = tmp_path / "logs"
        box.copy("box:/var/log/ems", str(logs))
        files = [logs / "telemetry-audit.log.3.gz", logs / "telemetry-audit.log.2.gz", logs / "telemetry-audit.log.1",
                 logs / "telemetry-audit.log"]
        assert all(f.exists() for f in files), sorted(p.name for p in logs.iterdir())
        audited = _audited_seqs(files)
        assert subscriber.wait_for(lambda r: r.unique_seqs() >= audited, timeout=30)
        assert audited - subscriber.received.unique_seqs() == set()          # 0 lost
        assert f"{len(audited)} readings" in verify.stdout
    finally:
        subscriber.stop()
        simulator.kill()
        simulator.wait(timeout=30)


def _assert_sandboxed(run, pid: str) -> None:
    """The unit's hardening, seen on the running agent rather than in the unit file."""
    status = dict(re.findall(r"^(\w+):\s*(.*)$", run("cat", f"/proc/{pid}/status").stdout, re.MULTILINE))
    ems = run("id", "-u", "ems").stdout.strip()
    assert status["Uid"].split()[:2] == [ems, ems], status["Uid"]
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
    assert status["CapBnd"] == status["CapEff"] == status["CapPrm"] == "0000000000000000", status
    # The agent has a mount namespace of its own, where even root cannot write outside the unit's folders.
    namespaces = run("readlink", "/proc/1/ns/mnt", f"/proc/{pid}/ns/mnt", privileged=True).stdout.split()
    assert len(set(namespaces)) == 2, namespaces
    probe = ("for p in /var/lib/ems /var/log/ems /tmp /etc/ems /opt/ems /usr/local; do "
             "f=$p/.ems-probe-$$; if touch $f 2>/dev/null; then rm -f $f; echo rw $p; else echo ro $p; fi; done")
    seen = run("nsenter", "--target", pid, "--mount", "sh", "-c", probe, privileged=True).stdout.splitlines()
    assert seen == ["rw /var/lib/ems", "rw /var/log/ems", "rw /tmp", "ro /etc/ems", "ro /opt/ems", "ro /usr/local"], seen
    exposure = run("systemd-analyze", "security", "ems-edge.service", "--no-pager").stdout
    level = re.search(r"Overall exposure level for ems-edge.service: ([\d.]+)", exposure)
    assert level and float(level.group(1)) <= 2.0, exposure[-2000:]
