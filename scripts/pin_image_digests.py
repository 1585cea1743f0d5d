"""Pins the stacks' default images (``ems:images``, components/settings.py ``Images``) to pushed digests.

Reads the lines ``scripts/build-images.sh --push`` writes (``TARGET REGISTRY/NAME:TAG@sha256:…``) and
rewrites the matching ``Images`` defaults to ``REGISTRY/NAME:TAG@sha256:…``, so a stack that does not
set ``ems:images`` deploys exactly the bytes the release workflow built and scanned. The tag stays for
the reader; the digest is what the kubelet pulls.

Usage: ``python3 scripts/pin_image_digests.py build/digests.txt [components/settings.py]``; exits 1
naming the line or the field it cannot pin.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FIELDS = {"edge-agent": "edge_agent", "ingest": "ingest", "northbound": "northbound"}
_LINE = re.compile(r"^(?P<target>[a-z-]+) (?P<ref>[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}@sha256:[0-9a-f]{64})$")


def parse_digests(text: str) -> dict[str, str]:
    """``{Images field: pinned reference}`` from the digests file; ValueError names a bad line."""
    pins = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if not m or m["target"] not in FIELDS:
            raise ValueError(f"line {number}: {line!r} is not 'TARGET IMAGE:TAG@sha256:<64 hex>' with TARGET one of {', '.join(FIELDS)}")
        pins[FIELDS[m["target"]]] = m["ref"]
    return pins


def pin(settings_source: str, pins: dict[str, str]) -> str:
    """``settings_source`` with each ``Images`` default in ``pins`` replaced; ValueError if a field is missing."""
    for field, ref in pins.items():
        pattern = re.compile(rf'^(    {field}: str = )"[^"]*"$', re.MULTILINE)
        settings_source, count = pattern.subn(lambda m, ref=ref: f'{m.group(1)}"{ref}"', settings_source)
        if count != 1:
            raise ValueError(f"Images.{field}: expected one default to pin, found {count}")
    return settings_source


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    settings = Path(argv[1] if len(argv) == 2 else "components/settings.py")
    try:
        text = pin(settings.read_text(), parse_digests(Path(argv[0]).read_text()))
    except (OSError, ValueError) as exc:
        print(f"pin_image_digests: error: {exc}", file=sys.stderr)
        return 1
    settings.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
