"""What every command answers to ``--version``: its name, the ems-platform release, and Python.

The release comes from the installed distribution's metadata (``pyproject.toml`` ``version``), so
an installed command and its package can never disagree; a checkout run without installing
(``python -m edge_agent.cli``) says so instead of guessing.
"""

from __future__ import annotations

import platform
from importlib import metadata

DISTRIBUTION = "ems-platform"


def release() -> str:
    """The installed ems-platform version, or ``unknown (not installed)``."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def version_text(prog: str) -> str:
    """``"<prog> 0.1.0 (ems-platform, Python 3.11.2)"``: the line ``--version`` prints."""
    return f"{prog} {release()} ({DISTRIBUTION}, Python {platform.python_version()})"
