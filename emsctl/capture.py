"""Evaluate a Python Pulumi project's stack offline and capture every resource it declares.

No Pulumi CLI, no plugins, no credentials: the program runs under :mod:`pulumi.runtime.mocks`
in a subprocess of its own (so stacks and projects never share modules or runtime state), with
the stack's config set as the CLI would set it, and every ``RegisterResource`` the SDK sends is
recorded: URN, type token, name, custom or component, inputs, parent, provider, dependencies,
property dependencies, plus the stack outputs.

Usage::

    from emsctl.capture import ProgramError, evaluate_stack
    from emsctl.values import plain

    cap = evaluate_stack(".", "local")              # project dir (has Pulumi.yaml), stack name
    for svc in cap.by_type("kubernetes:core/v1:Service"):
        print(svc.urn, plain(svc.inputs)["spec"]["ports"], svc.parent, svc.provider)
    print(cap.outputs)                              # stack outputs, secrets as values.Secret
    try:
        evaluate_stack(".", "broken")
    except ProgramError as exc:                     # exc.message: the one line the CLI would print
        print(exc.message)

What is emulated, and how (see ``docs/offline-preview-and-policy-gate.md``):

* config — ``Pulumi.yaml`` ``config:`` defaults, then ``<stackConfigDir>/Pulumi.<stack>.yaml``;
  keys without a namespace belong to the project; every value reaches the program as the string
  the CLI passes (``PULUMI_CONFIG``: numbers and booleans as text, objects and lists as JSON);
  ``secure:`` values cannot be decrypted offline and become the secret placeholder
  :data:`SECURE_PLACEHOLDER` (listed in :attr:`Capture.secure_keys`);
* the engine — ``pulumi:disable-default-providers`` (a resource or function call of a disabled
  package without an explicit provider fails, as ``pulumi up`` would), duplicate URNs, and
  ``pulumi:pulumi:StackReference`` (the referenced stack of the same project is evaluated in the
  same run and its outputs returned);
* the providers — :mod:`emsctl.providers` (deterministic Kubernetes auto-names, plausible ids,
  ARNs, endpoints and PEM placeholders). Every output is known (the mock runs as an update),
  unless ``preview=True``: then the program runs as a first ``pulumi preview`` and every
  cloud-computed value, and whatever derives from it, is ``UNKNOWN``.

Inputs are plain Python (:func:`emsctl.values.decode`): secrets wrapped in
:class:`emsctl.values.Secret`, integral numbers as ``int``. Results are memoised per process
(keyed by project, stack and the contents of ``Pulumi.yaml`` and the stack file); treat them as
read-only.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import ConfigError, ProgramError
from .values import decode

__all__ = [
    "Capture", "CapturedResource", "ConfigError", "ProgramError", "Project", "StackConfig", "SECURE_PLACEHOLDER",
    "evaluate_stack", "list_stacks", "load_project", "load_stack_config",
]

SECURE_PLACEHOLDER = "emsctl-offline-secret-placeholder"
"""The value a ``secure:`` config entry gets offline (the ciphertext cannot be decrypted without the stack's key)."""

_SCHEMA_KEYS = {"type", "description", "default", "secret", "items"}
_YAML_TYPES = {"string": (str,), "integer": (int,), "boolean": (bool,), "array": (list,), "object": (dict,)}


# ---------------------------------------------------------------------------------------------
# project and stack files
@dataclass(frozen=True)
class Project:
    """What ``Pulumi.yaml`` says about a project."""

    dir: Path
    name: str
    stack_config_dir: Path
    program_dir: Path
    main: Path
    defaults: dict[str, Any]
    types: dict[str, str]
    python: str


@dataclass(frozen=True)
class StackConfig:
    """A stack's effective config, as the CLI passes it to the program."""

    stack: str
    path: Path
    values: dict[str, str]
    secret_keys: tuple[str, ...]
    secure_keys: tuple[str, ...]
    disabled_default_providers: tuple[str, ...]
    region: str | None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(where, None, f"is not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc


def _full_key(key: str, project: str) -> str:
    return key if ":" in key else f"{project}:{key}"


def load_project(project_dir: str | os.PathLike[str]) -> Project:
    """Read ``Pulumi.yaml`` of ``project_dir``; raise :class:`ConfigError` if it is missing or unusable."""
    root = Path(project_dir).resolve()
    path = root / "Pulumi.yaml"
    if not path.is_file():
        alt = root / "Pulumi.yml"
        if not alt.is_file():
            raise ConfigError(str(root), None, "is not a Pulumi project (no Pulumi.yaml)")
        path = alt
    doc = _read_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise ConfigError(f"{path}: name", doc.get("name") if isinstance(doc, dict) else doc, "must be a non-empty string")
    runtime = doc.get("runtime")
    runtime_name = runtime.get("name") if isinstance(runtime, dict) else runtime
    if runtime_name != "python":
        raise ConfigError(f"{path}: runtime", runtime_name, "is not supported offline (only python programs)")
    options = (runtime.get("options") or {}) if isinstance(runtime, dict) else {}
    python = sys.executable
    venv = options.get("virtualenv")
    if isinstance(venv, str):
        candidate = (root / venv / "bin" / "python").absolute()
        if candidate.exists() and _same_python(candidate):
            python = str(candidate)
    main = root / str(doc.get("main") or ".")
    if not main.exists():
        raise ConfigError(f"{path}: main", doc.get("main"), "does not exist")
    program_dir = main if main.is_dir() else main.parent
    if main.is_dir() and not (main / "__main__.py").is_file():
        raise ConfigError(f"{path}: main", str(main), "has no __main__.py")
    defaults: dict[str, Any] = {}
    types: dict[str, str] = {}
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: config", config, "must be a mapping")
    for key, value in config.items():
        full = _full_key(str(key), doc["name"])
        if isinstance(value, dict) and value and set(value) <= _SCHEMA_KEYS and ("type" in value or "default" in value):
            if "type" in value:
                types[full] = str(value["type"])
            if "default" in value:
                defaults[full] = value["default"]
        elif isinstance(value, dict) and "value" in value:
            defaults[full] = value["value"]
        else:
            defaults[full] = value
    stack_dir = root / str(doc.get("stackConfigDir") or ".")
    return Project(dir=root, name=doc["name"], stack_config_dir=stack_dir, program_dir=program_dir, main=main,
                   defaults=defaults, types=types, python=python)


def _same_python(candidate: Path) -> bool:
    # The worker imports emsctl; only an interpreter that is ours (same venv) can. Others fall back to ours.
    try:
        return candidate.resolve() == Path(sys.executable).resolve() or Path(sys.prefix).resolve() == candidate.parent.parent.resolve()
    except OSError:
        return False


def list_stacks(project_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the stacks that have a ``Pulumi.<stack>.yaml`` in the project's stack config dir."""
    project = load_project(project_dir)
    if not project.stack_config_dir.is_dir():
        return []
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in project.stack_config_dir.glob("Pulumi.*.yaml"))


def _replace_secure(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return SECURE_PLACEHOLDER, True
        out, found = {}, False
        for k, v in value.items():
            out[k], f = _replace_secure(v)
            found = found or f
        return out, found
    if isinstance(value, list):
        items = [_replace_secure(v) for v in value]
        return [i[0] for i in items], any(i[1] for i in items)
    return value, False


def _as_cli_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if value is None:
        return ""
    return json.dumps(value)


def load_stack_config(project: Project, stack: str) -> StackConfig:
    """The effective config of ``stack``: project defaults overlaid with the stack file."""
    path = project.stack_config_dir / f"Pulumi.{stack}.yaml"
    if not stack or "/" in stack or not path.is_file():
        known = ", ".join(list_stacks(project.dir)) or "none"
        raise ConfigError("--stack", stack, f"has no stack file {path} (stacks of {project.name}: {known})")
    doc = _read_yaml(path) or {}
    if not isinstance(doc, dict):
        raise ConfigError(str(path), None, "must be a mapping with a 'config:' section")
    raw = doc.get("config") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config", raw, "must be a mapping of key: value")
    merged: dict[str, Any] = dict(project.defaults)
    for key, value in raw.items():
        merged[_full_key(str(key), project.name)] = value
    values: dict[str, str] = {}
    secret, secure = [], []
    for key, value in merged.items():
        declared = project.types.get(key)
        if declared in _YAML_TYPES and not (isinstance(value, dict) and set(value) == {"secure"}):
            ok = isinstance(value, _YAML_TYPES[declared]) and not (declared == "integer" and isinstance(value, bool))
            if not ok:
                raise ConfigError(f"{path.name}: {key}", value, f"must be of type {declared} (declared in Pulumi.yaml)")
        value, is_secure = _replace_secure(value)
        if is_secure:
            secret.append(key)
            secure.append(key)
        values[key] = _as_cli_string(value)
    disabled_raw = merged.get("pulumi:disable-default-providers", [])
    if isinstance(disabled_raw, str):
        try:
            disabled_raw = json.loads(disabled_raw)
        except ValueError:
            disabled_raw = [disabled_raw]
    if not isinstance(disabled_raw, list) or not all(isinstance(p, str) for p in disabled_raw):
        raise ConfigError(f"{path.name}: pulumi:disable-default-providers", disabled_raw,
                          "must be a list of package names (or [\"*\"])")
    region = merged.get("aws:region")
    return StackConfig(stack=stack, path=path, values=values, secret_keys=tuple(secret), secure_keys=tuple(secure),
                       disabled_default_providers=tuple(disabled_raw),
                       region=region if isinstance(region, str) else None)


# ---------------------------------------------------------------------------------------------
# the capture
@dataclass(frozen=True)
class CapturedResource:
    """One registered resource, as the engine saw its ``RegisterResource`` (or ``ReadResource``).

    ``inputs`` are decoded (:class:`emsctl.values.Secret` for secrets, integral numbers as int);
    ``provider`` is the URN of the explicit provider (None: the package's default provider);
    ``parent`` is the parent's URN (the stack's URN for top-level resources).
    """

    urn: str
    type: str
    name: str
    custom: bool
    inputs: dict[str, Any]
    parent: str | None
    provider: str | None
    dependencies: tuple[str, ...]
    property_dependencies: dict[str, tuple[str, ...]]
    id: str = ""
    version: str = ""
    provider_ref: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    read: bool = False
    inputs_wire: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def package(self) -> str:
        return self.type.split(":")[0]


@dataclass
class Capture:
    """Everything one stack's program declared."""

    project: str
    stack: str
    project_dir: Path
    stack_urn: str
    resources: list[CapturedResource]
    outputs: dict[str, Any]
    outputs_wire: dict[str, Any]
    config: StackConfig
    diagnostics: list[dict[str, str]]
    unemulated_calls: list[str]
    seconds: float
    program_seconds: float = 0.0
    """Time the program itself took in its evaluation process (0.0 when served from the cache)."""
    max_rss_kb: int = 0
    """Peak resident memory of the evaluation process, in KiB."""
    program_output: str = ""
    """What the program printed (stdout, then stderr) during its evaluation."""

    @property
    def secure_keys(self) -> tuple[str, ...]:
        """Config keys whose ``secure:`` values were replaced by :data:`SECURE_PLACEHOLDER`."""
        return self.config.secure_keys

    def by_type(self, token: str) -> list[CapturedResource]:
        """Resources whose type token is ``token`` (in registration order)."""
        return [r for r in self.resources if r.type == token]

    def by_urn(self, urn: str) -> CapturedResource:
        """The resource with this URN (KeyError if none)."""
        for r in self.resources:
            if r.urn == urn:
                return r
        raise KeyError(urn)

    def children(self, urn: str) -> list[CapturedResource]:
        """Direct children of ``urn``."""
        return [r for r in self.resources if r.parent == urn]

    def descendants(self, urn: str) -> Iterator[CapturedResource]:
        """Every resource below ``urn`` in the parent tree."""
        for child in self.children(urn):
            yield child
            yield from self.descendants(child.urn)


_memo: dict[tuple[str, str, str], Capture] = {}
_memo_lock = threading.Lock()
_cache_root: str | None = None


def _shared_cache_dir() -> str:
    global _cache_root
    if _cache_root is None:
        _cache_root = tempfile.mkdtemp(prefix="emsctl-capture-")
        atexit.register(shutil.rmtree, _cache_root, True)
    return _cache_root


def _fingerprint(project: Project, stack_cfg: StackConfig) -> str:
    h = hashlib.sha256()
    for path in (project.dir / "Pulumi.yaml", stack_cfg.path):
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:20]


def evaluate_stack(project_dir: str | os.PathLike[str], stack: str, *, preview: bool = False, use_cache: bool = True,
                   timeout_s: float = 900.0, _chain: list[str] | None = None,
                   _cache_dir: str | None = None) -> Capture:
    """Run ``stack`` of the project in ``project_dir`` under mocks and return what it declared.

    By default every output is known (mock values, as after an update). ``preview=True`` runs the
    program as a first ``pulumi preview`` does (``is_dry_run()`` true; a created resource returns
    only its checked inputs, so every cloud-computed output and whatever is derived from it is
    :data:`emsctl.values.UNKNOWN`).

    Raises :class:`ConfigError` for bad project/stack files and :class:`ProgramError` when the
    program fails (``exc.message`` is the one line the Pulumi CLI would print).
    """
    project = load_project(project_dir)
    stack_cfg = load_stack_config(project, stack)
    key = (str(project.dir), stack, _fingerprint(project, stack_cfg) + ("-preview" if preview else ""))
    if use_cache:
        with _memo_lock:
            if key in _memo:
                return _memo[key]
    cache_dir = _cache_dir or _shared_cache_dir()
    cache_file = Path(cache_dir) / (hashlib.sha256("\0".join(key).encode()).hexdigest()[:32] + ".json")
    result: dict[str, Any] | None = None
    started = time.monotonic()
    if use_cache and cache_file.is_file():
        result = json.loads(cache_file.read_text(encoding="utf-8"))
    if result is None:
        result = _run_worker(project, stack_cfg, chain=_chain or [], cache_dir=cache_dir, timeout_s=timeout_s,
                             preview=preview)
        if result.get("ok"):
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(result), encoding="utf-8")
            os.replace(tmp, cache_file)
    if not result.get("ok"):
        raise ProgramError(project.name, stack, result.get("message") or "program failed",
                           kind=result.get("kind", "crash"), traceback=result.get("traceback", ""))
    capture = _to_capture(project, stack_cfg, result, time.monotonic() - started)
    if use_cache:
        with _memo_lock:
            _memo[key] = capture
    return capture


def _run_worker(project: Project, stack_cfg: StackConfig, *, chain: list[str], cache_dir: str,
                timeout_s: float, preview: bool) -> dict[str, Any]:
    request = {
        "project_dir": str(project.dir), "program_dir": str(project.program_dir), "main": str(project.main),
        "project": project.name, "stack": stack_cfg.stack, "organization": "organization",
        "config": stack_cfg.values, "secret_keys": list(stack_cfg.secret_keys),
        "disabled_default_providers": list(stack_cfg.disabled_default_providers), "region": stack_cfg.region,
        "chain": chain, "cache_dir": cache_dir, "dry_run": preview,
    }
    # The stack's config only: stray PULUMI_CONFIG_<KEY> variables of the caller's shell would
    # otherwise answer for keys the stack file does not set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_CONFIG")}
    env.update({
        "PULUMI_CONFIG": json.dumps(stack_cfg.values), "PULUMI_CONFIG_SECRET_KEYS": json.dumps(list(stack_cfg.secret_keys)),
        "PULUMI_PROJECT": project.name, "PULUMI_STACK": stack_cfg.stack,
        "PULUMI_DRY_RUN": "true" if preview else "false",
        "PULUMI_ORGANIZATION": "organization", "PYTHONUNBUFFERED": "1",
    })
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with tempfile.TemporaryDirectory(prefix="emsctl-eval-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            proc = subprocess.run([project.python, "-m", "emsctl._worker", str(out)], input=json.dumps(request),
                                  capture_output=True, text=True, env=env, cwd=str(project.program_dir),
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ProgramError(project.name, stack_cfg.stack, f"evaluation did not finish within {timeout_s:.0f}s",
                               kind="crash") from exc
        if not out.is_file():
            tail = (proc.stderr or "").strip().splitlines()
            raise ProgramError(project.name, stack_cfg.stack,
                               f"evaluation process exited with code {proc.returncode}: {tail[-1] if tail else 'no output'}",
                               kind="crash", traceback=proc.stderr)
        result = json.loads(out.read_text(encoding="utf-8"))
    result["program_stdout"] = proc.stdout
    result["program_stderr"] = proc.stderr
    return result


def _to_capture(project: Project, stack_cfg: StackConfig, result: dict[str, Any], seconds: float) -> Capture:
    resources = [
        CapturedResource(
            urn=r["urn"], type=r["type"], name=r["name"], custom=r["custom"], inputs=decode(r["inputs"]),
            parent=r["parent"], provider=r["provider"], dependencies=tuple(r["dependencies"]),
            property_dependencies={k: tuple(v) for k, v in r["property_dependencies"].items()},
            id=r["id"], version=r["version"], provider_ref=r["provider_ref"], options=r["options"], read=r["read"],
            inputs_wire=r["inputs"],
        )
        for r in result["resources"]
    ]
    return Capture(project=project.name, stack=stack_cfg.stack, project_dir=project.dir, stack_urn=result["stack_urn"],
                   resources=resources, outputs=decode(result["outputs"]), outputs_wire=result["outputs"],
                   config=stack_cfg, diagnostics=result.get("diagnostics", []),
                   unemulated_calls=result.get("unemulated_calls", []), seconds=seconds,
                   program_seconds=result.get("stats", {}).get("seconds", 0.0),
                   max_rss_kb=result.get("stats", {}).get("max_rss_kb", 0),
                   program_output=(result.get("program_stdout") or "") + (result.get("program_stderr") or ""))

