"""Rejects a Dockerfile ``ADD`` that fetches a remote source without a checksum.

``ADD https://…`` and ``ADD git@…`` put whatever the server returns on build day into the image;
hadolint has no rule for it (DL3020 covers local files only). Remote content must be pinned with
``ADD --checksum=sha256:…`` (BuildKit verifies it) or fetched and verified in a ``RUN`` step.

Usage: ``python3 scripts/check_dockerfile_add.py Dockerfile…``; prints ``FILE:LINE: …`` per
offending instruction and exits 1 when there is one, 2 when a file cannot be read.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

_REMOTE = re.compile(r"^(?:https?://|git://|ssh://|git@)", re.IGNORECASE)
_ESCAPE_DIRECTIVE = re.compile(r"^#\s*escape\s*=\s*(\S)", re.IGNORECASE)


def instructions(text: str) -> Iterator[tuple[int, str]]:
    """Yields ``(first line number, instruction)`` with continuation lines joined and comments dropped."""
    escape = "\\"
    start, parts, seen = 0, [], False
    for number, line in enumerate(text.splitlines(), 1):
        if not seen and (m := _ESCAPE_DIRECTIVE.match(line)):     # a parser directive: only before the first instruction
            escape = m.group(1)
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not parts:
            start, seen = number, True
        if stripped.endswith(escape):
            parts.append(stripped[:-1])
            continue
        parts.append(stripped)
        yield start, " ".join(parts)
        parts = []
    if parts:
        yield start, " ".join(parts)


def remote_sources(instruction: str) -> list[str] | None:
    """The remote sources of an ``ADD`` without ``--checksum``; None for any other instruction."""
    words = instruction.split(None, 1)
    if words and words[0].upper() == "ONBUILD" and len(words) > 1:
        words = words[1].split(None, 1)
    if len(words) < 2 or words[0].upper() != "ADD":
        return None
    rest = words[1].strip()
    flags = []
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag.lower())
        rest = rest.strip()
    if any(flag.startswith("--checksum=") for flag in flags):
        return []
    if rest.startswith("["):
        try:
            args = [str(a) for a in json.loads(rest)]
        except ValueError:
            args = rest.split()
    else:
        args = rest.split()
    return [a for a in args[:-1] if _REMOTE.match(a)]


def check(path: Path) -> list[str]:
    problems = []
    for number, instruction in instructions(path.read_text(encoding="utf-8")):
        for source in remote_sources(instruction) or ():
            problems.append(f"{path}:{number}: ADD of a remote source without --checksum ({source}): "
                            "pin it with ADD --checksum=sha256:… or fetch and verify it in a RUN step")
    return problems


def main(argv: list[str]) -> int:
    problems = []
    for name in argv:
        try:
            problems += check(Path(name))
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{name}: cannot read ({exc})", file=sys.stderr)
            return 2
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
