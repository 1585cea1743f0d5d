"""``pip install .`` gives working commands: pyproject.toml declares what they import, in ranges the pins satisfy.

The install test builds this project into an empty virtualenv offline: the wheels of its
dependencies are rebuilt from this virtualenv (``tests/wheelhouse.py``), pip sees no index and
no machine-wide configuration. Then every command answers ``--version`` and ``--help`` and does
one real thing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from devenv.pki import LocalPki
from wheelhouse import build_wheelhouse

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
COMMANDS = sorted(PROJECT["scripts"])
RUNTIME_PACKAGES = ("ems_contract", "ems_runtime", "edge_agent", "ingest", "northbound", "devenv")
SELF = "ems-platform"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:                      # name==version, perhaps with an environment marker
                req = Requirement(line)
                [spec] = req.specifier
                assert spec.operator == "==", f"{name}: {line!r} is not an exact pin"
                pins[_normal(req.name)] = spec.version
    return pins


def _declared() -> list[Requirement]:
    extras = [r for group in PROJECT["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in [*PROJECT["dependencies"], *extras] if _normal(Requirement(r).name) != SELF]


def test_every_declared_dependency_is_pinned_and_its_pin_is_in_range() -> None:
    pins = _pins()
    for req in _declared():
        name = _normal(req.name)
        assert name in pins, f"{req} is declared in pyproject.toml but not pinned in requirements*.txt"
        assert req.specifier.contains(pins[name]), f"{req}: the pin {name}=={pins[name]} is outside the range"


def test_the_extras_cover_the_pulumi_program_and_the_tests() -> None:
    assert {_normal(Requirement(r).name) for r in PROJECT["optional-dependencies"]["pulumi"]} == {
        "pulumi", "pulumi-aws", "pulumi-kubernetes", "pulumi-tls", "pulumi-policy"}
    assert f"{SELF}[pulumi]" in PROJECT["optional-dependencies"]["test"]


PROBE = r"""
import importlib, json, pkgutil, sys
before = set(sys.modules)
for package in sys.argv[1:]:
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
stdlib = set(sys.stdlib_module_names)
print(json.dumps(sorted({n.split(".")[0] for n in set(sys.modules) - before} - stdlib)))
"""


def test_what_the_runtime_packages_import_is_declared() -> None:
    """Every third-party module the commands' packages load belongs to a declared dependency (or one of theirs)."""
    out = subprocess.run([sys.executable, "-c", PROBE, *RUNTIME_PACKAGES], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    owners = metadata.packages_distributions()
    declared = {_normal(Requirement(r).name) for r in PROJECT["dependencies"]}
    from wheelhouse import closure
    allowed = set(closure(PROJECT["dependencies"]))
    for module in json.loads(out.stdout):
        if module.startswith("_") or module in RUNTIME_PACKAGES or module == "cython_runtime":
            continue
        dists = {_normal(d) for d in owners.get(module, [])}
        assert dists & allowed, f"{module} (from {sorted(dists)}) is imported but not declared in pyproject.toml"
    assert {"pymodbus", "paho-mqtt", "prometheus-client", "httpx"} <= declared


def _isolated_env(**extra: str) -> dict[str, str]:
    """No machine-wide pip configuration, no index: only the wheelhouse."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty virtualenv with ``pip install .`` of a clean copy of this project; returns its bin/."""
    work = tmp_path_factory.mktemp("pip-install")
    source = work / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in {*RUNTIME_PACKAGES, "emsctl"}:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = work / "wheels"
    build_wheelhouse([*PROJECT["dependencies"], *PYPROJECT["build-system"]["requires"]], wheels)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=_isolated_env())
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(wheels), str(source)],
                            capture_output=True, text=True, timeout=300, env=_isolated_env(), cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv / "bin"


def _run(bin_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          env=_isolated_env(), cwd=bin_dir.parent)


def test_the_empty_venv_has_only_what_pyproject_declares(installed: Path) -> None:
    listed = subprocess.run([str(installed / "python"), "-m", "pip", "list", "--format=json"], capture_output=True,
                            text=True, timeout=60, env=_isolated_env())
    names = {_normal(p["name"]) for p in json.loads(listed.stdout)}
    assert SELF in names and "pulumi" not in names and "pytest" not in names
    assert {_normal(Requirement(r).name) for r in PROJECT["dependencies"]} <= names


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_answers_version_and_help(installed: Path, command: str) -> None:
    version = _run(installed, command, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"{command} {PROJECT['version']} (ems-platform, Python 3.")
    help_ = _run(installed, command, "--help")
    assert help_.returncode == 0 and help_.stdout.startswith(f"usage: {command} "), help_.stderr


def test_the_installed_packages_import_whole(installed: Path) -> None:
    """Every module of the runtime packages imports in the new venv: no dependency is missing."""
    out = subprocess.run([str(installed / "python"), "-c", PROBE, *RUNTIME_PACKAGES], capture_output=True, text=True,
                         timeout=120, env=_isolated_env(), cwd=installed.parent)
    assert out.returncode == 0, out.stderr[-3000:]


def test_the_installed_commands_do_real_work(installed: Path, tmp_path: Path, pki: LocalPki) -> None:
    conf = tmp_path / "sensors.conf"
    shutil.copy(ROOT / "edge_agent" / "examples" / "sensors.conf", conf)
    calibrated = _run(installed, "ems-edge", "calibrate", "--id", "SENSOR_01", "--offset", "0.05", "--config", str(conf))
    assert calibrated.returncode == 0 and "updated" in calibrated.stdout, calibrated.stderr
    identity = _run(installed, "ems-northbound", "identity", "--cert", str(pki.client("pkg-test").cert), "--json")
    assert identity.returncode == 0 and re.fullmatch(r"[0-9A-F]{40}", json.loads(identity.stdout)["lfdi"]), identity.stderr
    ingest = _run(installed, "ems-ingest", "check-config", "--config", str(tmp_path / "missing.toml"))
    assert ingest.returncode == 2 and "missing.toml" in ingest.stderr
    # emsctl runs the Pulumi program: without the [pulumi] extra it says what to install, in one line.
    preview = _run(installed, "emsctl", "preview", "--stack", "local", "--project", str(ROOT))
    assert preview.returncode == 2
    assert preview.stderr.strip() == (
        "emsctl: error: this environment: lacks the Pulumi SDK and providers (missing pulumi, pulumi_aws, "
        "pulumi_kubernetes, pulumi_tls, pulumi_policy); install them with: pip install 'ems-platform[pulumi]'")
