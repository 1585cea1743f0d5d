"""The digest lock of the images this repository builds: ``images.lock.json`` at the project root.

The release workflow (``.github/workflows/images.yml``) pushes the edge-agent, ingest and north-bound
images and then rewrites this file with ``scripts/pin_image_digests.py``; the Pulumi program reads it
for the ``ems:images`` defaults of those three images, so a stack that does not set ``ems:images``
deploys exactly the bytes the workflow built and scanned. The file looks like::

    {"schema": 1, "release": "v0.2.0", "revision": "<40 hex>",
     "images": {"edgeAgent": "ghcr.io/ems-platform/edge-agent:0.2.0@sha256:<64 hex>", ...}}

Until the workflow has run, ``release`` is null and ``images`` is empty: no digest is known and none
is invented. The defaults are then the version tags of ``Images`` (which nothing has pushed yet);
``unpublished()`` names them so the program can say so, and the ``container-image-digest`` policy
refuses them on production stacks.

Every reference in the file must be ``REPOSITORY[:TAG]@sha256:<64 lowercase hex>``; ``LockError``
names the file, the field and the value otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

LOCK_FILE = Path(__file__).resolve().parents[1] / "images.lock.json"
SCHEMA = 1
# The ems:images keys of the images this repository builds (Dockerfile targets) and their targets.
BUILT_IMAGES = {"edgeAgent": "edge-agent", "ingest": "ingest", "northbound": "northbound"}
MAX_BYTES = 64 * 1024

DIGEST_REF = re.compile(r"^(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+)"
                        r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?@(?P<digest>sha256:[0-9a-f]{64})$")
_RELEASE = re.compile(r"^v\d+\.\d+\.\d+([-.+][0-9A-Za-z.-]+)?$")
_REVISION = re.compile(r"^[0-9a-f]{40}$")


class LockError(ValueError):
    """A bad ``images.lock.json``: names the file, the field and the value."""

    def __init__(self, path: Path | str, field: str, value: object, reason: str) -> None:
        shown = json.dumps(value) if not isinstance(value, str) else repr(value)
        super().__init__(f"{path}: {field}: {shown[:200]} {reason}")
        self.field = field
        self.value = value


@dataclass(frozen=True)
class ImageLock:
    """What the release workflow recorded: its tag and commit, and ``{ems:images key: repo[:tag]@sha256:…}``."""

    release: str | None
    revision: str | None
    images: dict[str, str]

    @property
    def published(self) -> bool:
        return bool(self.images)


def check_reference(path: Path | str, field: str, value: object) -> str:
    """``value`` if it is ``REPOSITORY[:TAG]@sha256:<64 hex>`` with a registry host, else LockError."""
    if not isinstance(value, str):
        raise LockError(path, field, value, "must be a string REPOSITORY[:TAG]@sha256:<64 hex>")
    if "@" not in value:
        raise LockError(path, field, value, "has no digest; expected REPOSITORY[:TAG]@sha256:<64 hex>")
    if not DIGEST_REF.fullmatch(value):
        raise LockError(path, field, value, "is not REPOSITORY[:TAG]@sha256:<64 lowercase hex> "
                        "(a registry host, a lowercase path, an optional tag, a sha256 digest)")
    return value


def parse_lock(text: str, path: Path | str = "images.lock.json") -> ImageLock:
    """Validate the lock file's text; LockError names the first bad field."""
    if len(text.encode()) > MAX_BYTES:
        raise LockError(path, "(file)", f"{len(text.encode())} bytes", f"is larger than {MAX_BYTES} bytes")
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockError(path, "(file)", text[:40], f"is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(doc, dict):
        raise LockError(path, "(file)", doc, "must be a JSON object")
    unknown = sorted(set(doc) - {"schema", "about", "release", "revision", "images"})
    if unknown:
        raise LockError(path, unknown[0], doc[unknown[0]], "is not a lock field (schema, about, release, revision, images)")
    if doc.get("schema") != SCHEMA:
        raise LockError(path, "schema", doc.get("schema"), f"must be {SCHEMA}")
    release, revision, images = doc.get("release"), doc.get("revision"), doc.get("images")
    if release is not None and not (isinstance(release, str) and _RELEASE.fullmatch(release)):
        raise LockError(path, "release", release, "must be null or a version tag such as v0.2.0")
    if revision is not None and not (isinstance(revision, str) and _REVISION.fullmatch(revision)):
        raise LockError(path, "revision", revision, "must be null or a 40-hex commit")
    if not isinstance(images, dict):
        raise LockError(path, "images", images, "must be an object {ems:images key: REPOSITORY[:TAG]@sha256:…}")
    for key, ref in images.items():
        if key not in BUILT_IMAGES:
            raise LockError(path, f"images.{key}", ref, f"is not an image this repository builds ({', '.join(BUILT_IMAGES)})")
        check_reference(path, f"images.{key}", ref)
    if bool(images) != (release is not None):
        raise LockError(path, "release", release, "must be set exactly when images holds digests (the workflow writes both)")
    return ImageLock(release, revision, dict(images))


def load_lock(path: Path = LOCK_FILE) -> ImageLock:
    """The lock file at ``path``; a missing file is an error (it is part of the repository)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(path, "(file)", str(path), f"cannot be read: {exc}") from None
    return parse_lock(text, path)


def snake(key: str) -> str:
    """``edgeAgent`` → ``edge_agent`` (the Images field of an ems:images key)."""
    return re.sub(r"([A-Z])", r"_\1", key).lower()


def locked_defaults(images: Any, lock: ImageLock) -> Any:
    """``images`` (an ``Images``) with every image the lock pins replaced by its digest reference."""
    return replace(images, **{snake(key): ref for key, ref in lock.images.items()})


def unpublished(images: Any) -> dict[str, str]:
    """``{ems:images key: reference}`` of the built images that ``images`` still deploys without a digest."""
    return {key: getattr(images, snake(key)) for key in BUILT_IMAGES if "@" not in getattr(images, snake(key))}


def digest_warning(images: Any, lock: ImageLock) -> str | None:
    """What the program warns when a built image would deploy without a digest; None when all have one."""
    tags = unpublished(images)
    if not tags:
        return None
    why = (f"{LOCK_FILE.name} holds no digest: the release workflow has not published these images"
           if not lock.published else "ems:images sets them by tag")
    return (f"ems:images {', '.join(tags)}: no digest ({why}), so the stack deploys the tags "
            f"{', '.join(tags.values())}; set ems:images to images you pushed, by @sha256 digest. "
            "Production stacks refuse tag-only images (policy container-image-digest).")
