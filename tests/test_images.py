"""The container images the stacks deploy: the Dockerfile, the release workflow, and the built images.

Structure (every ``make test``): each image of ``ems:images`` that this project builds
(``ghcr.io/ems-platform/*``) is a Dockerfile target; every stage starts FROM a base pinned by
digest or from another stage; the targets run as uid 10001, carry OCI labels and an SBOM, and never
install Python packages in the runtime stage; the workflow builds, scans, pushes and pins them with
actions pinned by commit hash. The SBOM writer and the digest pinning run on real inputs.

Built images (``-m images``, run by ``make images`` after scripts/build-images.sh builds them, about
a minute per image here): the edge-agent image, read-only root filesystem and uid 10001, polls the
simulator and publishes to the test broker over mTLS; no image holds pip or a compiler; each
image's SBOM names its Python distributions. A missing image or container engine fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from components import image_lock
from components.settings import _IMAGE, Images, default_images
from devenv.demo_edge import Observer, SimulatorProcess, write_agent_config
from devenv.mosquitto import MosquittoBroker, free_port
from devenv.pki import LocalPki

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
WORKFLOW = ROOT / ".github" / "workflows" / "images.yml"
sys.path.insert(0, str(ROOT / "scripts"))
import pin_image_digests  # noqa: E402

# The Images fields whose image this repository builds, and the Dockerfile target of each.
BUILT = {name: ref.split("/")[-1].split(":")[0] for name, ref in vars(Images()).items()
         if ref.startswith("ghcr.io/ems-platform/")}
TARGETS = sorted(set(BUILT.values()))
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def stages() -> dict[str, list[str]]:
    """Dockerfile stage name → its instructions (continuation lines joined, comments dropped)."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for instruction in re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines()
                                                      if not line.lstrip().startswith("#"))).splitlines():
        instruction = instruction.strip()
        if m := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", instruction, re.IGNORECASE):
            current = found.setdefault(m.group(2) or f"unnamed-{len(found)}", [])
        if instruction:
            current.append(instruction)
    return found


def chain(name: str, all_stages: dict[str, list[str]]) -> list[str]:
    """``name`` and the stages it is built FROM, nearest first."""
    names = [name]
    while (parent := all_stages[names[-1]][0].split()[1]) in all_stages:
        names.append(parent)
    return names


def test_every_built_image_is_a_dockerfile_target() -> None:
    assert set(BUILT) >= {"edge_agent", "ingest", "northbound"}, BUILT
    all_stages = stages()
    for target in TARGETS:
        assert target in all_stages, f"no Dockerfile target {target!r} for the stacks' image"


def test_bases_are_pinned_by_digest() -> None:
    base = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert base and DIGEST.search(base.group(1)), "ARG BASE must default to an image pinned by @sha256 digest"
    all_stages = stages()
    for name, instructions in all_stages.items():
        source = instructions[0].split()[1]
        assert source == "${BASE}" or source in all_stages or DIGEST.search(source), (name, source)


def test_targets_run_unprivileged_with_labels_and_sbom_and_no_pip() -> None:
    all_stages = stages()
    for target in TARGETS:
        own = all_stages[target]
        users = [i for name in reversed(chain(target, all_stages)) for i in all_stages[name] if i.startswith("USER ")]
        assert users and users[-1] == "USER 10001:10001", (target, users)
        labels = " ".join(i for name in chain(target, all_stages) for i in all_stages[name] if i.startswith("LABEL "))
        for key in ("source", "version", "revision", "created", "title", "description"):
            assert f"org.opencontainers.image.{key}=" in labels, (target, key)
        assert any("image_sbom.py" in i and "sbom.spdx.json" in i for i in own), f"{target}: no SBOM step"
        # The runtime stages copy a finished virtualenv; pip runs only in the builder stages.
        for name in chain(target, all_stages):
            if "builder" in name or name.endswith("-build"):
                continue
            for instruction in all_stages[name]:
                assert not re.search(r"\bpip\d*\b|ensurepip|python3-venv|build-essential|gcc", instruction), (name, instruction)
        assert any(re.match(r"COPY --from=\S+-build /opt/ems/venv /opt/ems/venv", i) for i in own), target


def test_workflow_builds_scans_pushes_and_pins_every_image() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get(True) or workflow.get("on")          # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["tags"], "the workflow must run on version tags"
    assert workflow["permissions"] == {}
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    for step in steps:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "scripts/build-images.sh" in runs and "--push-only" in runs and "pin_image_digests.py" in runs
    scanned = {step["with"]["input"] for step in steps if "trivy-action" in step.get("uses", "")}
    assert scanned == {f"build/{t}.tar" for t in TARGETS}, scanned
    for step in steps:
        assert "${{" not in step.get("run", ""), f"expression expanded inside run: {step.get('name')}"


