"""Wheels rebuilt from this virtualenv's installed distributions, for tests that install into an empty venv.

Tests reach no package index, so ``pip install --no-index --find-links DIR`` needs the wheels
locally. An installed distribution lists its files in ``RECORD``: zipping those files (the
package, its ``.dist-info``) back under the name and tag its ``WHEEL`` file states gives the
wheel it was installed from, minus the console scripts, which pip writes again from
``entry_points.txt``. :func:`build_wheelhouse` does that for requirements and everything they
require, with the markers evaluated for this interpreter.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Iterable

from packaging.markers import default_environment
from packaging.requirements import Requirement

__all__ = ["build_wheelhouse", "closure"]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: Iterable[str], extras_env: dict[str, str] | None = None) -> dict[str, metadata.Distribution]:
    """The installed distributions ``requirements`` need, transitively (normalised name → distribution)."""
    found: dict[str, metadata.Distribution] = {}
    pending = [(Requirement(r), "") for r in requirements]
    while pending:
        req, extra = pending.pop()
        env = {**default_environment(), **(extras_env or {}), "extra": extra}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = _normal(req.name)
        dist = metadata.distribution(req.name)   # PackageNotFoundError: the venv lacks a requirement
        if name not in found:
            found[name] = dist
            pending += [(Requirement(r), "") for r in dist.requires or []]
        for wanted in req.extras:
            pending += [(Requirement(r), wanted) for r in dist.requires or []
                        if Requirement(r).marker is not None and f'extra == "{wanted}"' in str(Requirement(r).marker).replace("'", '"')]
    return found


def _wheel_name(dist: metadata.Distribution) -> str:
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise ValueError(f"{dist.metadata['Name']}: no Tag in its WHEEL file (not installed from a wheel)")
    # The compressed tag set (``py2.py3-none-any``): each part lists its values in the order first seen.
    parts = [".".join(dict.fromkeys(tag.split("-")[i] for tag in tags)) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return f"{name}-{dist.version}-{'-'.join(parts)}.whl"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def rebuild(dist: metadata.Distribution, into: Path) -> Path:
    """Zip ``dist``'s installed files into a wheel in ``into``; returns its path."""
    target = into / _wheel_name(dist)
    rows: list[tuple[str, str, str]] = []
    record_name = None
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for file in dist.files or []:
            posix = file.as_posix()
            if posix.startswith("..") or "__pycache__" in posix or posix.endswith(".pyc"):
                continue  # console scripts (pip writes them again) and bytecode
            top_dist_info = posix.count("/") == 1 and posix.split("/")[0].endswith(".dist-info")
            if top_dist_info and posix.endswith("/RECORD"):
                record_name = posix
                continue
            if top_dist_info and posix.rsplit("/", 1)[1] in ("INSTALLER", "direct_url.json", "REQUESTED"):
                continue  # written by the installer, not part of the wheel
            path = Path(dist.locate_file(file))
            if not path.is_file():
                continue
            data = path.read_bytes()
            zf.writestr(posix, data)
            rows.append((posix, _record_hash(data), str(len(data))))
        if record_name is None:
            raise ValueError(f"{dist.metadata['Name']}: no RECORD")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([*rows, (record_name, "", "")])
        zf.writestr(record_name, buffer.getvalue())
    return target


def build_wheelhouse(requirements: Iterable[str], into: Path) -> list[Path]:
    """Wheels for ``requirements`` and their dependencies, rebuilt from this environment, in ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    return [rebuild(dist, into) for dist in closure(requirements).values()]
