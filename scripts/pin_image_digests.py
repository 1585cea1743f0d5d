"""Records the digests of the pushed images in ``images.lock.json``, which the stacks' defaults read.

Reads the lines ``scripts/build-images.sh --push`` writes (``TARGET REGISTRY/NAME:TAG@sha256:…``, one per
Dockerfile target) and rewrites the lock file (components/image_lock.py) with them, the release tag and
the commit, so a stack that does not set ``ems:images`` deploys exactly the bytes the release workflow
built and scanned. The tag stays in each reference for the reader; the digest is what the kubelet pulls.
Every target must be there: a release that pushed only some images would leave a lock that mixes
releases. The file is validated before it is written (the program reads it with the same checks).

Usage: ``python3 scripts/pin_image_digests.py build/digests.txt --release v0.2.0 --revision <40 hex>
[--lock images.lock.json]``; exits 1 naming the line or the field it cannot pin.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from components import image_lock  # noqa: E402

TARGETS = {target: key for key, target in image_lock.BUILT_IMAGES.items()}
_LINE = re.compile(r"^(?P<target>\S+) (?P<ref>\S+)$")
ABOUT = ("Digests of the images this repository builds, written by .github/workflows/images.yml "
         "(scripts/pin_image_digests.py) after it pushed them; the Pulumi program takes its ems:images "
         "defaults for edgeAgent, ingest and northbound from here. See components/image_lock.py.")


def parse_digests(text: str) -> dict[str, str]:
    """``{ems:images key: pinned reference}`` from the digests file; ValueError names a bad line."""
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if not m or m["target"] not in TARGETS:
            raise ValueError(f"line {number}: {line!r} is not 'TARGET IMAGE[:TAG]@sha256:<64 hex>' with TARGET one "
                             f"of {', '.join(TARGETS)}")
        key = TARGETS[m["target"]]
        if key in pins:
            raise ValueError(f"line {number}: a second digest for {m['target']}")
        image_lock.check_reference(f"line {number}", m["target"], m["ref"])
        pins[key] = m["ref"]
    missing = [t for t, key in TARGETS.items() if key not in pins]
    if missing:
        raise ValueError(f"no digest for {', '.join(missing)}: the release pushes every image or pins none")
    return pins


def lock_text(pins: dict[str, str], release: str, revision: str) -> str:
    """The lock file for ``pins``; ValueError (LockError) if it would not validate."""
    text = json.dumps({"schema": image_lock.SCHEMA, "about": ABOUT, "release": release, "revision": revision,
                       "images": dict(sorted(pins.items()))}, indent=2) + "\n"
    image_lock.parse_lock(text, "(new lock)")
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("digests", type=Path)
    parser.add_argument("--release", required=True, help="the release tag, e.g. v0.2.0")
    parser.add_argument("--revision", required=True, help="the commit the images were built from (40 hex)")
    parser.add_argument("--lock", type=Path, default=image_lock.LOCK_FILE)
    args = parser.parse_args(argv)
    try:
        text = lock_text(parse_digests(args.digests.read_text()), args.release, args.revision)
    except (OSError, ValueError) as exc:
        print(f"pin_image_digests: error: {exc}", file=sys.stderr)
        return 1
    args.lock.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