def test_sbom_lists_debian_packages_and_python_distributions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: python3.11\nStatus: install ok installed\nVersion: 3.11.2-6+deb12u9\nArchitecture: amd64\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: all\n")
    out = subprocess.run([sys.executable, str(ROOT / "scripts/image_sbom.py"), "--name", "edge-agent",
                          "--venv", sys.prefix, "--root", str(root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["name"] == "ems-platform-edge-agent"
    purls = {ref["referenceLocator"] for p in doc["packages"] for ref in p["externalRefs"]}
    assert "pkg:deb/debian/python3.11@3.11.2-6+deb12u9?arch=amd64&distro=debian-12" in purls
    assert not any("/gone@" in p for p in purls)
    import pymodbus
    assert f"pkg:pypi/pymodbus@{pymodbus.__version__}" in purls
    assert len({p["SPDXID"] for p in doc["packages"]}) == len(doc["packages"])
    empty = subprocess.run([sys.executable, str(ROOT / "scripts/image_sbom.py"), "--name", "x", "--venv",
                            str(tmp_path), "--root", str(root)], capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no Python distribution under --venv" in empty.stderr


def test_pin_image_digests_writes_the_lock_the_defaults_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "sha256:" + "ab" * 32
    lines = "".join(f"{t} ghcr.io/ems-platform/{t}:9.9.9@{digest}\n" for t in TARGETS)
    (tmp_path / "digests.txt").write_text(lines)
    lock = tmp_path / "images.lock.json"
    assert pin_image_digests.main([str(tmp_path / "digests.txt"), "--release", "v9.9.9", "--revision", "c" * 40,
                                   "--lock", str(lock)]) == 0
    monkeypatch.setattr(image_lock, "LOCK_FILE", lock)
    defaults = default_images()
    for field, target in BUILT.items():
        ref = getattr(defaults, field)
        assert ref == f"ghcr.io/ems-platform/{target}:9.9.9@{digest}" and _IMAGE.fullmatch(ref), ref
    assert defaults.broker == Images().broker                                # the upstream images untouched
    assert image_lock.load_lock(lock).release == "v9.9.9"
    with pytest.raises(ValueError, match=r"line 1: edge-agent: 'ghcr.io/ems-platform/edge-agent:1.0' has no digest"):
        pin_image_digests.parse_digests("edge-agent ghcr.io/ems-platform/edge-agent:1.0\n")
    with pytest.raises(ValueError, match="no digest for ingest, northbound"):
        pin_image_digests.parse_digests(lines.splitlines()[0])
    with pytest.raises(ValueError, match="release"):
        pin_image_digests.lock_text({"edgeAgent": f"ghcr.io/ems-platform/edge-agent@{digest}"}, "9.9.9", "c" * 40)
    before = lock.read_text()
    assert pin_image_digests.main([str(tmp_path / "digests.txt"), "--release", "v9", "--revision", "c" * 40,
                                   "--lock", str(lock)]) == 1
    assert lock.read_text() == before                                        # nothing written on an error


def test_the_repository_lock_is_valid_and_says_whether_the_images_are_published() -> None:
    lock = image_lock.load_lock()
    defaults = default_images()
    if lock.published:
        assert set(lock.images) == set(image_lock.BUILT_IMAGES) and image_lock.unpublished(defaults) == {}
    else:
        # The workflow has not run: no digest anywhere, the defaults are Images' version tags.
        assert lock.release is None and lock.revision is None
        assert image_lock.unpublished(defaults) == {key: getattr(Images(), image_lock.snake(key))
                                                    for key in image_lock.BUILT_IMAGES}


# ---- the built images (make images) ---------------------------------------------------------------------

VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
# The limits and runtime scripts/build-images.sh uses (see there: this host refuses the engine's defaults).
ENGINE = ["podman", "--runtime", "runc"] if shutil.which("runc") else ["podman"]
# Built here 2026-12-06 (debian-slim-equivalent base 78 MB, Debian's python3 and ca-certificates 48 MB,
# then the virtualenv): edge-agent 155 MB, northbound 174 MB, ingest about 210 MB with numpy; they were
# 267-302 MB (apt caches and perl). The bounds leave room for updates, not for those to come back.
MAX_IMAGE_BYTES = {"edge-agent": 180_000_000, "ingest": 240_000_000, "northbound": 200_000_000}
# What each image's command imports at run time beyond --version (numpy for the ingest's column paths).
IMPORTS = {"edge-agent": "edge_agent.agent", "ingest": "ingest.remote_write, ingest.dedup", "northbound": "northbound.cli"}
LIMITS = ["--ulimit", f"nofile={os.sysconf('SC_OPEN_MAX')}:{os.sysconf('SC_OPEN_MAX')}", "--ulimit", "nproc=4096:4096"]


def image(target: str) -> str:
    ref = f"ghcr.io/ems-platform/{target}:{VERSION}"
    found = subprocess.run([*ENGINE, "image", "exists", ref], capture_output=True, timeout=60)
    assert found.returncode == 0, f"{ref} is not built: run `make images` (scripts/build-images.sh --local-base)"
    return ref


def run_in(ref: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess:
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    return subprocess.run([*ENGINE, "run", "--rm", *LIMITS, "--network", "none", *extra, ref, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.images
@pytest.mark.parametrize("target", TARGETS)
def test_image_has_no_pip_no_compiler_and_its_sbom(target: str) -> None:
    ref = image(target)
    probe = run_in(ref, "-c", "import os, shutil, importlib.util as u, json; "
                   "print(json.dumps([os.getuid(), os.getgid(), u.find_spec('pip') is None, u.find_spec('ensurepip') is None, "
                   "[t for t in ('pip', 'pip3', 'gcc', 'cc', 'make', 'apt-get') if shutil.which(t) and t != 'apt-get'], "
                   "json.load(open('/usr/share/doc/ems-platform/sbom.spdx.json')), "
                   "sorted(os.listdir('/var/cache/apt')), os.listdir('/var/lib/apt/lists')]))", entrypoint="python3")
    assert probe.returncode == 0, probe.stderr
    uid, gid, no_pip, no_ensurepip, tools, sbom, apt_cache, apt_lists = json.loads(probe.stdout)
    assert (uid, gid, no_pip, no_ensurepip, tools) == (10001, 10001, True, True, [])
    assert sbom["name"] == f"ems-platform-{target}"
    # What made the images 270-300 MB: apt's package caches (80 MB, *.bin) and perl (50 MB, pulled in by
    # usrmerge where the base lacked usr-is-merged). Neither is needed at run time.
    assert apt_cache == ["archives"] and apt_lists in ([], ["partial"], ["lock", "partial"]), (apt_cache, apt_lists)
    debs = {p["name"] for p in sbom["packages"] if p["externalRefs"][0]["referenceLocator"].startswith("pkg:deb/")}
    assert "python3.11" in debs and not debs & {"usrmerge", "perl", "perl-modules-5.36"}, sorted(debs)
    size = int(subprocess.run([*ENGINE, "image", "inspect", ref, "--format", "{{.Size}}"], capture_output=True,
                              text=True, timeout=60, check=True).stdout)
    assert size < MAX_IMAGE_BYTES[target], f"{ref} is {size / 1e6:.0f} MB (bound {MAX_IMAGE_BYTES[target] / 1e6:.0f} MB)"
    imported = run_in(ref, "-c", f"import {IMPORTS[target]}", entrypoint="/opt/ems/venv/bin/python")
    assert imported.returncode == 0, imported.stderr[-2000:]
    command = {"edge-agent": "ems-edge", "ingest": "ems-ingest", "northbound": "ems-northbound"}[target]
    version = run_in(ref, "--version")
    assert version.returncode == 0 and version.stdout.startswith(f"{command} {VERSION}"), (version.stdout, version.stderr)
    labels = json.loads(subprocess.run([*ENGINE, "image", "inspect", ref, "--format", "{{json .Labels}}"],
                                       capture_output=True, text=True, timeout=60, check=True).stdout)
    assert labels["org.opencontainers.image.version"] == VERSION
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])


@pytest.mark.images
def test_edge_agent_image_publishes_to_the_test_broker(tmp_path: Path, pki: LocalPki, broker: MosquittoBroker) -> None:
    ref = image("edge-agent")
    sim = SimulatorProcess(tmp_path, free_port())
    sim.start()
    observer = Observer(broker.plain_port, client_id="image-test").start()
    site = tmp_path / "site"
    write_agent_config(site, pki, broker_port=broker.tls_port, modbus_port=sim.port, http_port=free_port())
    # The site folder is the pod's /etc/ems volume: the service user owns it (the key must be its own, 0600).
    for path in [site, *site.rglob("*")]:
        os.chown(path, 10001, 10001)
    name = f"ems-image-test-{uuid.uuid4().hex[:8]}"
    run = [*ENGINE, "run", "--rm", "--name", name, *LIMITS, "--network", "host", "--read-only",
           "--volume", f"{site}:/etc/ems", ref]        # the image's CMD: run --config /etc/ems/sensors.conf
    agent = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any((r.asset, r.point) == ("tx1", "oil_temp") for r in observer.readings()):
            assert agent.poll() is None, f"the agent container exited {agent.returncode}: {agent.stdout.read()}"
            assert time.monotonic() < deadline, "no tx1/oil_temp reading from the agent image within 60 s"
            time.sleep(0.2)
        assert (site / "telemetry-audit.log").stat().st_uid == 10001      # written by the image's user, on the volume
    finally:
        subprocess.run([*ENGINE, "stop", "--time", "15", name], capture_output=True, timeout=60)
        code = agent.wait(timeout=30)
        log = agent.stdout.read()
        observer.stop()
        sim.stop()
    assert code == 0, f"the agent container exited {code} on SIGTERM:\n{log[-3000:]}"
    assert observer.readings(), log[-3000:]
