"""The edge install kit: ``make deb``'s package, installed, run, rotated and removed.

One build per module (about 30 s). The install test needs root and installs the
package for real (dpkg -i, then dpkg -r and --purge), in a private root: this
machine's root file system under a copy-on-write overlay, in a mount namespace
of its own (``PrivateRoot``), so /etc, /var, /opt, the dpkg database and the
user list of this machine are never written, and two runs (xdist workers,
developers sharing a machine) never see each other's files; and in a PID
namespace of its own with a fresh /proc, so the package's logrotate postrotate
(``pkill -HUP -u ems``) signals this run's agent only, never another run's or
this machine's. It shares this machine's network namespace (the broker runs
outside). PID 1 here is not systemd, so the
agent is started as the unit says (its ``User``, ``ExecStartPre`` and
``ExecStart``, read from the installed unit file) under ``setpriv``; ``systemd-analyze verify`` checks the
unit file itself. Logrotate runs with the installed config and a scratch state
file; its postrotate SIGHUPs the agent, which starts a linked file.
"""

from __future__ import annotations

import configparser
import gzip
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from devenv.demo_edge import write_agent_config
from devenv.mosquitto import MosquittoBroker, free_port, wait_for_port
from devenv.pki import LocalPki
from edge_agent.audit import decode_record
from tests.edge_agent.delivery_helpers import Subscriber

ROOT = Path(__file__).resolve().parents[1]
# Paths inside the private root.
UNIT = "/lib/systemd/system/ems-edge.service"
LOGROTATE = "/etc/logrotate.d/ems-edge"
AUDIT = "/var/log/ems/telemetry-audit.log"

pytestmark = pytest.mark.integration


def sh(*cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{shlex.join(cmd)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_deb.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=480)
    assert result.returncode == 0, result.stdout + result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out
    return path


def test_the_package_holds_the_kit(deb: Path, tmp_path: Path) -> None:
    info = sh("dpkg-deb", "--field", str(deb), "Package", "Version", "Architecture", "Depends").stdout
    assert "Package: ems-edge" in info and "Depends: python3.11, adduser, procps" in info
    assert f"Architecture: {sh('dpkg', '--print-architecture').stdout.strip()}" in info
    listing = sh("dpkg-deb", "--contents", str(deb)).stdout
    for entry in ("-rw-r--r-- root/root .* ./lib/systemd/system/ems-edge.service",
                  "-rw-r--r-- root/root .* ./etc/logrotate.d/ems-edge",
                  "-rw-r--r-- root/root .* ./etc/ems/sensors.conf.example",
                  "-rwxr-xr-x root/root .* ./usr/lib/ems-edge/reopen-audit-log",
                  "-rwxr-xr-x root/root .* ./opt/ems/venv/bin/ems-edge",
                  "lrwxrwxrwx root/root .* ./opt/ems/venv/bin/python3.11 -> /usr/bin/python3.11",
                  "lrwxrwxrwx root/root .* ./usr/bin/ems-edge -> /opt/ems/venv/bin/ems-edge"):
        assert re.search(entry, listing), entry
    assert "/pip/" not in listing and "/setuptools/" not in listing     # nothing to build or fetch with
    assert not re.search(r"\.py[co]?$", "\n".join(l for l in listing.splitlines() if "/ems-edge/" in l))
    assert re.search(r"site-packages/edge_agent/examples/sensors\.conf$", listing, re.M)
    sh("dpkg-deb", "--extract", str(deb), str(tmp_path / "root"))
    sh("dpkg-deb", "--control", str(deb), str(tmp_path / "DEBIAN"))
    assert (tmp_path / "DEBIAN" / "conffiles").read_text().split() == ["/etc/logrotate.d/ems-edge",
                                                                       "/etc/ems/sensors.conf.example"]
    for script in ("postinst", "prerm", "postrm"):
        assert os.access(tmp_path / "DEBIAN" / script, os.X_OK)
        sh("sh", "-n", str(tmp_path / "DEBIAN" / script))
    root = tmp_path / "root"
    assert (root / "opt/ems/venv/bin/ems-edge").read_text().startswith("#!/opt/ems/venv/bin/python\n")
    staged = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and b"ems-deb-" in p.read_bytes()]
    assert staged == []                                   # no file names the build's staging folder
    example = (root / "etc/ems/sensors.conf.example").read_text()
    for path in ('"/etc/ems/pki/edge.key"', '"/var/lib/ems/spool"', '"/var/log/ems/telemetry-audit.log"',
                 '"/var/lib/ems/twin.json"', '"/var/lib/ems/commands.db"'):
        assert path in example


