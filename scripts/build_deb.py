"""Build the edge box's Debian package, ``ems-edge_<version>_<arch>.deb`` (``make deb``).

What the package holds::

    /opt/ems/venv/                     Debian's python3.11 + the pinned runtime wheels + ems-platform
    /usr/bin/ems-edge                  -> /opt/ems/venv/bin/ems-edge
    /lib/systemd/system/ems-edge.service   the hardened unit (packaging/edge-deb/)
    /etc/logrotate.d/ems-edge          rotation of /var/log/ems/telemetry-audit.log
    /usr/lib/ems-edge/reopen-audit-log logrotate's postrotate: SIGHUP to the agent
    /etc/ems/sensors.conf.example      the example config with the box's absolute paths
    /usr/share/doc/ems-edge/           edge-install.md, copyright

The virtualenv is built here, at a staging path, from the exact pins of
requirements.txt (wheels only) with ``/usr/bin/python3.11``, then moved in
place by rewriting the few files that name its path (script shebangs,
``pyvenv.cfg``, activate scripts) and byte-compiled for ``/opt/ems/venv``
(unchecked-hash .pyc: valid whatever the file times, never rewritten on the
read-only system). It needs only Debian's ``python3.11`` on the box: no pip, no
compiler, no network at install time.

Usage: ``python scripts/build_deb.py [--out DIR]``; prints the .deb's path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import tomlkit

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "packaging" / "edge-deb"
VENV = "/opt/ems/venv"
PYTHON = "/usr/bin/python3.11"
PACKAGE = "ems-edge"
CONFFILES = ["/etc/logrotate.d/ems-edge", "/etc/ems/sensors.conf.example"]


def run(*cmd: str) -> None:
    """Run a build step quietly; on failure, raise with the step's last output lines."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise SystemExit(f"build_deb: {' '.join(cmd[:4])} ... failed ({result.returncode}):\n{tail}")


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def build_venv(stage: Path, work: Path) -> None:
    """The runtime virtualenv at ``stage/opt/ems/venv``, relocated to /opt/ems/venv."""
    venv = stage / VENV.lstrip("/")
    run(PYTHON, "-m", "venv", str(venv))
    wheels = work / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT))
    ours = next(wheels.glob("ems_platform-*.whl"))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "install", "--no-compile", "--only-binary", ":all:", "-c", str(ROOT / "requirements.txt"), str(ours))
    run(*pip, "uninstall", "-y", "pip", "setuptools")
    for pycache in list(venv.rglob("__pycache__")):
        shutil.rmtree(pycache)
    for record in venv.glob("lib/python3.11/site-packages/ems_platform-*.dist-info/direct_url.json"):
        record.unlink()             # it names the build machine's checkout
    staged = str(venv).encode()
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if staged in data:
                path.write_bytes(data.replace(staged, VENV.encode()))
    run(PYTHON, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
        "-s", str(stage), "-p", "/", str(venv / "lib"))


def example_config(target: Path) -> None:
    """edge_agent/examples/sensors.conf with the box's absolute paths."""
    doc = tomlkit.parse((ROOT / "edge_agent" / "examples" / "sensors.conf").read_text())
    doc["broker"]["ca"] = "/etc/ems/pki/ca.crt"
    doc["broker"]["cert"] = "/etc/ems/pki/edge.crt"
    doc["broker"]["key"] = "/etc/ems/pki/edge.key"
    doc["spool"]["path"] = "/var/lib/ems/spool"
    doc["audit"]["path"] = "/var/log/ems/telemetry-audit.log"
    doc["twin"]["cache_path"] = "/var/lib/ems/twin.json"
    if "commands" in doc:
        doc["commands"]["state_path"] = "/var/lib/ems/commands.db"
    header = ("# ems-edge: copy to /etc/ems/sensors.conf (root:ems, 0640), set the site, broker and devices,\n"
              "# put the CA, certificate and key in /etc/ems/pki (key: ems:ems, 0600), then\n"
              "# `ems-edge check-config --user ems` and `systemctl enable --now ems-edge`.\n")
    target.write_text(header + tomlkit.dumps(doc))


def control(stage: Path, arch: str) -> str:
    """The package's control file. procps: the unit's ExecReload (/bin/kill) and reopen-audit-log's pkill;
    a minimal Debian lacks it, and `systemctl reload ems-edge` (logrotate's postrotate) then fails."""
    size_kib = sum(p.lstat().st_size for p in stage.rglob("*") if not p.is_dir()) // 1024
    return (f"Package: {PACKAGE}\nVersion: {version()}\nArchitecture: {arch}\n"
            "Maintainer: ems-platform developers <ems-platform@users.noreply.github.com>\n"
            f"Installed-Size: {size_kib}\nDepends: python3.11, adduser, procps\nRecommends: logrotate\n"
            "Section: net\nPriority: optional\nHomepage: https://github.com/ems-platform/ems-platform\n"
            "Description: EMS edge agent: Modbus polling to MQTT over mTLS\n"
            " Polls Modbus devices, calibrates, spools durably and publishes over MQTT/mTLS,\n"
            " with a CRC-checked audit log. Runs as the systemd service ems-edge (user ems).\n")


def build(out: Path) -> Path:
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ems-deb-") as tmp:
        work = Path(tmp)
        stage = work / "root"
        build_venv(stage, work)
        files = {
            "lib/systemd/system/ems-edge.service": (KIT / "ems-edge.service", 0o644),
            "etc/logrotate.d/ems-edge": (KIT / "ems-edge.logrotate", 0o644),
            "usr/lib/ems-edge/reopen-audit-log": (KIT / "reopen-audit-log", 0o755),
            "usr/share/doc/ems-edge/edge-install.md": (ROOT / "docs" / "edge-install.md", 0o644),
        }
        for target, (source, mode) in files.items():
            dest = stage / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            dest.chmod(mode)
        (stage / "usr/share/doc/ems-edge/copyright").write_text(
            "ems-platform edge agent; see the project's LICENSE. Bundled Python distributions keep their "
            "licenses in /opt/ems/venv/lib/python3.11/site-packages/*.dist-info.\n")
        (stage / "etc/ems").mkdir(parents=True)
        example_config(stage / "etc/ems/sensors.conf.example")
        (stage / "usr/bin").mkdir(parents=True, exist_ok=True)
        os.symlink(f"{VENV}/bin/ems-edge", stage / "usr/bin/ems-edge")
        debian = stage / "DEBIAN"
        debian.mkdir()
        (debian / "control").write_text(control(stage, arch))
        (debian / "conffiles").write_text("".join(f"{c}\n" for c in CONFFILES))
        for script in ("postinst", "prerm", "postrm"):
            shutil.copyfile(KIT / script, debian / script)
            (debian / script).chmod(0o755)
        for path in stage.rglob("*"):       # a umask of the builder must not leak into the package
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        deb = out / f"{PACKAGE}_{version()}_{arch}.deb"
        run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", str(stage), str(deb))
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the ems-edge Debian package.")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "deb", help="where the .deb goes (default out/deb)")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
