"""Offline preview (emsctl) time and peak memory vs the number of edge sites.

For the ``local`` and ``aws-us-east-1`` stacks, temporary copies of the stack file list 10, 100
and 1000 edge sites (``ems:edgeSites``; each site gets a client certificate, key and Secret); the
project's program and components are linked into a temporary project so ``stacks/`` is never
touched. Each point is a fresh evaluation process (no cache): wall time of ``evaluate_stack``,
time of the program inside it, peak RSS of that process, resources declared, and the time to
render the manifests. Growth ratios are printed per 10x sites; linear growth gives at most 10x
(less, while fixed costs dominate).

    python -m bench preview
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import yaml

from emsctl.capture import evaluate_stack
from emsctl.render import render

REPO = Path(__file__).resolve().parent.parent
SITES = (10, 100, 1000)
STACKS = ("local", "aws-us-east-1")


def make_project(root: Path, stack: str, sites: int) -> str:
    """A temporary project sharing the program, with one stack file listing ``sites`` edge sites."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name == "__main__.py" or (entry.is_dir() and entry.name == "components"):
            link = root / entry.name
            if not link.exists():
                link.symlink_to(entry)
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    project["stackConfigDir"] = "stacks"
    (root / "Pulumi.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    doc = yaml.safe_load((REPO / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    doc["config"]["ems:edgeSites"] = [f"site-{i:04d}" for i in range(sites)]
    if "ems:renderDirectory" in doc["config"]:
        doc["config"]["ems:renderDirectory"] = str(root / "rendered")
    name = f"{stack}-{sites}"
    (root / "stacks").mkdir(exist_ok=True)
    (root / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return name


def measure(stack: str, sites: int, tmp: Path) -> dict[str, float]:
    project = tmp / "project"
    name = make_project(project, stack, sites)
    started = time.monotonic()
    cap = evaluate_stack(project, name, use_cache=False)
    wall = time.monotonic() - started
    out = tmp / f"render-{name}"
    started = time.monotonic()
    files = render(cap, out)
    render_s = time.monotonic() - started
    shutil.rmtree(out, ignore_errors=True)
    return {"sites": sites, "resources": len(cap.resources), "wall_s": wall, "program_s": cap.program_seconds,
            "rss_mib": cap.max_rss_kb / 1024, "render_s": render_s, "files": len(files)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-preview-") as tmp_name:
        tmp = Path(tmp_name)
        for stack in STACKS:
            print(f"stack {stack} (fresh evaluation process per point, no cache)")
            print(f"  {'sites':>6} {'resources':>9} {'wall s':>8} {'program s':>9} {'ms/res':>7} {'peak MiB':>9} "
                  f"{'render s':>8} {'files':>6}")
            rows = []
            for sites in SITES:
                row = measure(stack, sites, tmp)
                rows.append(row)
                print(f"  {row['sites']:>6} {row['resources']:>9} {row['wall_s']:>8.2f} {row['program_s']:>9.2f} "
                      f"{1000 * row['wall_s'] / row['resources']:>7.2f} {row['rss_mib']:>9.1f} {row['render_s']:>8.2f} "
                      f"{row['files']:>6}", flush=True)
            for prev, cur in zip(rows, rows[1:]):
                print(f"  {prev['sites']}→{cur['sites']} sites (10x): resources x{cur['resources'] / prev['resources']:.2f}, "
                      f"time x{cur['wall_s'] / prev['wall_s']:.2f}, program x{cur['program_s'] / prev['program_s']:.2f}, "
                      f"peak memory x{cur['rss_mib'] / prev['rss_mib']:.2f}, "
                      f"time per resource x{(cur['wall_s'] / cur['resources']) / (prev['wall_s'] / prev['resources']):.2f}")


if __name__ == "__main__":
    main()
