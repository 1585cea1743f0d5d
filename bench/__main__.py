"""`make bench`: run every benchmark module ``bench/bench_*.py`` (each has ``main()``) and print figures.

    python -m bench            # all
    python -m bench edge       # only modules whose name contains "edge"
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    wanted = [n for n in names if not argv or any(a in n for a in argv)]
    if not wanted:
        print(f"no benchmark matches {argv}; have: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # noqa: BLE001 one broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"!!! {name} failed: {exc!r}", flush=True)
        print(f"--- {name}: {time.monotonic() - started:.1f}s", flush=True)
    if failed:
        print(f"\nfailed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
