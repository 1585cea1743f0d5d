"""``emsctl`` — offline preview/render and policy gate for Python Pulumi projects.

    emsctl preview --stack local [--project DIR] [--render DIR] [--json] [--verbose]
    emsctl policy  --stack local | --all-stacks [--project DIR] [--pack DIR]... [--pack-config FILE]... [--json]

Exit codes: 0 success (policy: no mandatory violation); 1 policy: mandatory violations;
2 usage, config or program error (``pulumi.RunError``) — one line on stderr, no traceback;
3 the program crashed with an unexpected exception or a policy pack failed (traceback with --verbose).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

from ems_runtime.version import version_text

from .errors import ConfigError, EmsctlError, PolicyPackError, ProgramError

EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 3
DEFAULT_PACK = "policies/ems-guard"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emsctl", description="Offline preview and policy gate for Pulumi (no CLI, no credentials).")
    p.add_argument("--version", action="version", version=version_text("emsctl"))
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--project", default=".", metavar="DIR", help="Pulumi project directory (default: .)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    common.add_argument("-v", "--verbose", action="store_true", help="show tracebacks, program output and pack logs")
    common.add_argument("--unknowns", action="store_true",
                        help="evaluate as a first `pulumi preview`: values the cloud computes are unknown")

    pv = sub.add_parser("preview", parents=[common], help="evaluate a stack under mocks; summarise; render manifests")
    pv.add_argument("--stack", required=True, metavar="NAME")
    pv.add_argument("--render", metavar="DIR", help="write every Kubernetes object as YAML, one object per file")

    po = sub.add_parser("policy", parents=[common], help="run policy packs over the Analyzer protocol, as the CLI does")
    which = po.add_mutually_exclusive_group(required=True)
    which.add_argument("--stack", metavar="NAME")
    which.add_argument("--all-stacks", action="store_true", help="every Pulumi.<stack>.yaml of the project")
    po.add_argument("--pack", action="append", metavar="DIR", help=f"policy pack directory, repeatable (default: {DEFAULT_PACK})")
    po.add_argument("--pack-config", action="append", metavar="FILE",
                    help="JSON policy config for the pack at the same position (as pulumi --policy-pack-config)")
    return p


def _err(message: str) -> None:
    print(f"emsctl: error: {message}", file=sys.stderr)


# What the Pulumi program needs in this interpreter: the ems-platform[pulumi] extra (pyproject.toml).
PULUMI_MODULES = ("pulumi", "pulumi_aws", "pulumi_kubernetes", "pulumi_tls", "pulumi_policy")


def _require_pulumi() -> None:
    """The preview and the gate run the program and the packs with this interpreter: their SDKs must be here."""
    missing = [name for name in PULUMI_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError("this environment", None, f"lacks the Pulumi SDK and providers (missing {', '.join(missing)}); "
                                                    "install them with: pip install 'ems-platform[pulumi]'")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _require_pulumi()
        if args.command == "preview":
            return _preview(args)
        return _policy(args)
    except ProgramError as exc:
        _err(str(exc))
        if args.verbose and exc.traceback:
            print(exc.traceback, file=sys.stderr)
        return EXIT_USAGE if exc.kind == "run" else EXIT_CRASH
    except PolicyPackError as exc:
        _err(str(exc))
        return EXIT_CRASH
    except EmsctlError as exc:  # ConfigError, RenderError
        _err(str(exc))
        return EXIT_USAGE


# ---------------------------------------------------------------------------------------------
def _redacted(value: Any) -> Any:
    from .values import UNKNOWN, Secret
    if isinstance(value, Secret):
        return "[secret]"
    if value is UNKNOWN:
        return "[unknown]"
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def summarise(capture: Any) -> dict[str, Any]:
    """Resources by type, per component and in total (the data behind ``emsctl preview``)."""
    by_type = Counter(r.type for r in capture.resources)
    components = []
    for r in capture.resources:
        if r.custom:
            continue
        below = Counter(d.type for d in capture.descendants(r.urn))
        components.append({"urn": r.urn, "type": r.type, "name": r.name, "resources": sum(below.values()),
                           "byType": dict(sorted(below.items()))})
    return {
        "project": capture.project, "stack": capture.stack, "total": len(capture.resources),
        "custom": sum(1 for r in capture.resources if r.custom), "components": components,
        "byType": dict(sorted(by_type.items())), "outputs": _redacted(capture.outputs),
        "secureConfigPlaceholders": list(capture.secure_keys), "unemulatedCalls": capture.unemulated_calls,
        "seconds": round(capture.seconds, 3),
    }


def _preview(args: argparse.Namespace) -> int:
    from .capture import evaluate_stack
    from .render import render

    capture = evaluate_stack(args.project, args.stack, preview=args.unknowns)
    summary = summarise(capture)
    if args.render:
        files = render(capture, args.render)
        summary["rendered"] = {"directory": str(Path(args.render)), "files": len(files)}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=False))
    else:
        _print_summary(summary)
    if args.verbose:
        out = capture_program_output(capture)
        if out:
            print(out, file=sys.stderr)
    else:  # warnings are shown as the CLI shows them; the rest only with --verbose
        for d in capture.diagnostics:
            if d["level"] == "warning":
                print(f"emsctl: warning: {capture.project}/{capture.stack}: {d['message'].strip()}", file=sys.stderr)
    return EXIT_OK


def capture_program_output(capture: Any) -> str:
    """The program's log lines (pulumi.log) and what it printed, for --verbose."""
    lines = [f"[{d['level']}] {d['message']}" for d in capture.diagnostics]
    if capture.program_output.strip():
        lines.append(capture.program_output.rstrip())
    return "\n".join(lines)