def test_the_unit_is_hardened() -> None:
    unit = _unit(ROOT / "packaging" / "edge-deb" / "ems-edge.service")
    service = unit["Service"]
    assert service["User"] == "ems" and service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert (service["StateDirectory"], service["LogsDirectory"]) == ("ems", "ems")
    assert "ReadWritePaths" not in service                # writable: /var/lib/ems and /var/log/ems only
    assert service["Restart"] == "on-failure"
    report = sh("systemd-analyze", "security", "--offline=true", "--no-pager",
                str(ROOT / "packaging" / "edge-deb" / "ems-edge.service"), check=False)
    exposure = re.search(r"Overall exposure level for ems-edge.service: ([0-9.]+)", report.stdout)
    assert exposure, report.stdout + report.stderr
    assert float(exposure.group(1)) <= 2.0, report.stdout   # systemd's scale: 0 (locked down) .. 10 (exposed)


def _unit(path: Path) -> configparser.ConfigParser:
    """A unit file as sections of keys (a key given twice keeps its last value, enough for these checks)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str                             # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


# The private root's keeper: a tmpfs (the overlay's upper layer) and the overlay of / mounted in a
# mount namespace that only this process and the commands entered into it see, with its own /proc
# (of its own PID namespace, where it is PID 1), /tmp and /run and the machine's /dev and /sys; then it
# chroots there and sleeps. When it is killed (``unshare --kill-child``: with unshare), every process of
# its PID namespace dies with it, and the namespace and every file written in it are gone: nothing to
# clean up.
_KEEPER = r"""
set -e
t=$1
mount -t tmpfs -o mode=0755 ems-private-root "$t"
mkdir "$t/upper" "$t/work" "$t/root"
mount -t overlay ems-private-root -o "lowerdir=/,upperdir=$t/upper,workdir=$t/work" "$t/root"
mount -t proc proc "$t/root/proc"
mount --rbind /dev "$t/root/dev"
mount --rbind /sys "$t/root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$t/root/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$t/root/run"
mkdir -m 1777 "$t/root/run/lock"
echo ready
exec chroot "$t/root" sleep infinity
"""


class PrivateRoot:
    """This machine's root file system, copy-on-write, seen by the commands of ``cmd`` only.

    ``root / "etc/passwd"`` is that file as the private root has it (read and written from here
    through ``/proc/<init>/root``); ``root.cmd("dpkg", "-i", …)`` is a command run inside it, in its
    PID namespace: ``nsenter`` forks it and does not pass signals on, so :meth:`signal` sends them to it.
    """

    def __init__(self, keeper: subprocess.Popen, init: int) -> None:
        self.keeper = keeper              # unshare, in this machine's PID namespace
        self.init = init                  # its child: PID 1 of the private root's PID namespace
        self.path = Path(f"/proc/{init}/root")

    def __truediv__(self, path: str) -> Path:
        self._alive()
        return self.path / path.lstrip("/")

    def cmd(self, *args: str) -> list[str]:
        self._alive()
        return ["nsenter", f"--target={self.init}", "--mount", "--pid", "--root", "--wd=/", "--", *args]

    def signal(self, proc: subprocess.Popen, signum: int) -> None:
        """Send ``signum`` to the command ``proc`` (started with :meth:`cmd`) runs inside the private root."""
        for pid in _children(proc.pid):
            os.kill(pid, signum)

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*self.cmd(*args), timeout=timeout, check=check)

    def _alive(self) -> None:
        # A dead keeper's pid may be another process's, whose root is this machine's /.
        assert self.keeper.poll() is None, f"the private root's keeper exited ({self.keeper.returncode})"

    def ids(self, user: str) -> tuple[int, int, str]:
        """``user``'s uid, gid and shell in the private root's /etc/passwd."""
        for line in (self / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3]), fields[6]
        raise KeyError(f"no user {user!r} in the private root's /etc/passwd")


@pytest.fixture
def private_root(tmp_path: Path) -> Iterator[PrivateRoot]:
    assert os.geteuid() == 0, "the private root (mounts, chroot) and installing the package need root"
    mountpoint = tmp_path / "private-root"
    mountpoint.mkdir()
    keeper = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
                               "--", "sh", "-c", _KEEPER, "keeper", str(mountpoint)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = keeper.stdout.readline()             # type: ignore[union-attr]
        assert ready == "ready\n", f"the private root did not come up: {ready}{keeper.stderr.read()}"  # type: ignore[union-attr]
        (init,) = _children(keeper.pid)
        root = PrivateRoot(keeper, init)
        # "ready" comes just before the chroot: until then /proc/<keeper>/root is this machine's /.
        assert _wait(lambda: os.stat(root.path).st_dev != os.stat("/").st_dev, timeout=10), "the keeper did not chroot"
        yield root
    finally:
        keeper.kill()
        keeper.wait(timeout=30)


# What systemd would set up for the unit, as far as it can be done without systemd as PID 1, in a
# mount namespace of its own: every top-level folder read-only (ProtectSystem=strict), a private
# /tmp (PrivateTmp), the StateDirectory and LogsDirectory writable; then the unit's user and group
# with no new privileges and no capabilities (NoNewPrivileges, CapabilityBoundingSet=).
_SANDBOX = r"""
set -e
for d in /*/; do
  d=${d%/}
  case $d in /proc|/sys|/dev|/tmp) continue;; esac
  [ -L "$d" ] && continue
  mount --rbind "$d" "$d"
  mount -o remount,bind,ro "$d"
done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
for w in $EMS_WRITABLE; do mount --bind "$w" "$w"; mount -o remount,bind,rw "$w"; done
exec setpriv --reuid="$EMS_USER" --regid="$EMS_GROUP" --init-groups --no-new-privs \
     --bounding-set=-all --inh-caps=-all -- "$@"
"""


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (their pids in this machine's PID namespace)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _as_the_unit(service: configparser.SectionProxy | dict[str, str]) -> list[str]:
    writable = [f"/var/lib/{service['StateDirectory']}", f"/var/log/{service['LogsDirectory']}"]
    return ["env", f"EMS_WRITABLE={' '.join(writable)}", f"EMS_USER={service['User']}",
            f"EMS_GROUP={service['Group']}", "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _SANDBOX, "sandbox"]


def test_the_sandbox_leaves_only_the_unit_s_folders_writable(private_root: PrivateRoot) -> None:
    service = {"StateDirectory": "ems-sbx-test", "LogsDirectory": "ems-sbx-test", "User": "nobody", "Group": "nogroup"}
    for folder in ("var/lib/ems-sbx-test", "var/log/ems-sbx-test"):
        (private_root / folder).mkdir(exist_ok=True)        # the machine may have one: this is a copy
        os.chown(private_root / folder, private_root.ids("nobody")[0], -1)
    name = "ems-sbx-probe"
    places = [f"/var/lib/ems-sbx-test/{name}", f"/var/log/ems-sbx-test/{name}", f"/tmp/{name}",
              f"/var/tmp/{name}", f"/etc/{name}", f"/opt/{name}"]
    probe = (f"for p in {' '.join(places)}; do touch $p 2>/dev/null && echo rw $p || echo ro $p; done; "
             "grep CapBnd /proc/self/status")
    result = private_root.run(*_as_the_unit(service), "sh", "-c", probe)
    assert result.stdout.split("\n")[:6] == [f"{mode} {p}" for mode, p in zip(["rw"] * 3 + ["ro"] * 3, places)]
    assert "CapBnd:\t0000000000000000" in result.stdout
    assert not (private_root / f"tmp/{name}").exists()            # the sandbox's /tmp was its own
    assert (private_root / f"var/lib/ems-sbx-test/{name}").exists()
    assert not Path(f"/var/lib/ems-sbx-test/{name}").exists()     # and the machine's /var was never written


def test_the_private_root_signals_only_its_own_processes(private_root: PrivateRoot) -> None:
    """The package's postrotate runs ``pkill -HUP`` in the private root: a process of this machine (another
    run's agent) must be out of its sight and reach, while a process of the private root is not."""
    pattern = "sleep 600.25"
    # Both take SIGHUP's default action even when this run inherited it ignored (nohup): else the inside one
    # (and nsenter, which dies of its child's signal) would outlive the pkill, and the outside one's survival
    # would prove nothing. env execs what follows it: the sleeps' command lines are the pattern.
    default_hup = ["env", "--default-signal=HUP"]
    outside = subprocess.Popen([*default_hup, *pattern.split()])
    inside = subprocess.Popen([*default_hup, *private_root.cmd(*pattern.split())])
    try:
        assert _wait(lambda: bool(_children(inside.pid)), timeout=10)
        seen = private_root.run("pgrep", "-f", f"^{pattern}$", check=False).stdout.split()
        assert len(seen) == 1 and int(seen[0]) > 1, seen      # the private root's own, by its pid in there
        private_root.run("pkill", "-HUP", "-f", f"^{pattern}$")
        assert inside.wait(timeout=10) == -signal.SIGHUP or inside.returncode == 128 + signal.SIGHUP
        time.sleep(0.5)
        assert outside.poll() is None, "the private root's pkill signalled a process of this machine"
    finally:
        for proc in (outside, inside):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _audited_seqs(files: list[Path]) -> set[int]:
    seqs: set[int] = set()
    for path in files:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for line in data.splitlines():
            body = decode_record(line)
            if body["k"] == "b":
                seqs.update(range(body["seq_first"], body["seq_last"] + 1))
    return seqs


@pytest.mark.timeout(600)
def test_install_run_rotate_verify_remove(deb: Path, private_root: PrivateRoot, pki: LocalPki,
                                          broker: MosquittoBroker, tmp_path: Path) -> None:
    root = private_root
    installed = root.run("dpkg-query", "-W", "-f", "${Status}", "ems-edge", check=False)
    assert "installed" not in installed.stdout, "ems-edge is installed on this machine; remove it before this test"
    shutil.copyfile(deb, root / f"tmp/{deb.name}")
    processes: list[subprocess.Popen] = []
    try:
        root.run("dpkg", "-i", f"/tmp/{deb.name}", timeout=300)
        assert not Path(UNIT).exists() and not Path("/opt/ems").exists()   # installed in the private root only
        _check_installed_layout(root)
        verify = root.run("systemd-analyze", "verify", UNIT, check=False)
        assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr

        modbus_port = free_port()
        config = write_agent_config(root / "etc/ems", pki, broker_port=broker.tls_port, modbus_port=modbus_port,
                                    source=root / "etc/ems/sensors.conf.example")
        assert config == root / "etc/ems/sensors.conf"
        # The install doc's steps: the key to the service user, the config readable by its group.
        ems_uid, ems_gid, _ = root.ids("ems")
        os.chown(root / "etc/ems/pki/edge.key", ems_uid, ems_gid)
        os.chown(config, 0, ems_gid)
        audit_doc = root.run("/usr/bin/ems-edge", "check-config", "--user", "ems").stdout
        assert "key files: /etc/ems/pki/edge.key: mode 0600, owner ems" in audit_doc

        unit = _unit(root / UNIT)["Service"]
        as_service = root.cmd(*_as_the_unit(unit))
        pre = subprocess.run(as_service + shlex.split(unit["ExecStartPre"]), capture_output=True, text=True,
                             timeout=60)
        assert pre.returncode == 0, pre.stderr

        simulator = subprocess.Popen(root.cmd("/usr/bin/ems-edge", "simulate", "--port", str(modbus_port),
                                              "--config", "/etc/ems/sensors.conf"),
                                     stdout=subprocess.DEVNULL, stderr=open(tmp_path / "simulator.log", "w"))
        processes.append(simulator)
        wait_for_port(modbus_port, timeout=30, proc=simulator)
        subscriber = Subscriber(broker.plain_port, topic="ems/v1/+/telemetry").start()
        agent_log = open(tmp_path / "agent.log", "w")
        agent = subprocess.Popen(as_service + shlex.split(unit["ExecStart"]), stdout=agent_log,
                                 stderr=subprocess.STDOUT)
        processes.append(agent)

        def delivered_at_least(n: int) -> None:
            assert subscriber.wait_for(lambda r: len(r.unique_seqs()) >= n, timeout=60), \
                (tmp_path / "agent.log").read_text()[-3000:]

        delivered_at_least(20)
        audit = root / AUDIT
        for rotation in (1, 2):
            before = audit.stat().st_ino
            rotated = root.run("logrotate", "--force", "--state", "/tmp/logrotate.state", LOGROTATE, check=False)
            assert rotated.returncode == 0, rotated.stdout + rotated.stderr
            assert audit.stat().st_ino != before                 # renamed, and a new file created
            # The postrotate SIGHUP'd the agent: it reopens the path, and the new file starts with the link.
            assert _wait(lambda: decode_record(audit.read_bytes().split(b"\n", 1)[0])["k"] == "cont"), \
                (tmp_path / "agent.log").read_text()[-3000:]
            assert agent.poll() is None
            delivered_at_least(20 + 20 * rotation)
        files = [root / "var/log/ems/telemetry-audit.log.2.gz", root / "var/log/ems/telemetry-audit.log.1", audit]
        assert all(f.exists() for f in files), sorted(os.listdir(root / "var/log/ems"))
        assert stat.S_IMODE(audit.stat().st_mode) == 0o640 and audit.stat().st_uid == ems_uid

        root.signal(agent, signal.SIGTERM)
        assert agent.wait(timeout=60) == 0, (tmp_path / "agent.log").read_text()[-3000:]
        audited = _audited_seqs(files)
        assert subscriber.wait_for(lambda r: r.unique_seqs() >= audited, timeout=30)
        subscriber.stop()
        received = subscriber.received.unique_seqs()
        assert audited - received == set()                   # 0 lost
        assert received <= audited                           # nothing delivered that was not audited
        assert len(audited) >= 60 and audited == set(range(min(audited), max(audited) + 1))

        result = subprocess.run(as_service + ["/usr/bin/ems-edge", "audit", "verify", "--rotated"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "and 2 rotated files before it (2 links checked): " in result.stdout
        assert f"{len(audited)} readings" in result.stdout and "OK: every record's CRC matches" in result.stdout
    finally:
        for proc in processes:
            if proc.poll() is None:
                root.signal(proc, signal.SIGKILL)
                proc.wait(timeout=30)
        for path in ("etc/ems/sensors.conf", "etc/ems/pki/ca.crt", "etc/ems/pki/edge.crt", "etc/ems/pki/edge.key"):
            (root / path).unlink(missing_ok=True)
        removed = root.run("dpkg", "-r", "ems-edge", check=False, timeout=300)
        purged = root.run("dpkg", "--purge", "ems-edge", check=False, timeout=300)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert purged.returncode == 0, purged.stdout + purged.stderr
    for gone in ("/opt/ems", "/usr/bin/ems-edge", UNIT, LOGROTATE, "/etc/ems", "/var/lib/ems", "/var/log/ems"):
        assert not os.path.lexists(root / gone), gone
    assert "installed" not in root.run("dpkg-query", "-W", "-f", "${Status}", "ems-edge", check=False).stdout


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (OSError, ValueError):
            pass                                   # not written yet
        time.sleep(0.2)
    return False


def _check_installed_layout(root: PrivateRoot) -> None:
    ems_uid, ems_gid, shell = root.ids("ems")
    assert shell == "/usr/sbin/nologin" and ems_uid < 1000
    for path, mode, owner, group in (("/etc/ems", 0o750, 0, "ems"), ("/etc/ems/pki", 0o750, 0, "ems"),
                                     ("/var/lib/ems", 0o750, ems_uid, "ems"), ("/var/log/ems", 0o750, ems_uid, "ems"),
                                     (UNIT, 0o644, 0, "root"), (LOGROTATE, 0o644, 0, "root")):
        info = os.stat(root / path)
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (mode, owner), path
        assert info.st_gid == (ems_gid if group == "ems" else 0), path
    version = root.run("/usr/bin/ems-edge", "--version").stdout
    release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version.startswith(f"ems-edge {release} (ems-platform, Python 3.11")
    assert (root / "usr/sbin/logrotate").exists() and not (root / "etc/ems/sensors.conf").exists()