def _short(token: str) -> str:
    """``kubernetes:apps/v1:Deployment`` → ``Deployment``; ``pulumi:providers:kubernetes`` → ``provider kubernetes``."""
    if token.startswith("pulumi:providers:"):
        return f"provider {token.rsplit(':', 1)[-1]}"
    return token.rsplit(":", 1)[-1]


def _print_summary(s: dict[str, Any]) -> None:
    print(f"Stack {s['project']}/{s['stack']}: {s['total']} resources "
          f"({s['custom']} custom, {len(s['components'])} component{'' if len(s['components']) == 1 else 's'}) evaluated offline in {s['seconds']:.2f}s")
    print("\nResources by type:")
    width = max((len(str(n)) for n in s["byType"].values()), default=1)
    for token, n in s["byType"].items():
        print(f"  {n:>{width}}  {token}")
    if s["components"]:
        print("\nPer component:")
        for c in s["components"]:
            kinds = ", ".join(f"{_short(t)} {n}" for t, n in c["byType"].items())
            noun = "resource" if c["resources"] == 1 else "resources"
            print(f"  {c['type']} {c['name']}: {c['resources']} {noun}" + (f" ({kinds})" if kinds else ""))
    if s["outputs"]:
        print("\nOutputs: " + ", ".join(s["outputs"]))
    for key in s["secureConfigPlaceholders"]:
        print(f"note: config {key} is a secure value; offline it is the secret placeholder (cannot decrypt)")
    for tok in s["unemulatedCalls"]:
        print(f"note: provider function {tok} is not emulated offline; it returned an empty result")
    if "rendered" in s:
        print(f"\nRendered {s['rendered']['files']} Kubernetes manifests to {s['rendered']['directory']}")


# ---------------------------------------------------------------------------------------------
def _load_pack_configs(args: argparse.Namespace, packs: list[str]) -> list[dict[str, Any] | None]:
    files = args.pack_config or []
    if len(files) > len(packs):
        raise ConfigError("--pack-config", files[len(packs)], f"has no matching --pack ({len(packs)} pack(s) given)")
    configs: list[dict[str, Any] | None] = []
    for i, _ in enumerate(packs):
        if i >= len(files):
            configs.append(None)
            continue
        try:
            data = json.loads(Path(files[i]).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("--pack-config", files[i], f"cannot be read ({exc.strerror})") from exc
        except ValueError as exc:
            raise ConfigError("--pack-config", files[i], f"is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError("--pack-config", files[i], "must hold a JSON object")
        configs.append(data)
    return configs


def _default_pack() -> str:
    """``policies/ems-guard`` of the current directory, else of the checkout emsctl runs from."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / DEFAULT_PACK / "PulumiPolicy.yaml").is_file():
            return str(base / DEFAULT_PACK)
    return DEFAULT_PACK


def _policy(args: argparse.Namespace) -> int:
    from .capture import evaluate_stack, list_stacks, load_project
    from .gate import run_pack

    load_project(args.project)  # a bad project is one clean error before anything starts
    packs = args.pack or [_default_pack()]
    for pack in packs:
        if not (Path(pack) / "PulumiPolicy.yaml").is_file():
            raise ConfigError("--pack", pack, "is not a policy pack directory (no PulumiPolicy.yaml)")
    configs = _load_pack_configs(args, packs)
    stacks = list_stacks(args.project) if args.all_stacks else [args.stack]
    if not stacks:
        raise ConfigError("--all-stacks", args.project, "the project has no stack files")
    started = time.monotonic()
    runs, failures = [], []
    for stack in stacks:
        try:
            capture = evaluate_stack(args.project, stack, preview=args.unknowns)
        except (ProgramError, ConfigError) as exc:
            if not args.all_stacks:
                raise
            # One broken stack must not hide the others' violations; it still fails the gate.
            failures.append({"stack": stack, "error": str(exc),
                             "exit": EXIT_USAGE if getattr(exc, "kind", "run") == "run" else EXIT_CRASH})
            _err(str(exc))
            continue
        for pack, config in zip(packs, configs):
            runs.append(run_pack(pack, capture, user_config=config))
    report = gate_report(runs, len(stacks) - len(failures), time.monotonic() - started)
    report["failedStacks"] = failures
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_gate(report, runs, verbose=args.verbose)
    if failures:
        return max(f["exit"] for f in failures)
    return EXIT_VIOLATIONS if report["mandatory"] else EXIT_OK


def gate_report(runs: list[Any], n_stacks: int, seconds: float) -> dict[str, Any]:
    packs: dict[str, dict[str, Any]] = {}
    for run in runs:
        p = packs.setdefault(run.pack, {"name": run.pack, "version": run.version, "stacks": [], "resources": 0,
                                        "mandatory": 0, "advisory": 0, "violations": []})
        p["stacks"].append(run.stack)
        p["resources"] += run.resources
        for v in run.violations:
            level = "mandatory" if v.level in ("mandatory", "remediate") else "advisory"
            p[level] += 1
            p["violations"].append(v.to_json())
    return {"packs": list(packs.values()), "stacks": n_stacks,
            "mandatory": sum(p["mandatory"] for p in packs.values()),
            "advisory": sum(p["advisory"] for p in packs.values()), "seconds": round(seconds, 3)}


def _print_gate(report: dict[str, Any], runs: list[Any], *, verbose: bool) -> None:
    for pack in report["packs"]:
        grouped: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
        for v in pack["violations"]:
            grouped[(v["policy"], v["enforcementLevel"])].append(v)
        for (policy, level), items in sorted(grouped.items(), key=lambda kv: (kv[0][1] != "mandatory", kv[0][0])):
            print(f"[{level}] {pack['name']}/{policy}: {items[0]['description']}")
            for v in items:
                where = f"{v['stack']}: {v['urn']}"
                msg = v["message"].replace("\n", " ")
                print(f"    {where}" + (f"\n        {msg}" if msg else ""))
        stacks = len(pack["stacks"])
        print(f"{pack['name']}: {pack['mandatory']} mandatory, {pack['advisory']} advisory violations "
              f"in {pack['resources']} resources ({stacks} stack{'s' if stacks != 1 else ''})")
    if verbose:
        for run in runs:
            for line in run.logs:
                print(f"[{run.pack} {run.stack} log] {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
