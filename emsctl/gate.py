"""Offline policy gate: run CrossGuard policy packs against captured stacks, as the Pulumi CLI does.

For each (pack, stack) the pack is started the way the CLI starts a Python pack — the
``pulumi-analyzer-policy-python`` plugin is ``python -u -m pulumi.policy <engineAddress> .`` run in
the pack directory with the pack's virtualenv (``PulumiPolicy.yaml`` ``runtime.options.virtualenv``,
else emsctl's own interpreter) and ``PULUMI_CONFIG``, ``PULUMI_PROJECT``, ``PULUMI_STACK``,
``PULUMI_DRY_RUN``, ``PULUMI_ORGANIZATION``, ``PULUMI_RUNTIME_VIRTUALENV`` in its environment. The
port it prints on stdout is dialled and the Analyzer protocol followed: ``Handshake`` (if
implemented), ``GetAnalyzerInfo``, ``ConfigureStack`` (if implemented), ``Configure`` (effective
enforcement levels; config = schema defaults ← pack initial config ← ``--pack-config`` file),
``Analyze`` for every resource (checked inputs as a ``Struct``: camelCase, numbers as floats,
secrets in the engine's encoding; options; provider), ``AnalyzeStack`` with every resource and its
parent, dependencies and property dependencies, then ``Cancel`` and termination.

A small Engine gRPC service answers the pack's ``Log`` calls (its log lines are kept as
diagnostics), as the CLI's engine does. Default providers are synthesised as the engine does
(``pulumi:providers:<pkg>::default_<version>``, inputs = the stack's ``<pkg>:*`` config).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import grpc
import yaml
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc, engine_pb2_grpc

from .capture import Capture, CapturedResource
from .errors import ConfigError, PolicyPackError
from .providers import check_inputs

_LEVELS = {analyzer_pb2.ADVISORY: "advisory", analyzer_pb2.MANDATORY: "mandatory",
           analyzer_pb2.DISABLED: "disabled", analyzer_pb2.REMEDIATE: "remediate"}
_LEVEL_VALUES = {v: k for k, v in _LEVELS.items()}
_MAX_MESSAGE = 400 * 1024 * 1024
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]


@dataclass(frozen=True)
class Violation:
    """One policy violation reported by a pack."""

    pack: str
    policy: str
    level: str            # "mandatory" | "advisory" | "remediate" (reported as mandatory by the SDK)
    stack: str
    urn: str
    description: str
    message: str          # the pack's own text, without the repeated description

    def to_json(self) -> dict[str, str]:
        return {"pack": self.pack, "policy": self.policy, "enforcementLevel": self.level, "stack": self.stack,
                "urn": self.urn, "description": self.description, "message": self.message}


@dataclass
class PackRun:
    """What one pack said about one stack."""

    pack: str
    version: str
    stack: str
    resources: int
    violations: list[Violation]
    not_applicable: int = 0
    logs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    analyze_seconds: float = 0.0
    analyze_stack_seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# the wire form of resources
def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def _stack_resource(capture: Capture) -> CapturedResource:
    return CapturedResource(urn=capture.stack_urn, type="pulumi:pulumi:Stack", name=f"{capture.project}-{capture.stack}",
                            custom=False, inputs={}, parent=None, provider=None, dependencies=(), property_dependencies={})


def _default_provider(capture: Capture, package: str, version: str) -> CapturedResource:
    name = "default" + (f"_{version.replace('.', '_').replace('-', '_')}" if version else "")
    urn = f"urn:pulumi:{capture.stack}::{capture.project}::pulumi:providers:{package}::{name}"
    inputs: dict[str, Any] = {k.split(":", 1)[1]: v for k, v in capture.config.values.items() if k.startswith(f"{package}:")}
    if version:
        inputs["version"] = version
    return CapturedResource(urn=urn, type=f"pulumi:providers:{package}", name=name, custom=True, inputs=inputs,
                            parent=capture.stack_urn, provider=None, dependencies=(), property_dependencies={},
                            id="default", inputs_wire=inputs)


def engine_view(capture: Capture) -> tuple[list[CapturedResource], dict[str, CapturedResource]]:
    """The resources the engine would analyze (stack, default providers, then the program's) and,
    per resource URN, the provider resource it runs on (explicit or default)."""
    resources: list[CapturedResource] = [_stack_resource(capture)]
    defaults: dict[str, CapturedResource] = {}
    by_urn = {r.urn: r for r in capture.resources}
    provider_of: dict[str, CapturedResource] = {}
    for r in capture.resources:
        if not r.custom or r.type.startswith("pulumi:providers:") or r.package == "pulumi":
            continue
        if r.provider and r.provider in by_urn:
            provider_of[r.urn] = by_urn[r.provider]
            continue
        key = f"{r.package}@{r.version}"
        if key not in defaults:
            defaults[key] = _default_provider(capture, r.package, r.version)
            resources.append(defaults[key])
        provider_of[r.urn] = defaults[key]
    resources.extend(capture.resources)
    return resources, provider_of


def _properties(r: CapturedResource) -> dict[str, Any]:
    return check_inputs(r.type, r.name, r.urn, r.inputs_wire) if r.custom else dict(r.inputs_wire)


def _options(r: CapturedResource) -> analyzer_pb2.AnalyzerResourceOptions:
    o = r.options or {}
    opts = analyzer_pb2.AnalyzerResourceOptions(
        protect=bool(o.get("protect")), ignoreChanges=o.get("ignoreChanges") or [],
        deleteBeforeReplace=bool(o.get("deleteBeforeReplace")),
        deleteBeforeReplaceDefined=bool(o.get("deleteBeforeReplaceDefined")),
        additionalSecretOutputs=o.get("additionalSecretOutputs") or [], aliases=o.get("aliases") or [],
        parent=r.parent or "")
    ct = o.get("customTimeouts")
    if ct:
        opts.customTimeouts.CopyFrom(analyzer_pb2.AnalyzerResourceOptions.CustomTimeouts(
            create=_seconds(ct.get("create")), update=_seconds(ct.get("update")), delete=_seconds(ct.get("delete"))))
    return opts


def _seconds(duration: str | None) -> float:
    if not duration:
        return 0.0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    total, number = 0.0, ""
    for ch in str(duration):
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total, number = total + float(number) * units[ch], ""
    return total


def _provider_msg(p: CapturedResource | None) -> analyzer_pb2.AnalyzerProviderResource | None:
    if p is None:
        return None
    return analyzer_pb2.AnalyzerProviderResource(type=p.type, urn=p.urn, name=p.name, properties=_struct(dict(p.inputs_wire)))


def analyze_requests(resources: list[CapturedResource], provider_of: dict[str, CapturedResource]) -> list[analyzer_pb2.AnalyzeRequest]:
    """One ``AnalyzeRequest`` per registered resource (stack, providers, components, custom
    resources — not reads), as the engine builds them."""
    requests = []
    for r in resources:
        if r.read:  # reads (.get, StackReference) are not analyzed one by one; they do appear in AnalyzeStack
            continue
        req = analyzer_pb2.AnalyzeRequest(type=r.type, urn=r.urn, name=r.name, properties=_struct(_properties(r)),
                                          options=_options(r))
        prov = _provider_msg(provider_of.get(r.urn))
        if prov is not None:
            req.provider.CopyFrom(prov)
        requests.append(req)
    return requests


def analyze_stack_request(resources: list[CapturedResource], provider_of: dict[str, CapturedResource]) -> analyzer_pb2.AnalyzeStackRequest:
    """The ``AnalyzeStackRequest`` with every resource, its parent, dependencies and property dependencies."""
    items = []
    for r in resources:
        item = analyzer_pb2.AnalyzerResource(
            type=r.type, urn=r.urn, name=r.name, properties=_struct(_properties(r)), options=_options(r),
            parent=r.parent or "", dependencies=list(r.dependencies),
            propertyDependencies={k: analyzer_pb2.AnalyzerPropertyDependencies(urns=list(v))
                                  for k, v in r.property_dependencies.items()})
        prov = _provider_msg(provider_of.get(r.urn))
        if prov is not None:
            item.provider.CopyFrom(prov)
        items.append(item)
    return analyzer_pb2.AnalyzeStackRequest(resources=items)


# ---------------------------------------------------------------------------------------------
# the pack process
class _Engine(engine_pb2_grpc.EngineServicer):
    """The engine endpoint a pack may log to (the CLI passes its address as the first argument)."""

    def __init__(self) -> None:
        self.logs: list[str] = []
        self.root = ""

    def Log(self, request, context):  # noqa: N802
        self.logs.append(request.message)
        return empty_pb2.Empty()

    def GetRootResource(self, request, context):  # noqa: N802
        from pulumi.runtime.proto import engine_pb2
        return engine_pb2.GetRootResourceResponse(urn=self.root)

    def SetRootResource(self, request, context):  # noqa: N802
        from pulumi.runtime.proto import engine_pb2
        self.root = request.urn
        return engine_pb2.SetRootResourceResponse()


def pack_metadata(pack_dir: Path) -> dict[str, Any]:
    """``PulumiPolicy.yaml`` of a pack (ConfigError if missing or not YAML)."""
    meta = pack_dir / "PulumiPolicy.yaml"
    if not meta.is_file():
        raise ConfigError("--pack", str(pack_dir), "is not a policy pack (no PulumiPolicy.yaml)")
    try:
        doc = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(meta), None, f"is not valid YAML ({exc})") from exc
    return doc if isinstance(doc, dict) else {}


def pack_python(pack_dir: Path) -> tuple[str, str | None]:
    """(interpreter, virtualenv) for a pack: ``PulumiPolicy.yaml`` runtime.options.virtualenv, else ours."""
    meta = pack_dir / "PulumiPolicy.yaml"
    doc = pack_metadata(pack_dir)
    runtime = doc.get("runtime")
    name = runtime.get("name") if isinstance(runtime, dict) else runtime
    if name != "python":
        raise ConfigError(f"{meta}: runtime", name, "is not supported offline (only python packs)")
    venv = ((runtime.get("options") or {}) if isinstance(runtime, dict) else {}).get("virtualenv")
    if isinstance(venv, str):
        venv_dir = (pack_dir / venv).absolute()
        if (venv_dir / "bin" / "python").exists():
            return str(venv_dir / "bin" / "python"), str(venv_dir)
    return sys.executable, None


class PackProcess:
    """A running policy pack (context manager): the subprocess, its Analyzer stub and our engine."""

    def __init__(self, pack_dir: str | os.PathLike[str], capture: Capture, *, dry_run: bool = True,
                 start_timeout_s: float = 60.0, call_timeout_s: float = 300.0) -> None:
        self.pack_dir = Path(pack_dir).resolve()
        self.capture = capture
        self.dry_run = dry_run
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self.python, self.virtualenv = pack_python(self.pack_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.engine = _Engine()
        self._engine_server: grpc.Server | None = None
        self.channel: grpc.Channel | None = None
        self.stub: analyzer_pb2_grpc.AnalyzerStub | None = None
        self.port = 0
        self.engine_address = ""

    @property
    def label(self) -> str:
        return self.pack_dir.name

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("PULUMI_CONFIG"):
                del env[key]
        env.update({
            "PULUMI_CONFIG": json.dumps(self.capture.config.values),
            "PULUMI_PROJECT": self.capture.project, "PULUMI_STACK": self.capture.stack,
            "PULUMI_DRY_RUN": "true" if self.dry_run else "false", "PULUMI_ORGANIZATION": "organization",
        })
        if self.virtualenv:
            env["PULUMI_RUNTIME_VIRTUALENV"] = self.virtualenv
        return env

    def __enter__(self) -> "PackProcess":
        self._engine_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=_CHANNEL_OPTIONS)
        engine_pb2_grpc.add_EngineServicer_to_server(self.engine, self._engine_server)
        engine_port = self._engine_server.add_insecure_port("127.0.0.1:0")
        self._engine_server.start()
        self.engine_address = f"127.0.0.1:{engine_port}"
        cmd = [self.python, "-u", "-m", "pulumi.policy", self.engine_address, "."]
        try:
            self.proc = subprocess.Popen(cmd, cwd=self.pack_dir, env=self.environment(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            self.close()
            raise PolicyPackError(self.label, f"cannot start {cmd[0]}: {exc.strerror}") from exc
        try:
            self.port = self._read_port()
        except BaseException:
            self.close()
            raise
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=_CHANNEL_OPTIONS)
        self.stub = analyzer_pb2_grpc.AnalyzerStub(self.channel)
        return self

    def _read_port(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.start_timeout_s
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PolicyPackError(self.label, f"did not print its port within {self.start_timeout_s:.0f}s")
            if not sel.select(timeout=min(remaining, 0.5)):
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
        sel.close()
        line = buf.split(b"\n", 1)[0].strip()
        if not line.isdigit():
            self.proc.wait(timeout=10) if self.proc.poll() is None else None
            err = self._stderr_tail()
            raise PolicyPackError(self.label, f"exited before printing its port (code {self.proc.returncode}): {err}"
                                  if self.proc.poll() is not None else f"printed {line!r} instead of a port")
        return int(line)

    def _stderr_tail(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        try:
            data = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
        except (OSError, ValueError):
            data = ""
        lines = [l for l in data.strip().splitlines() if l.strip()]
        return lines[-1] if lines else "no output"

    def call(self, method: str, request: Any, *, optional: bool = False) -> Any:
        assert self.stub is not None
        try:
            return getattr(self.stub, method)(request, timeout=self.call_timeout_s)
        except grpc.RpcError as exc:
            if optional and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise PolicyPackError(self.label, f"{method} failed: {exc.code().name}: {exc.details()}") from exc

    def close(self) -> None:
        if self.stub is not None:
            try:
                self.stub.Cancel(empty_pb2.Empty(), timeout=5)
            except grpc.RpcError:
                pass  # Cancel is optional; the Python SDK's servicer does not implement it
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr) if self.proc is not None else ():
            if stream is not None:
                stream.close()
        if self._engine_server is not None:
            self._engine_server.stop(0)

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# configuration as the CLI computes it
def effective_config(info: analyzer_pb2.AnalyzerInfo, user: dict[str, Any] | None, pack: str) -> dict[str, analyzer_pb2.PolicyConfig]:
    """Per policy: enforcement level and properties = schema defaults ← initial config ← user config.

    ``user`` is the CLI's ``--policy-pack-config`` JSON: ``{"all": level, "<policy>": level | {"enforcementLevel": ..., prop: ...}}``.
    """
    user = user or {}
    all_level = user.get("all")
    names = {p.name for p in info.policies}
    for key in user:
        if key != "all" and key not in names:
            raise ConfigError(f"policy config of {pack}: {key}", None, f"is not a policy of this pack ({', '.join(sorted(names))})")
    result = {}
    for policy in info.policies:
        level = policy.enforcementLevel
        props: dict[str, Any] = {}
        schema = json_format.MessageToDict(policy.configSchema.properties) if policy.HasField("configSchema") else {}
        for prop, spec in schema.items():
            if isinstance(spec, dict) and "default" in spec:
                props[prop] = spec["default"]
        if policy.name in info.initialConfig:
            initial = info.initialConfig[policy.name]
            props.update(json_format.MessageToDict(initial.properties))
            if initial.enforcementLevel != analyzer_pb2.ADVISORY or not initial.properties:
                level = initial.enforcementLevel
        if isinstance(all_level, str):
            level = _parse_level(all_level, pack, "all")
        override = user.get(policy.name)
        if isinstance(override, str):
            level = _parse_level(override, pack, policy.name)
        elif isinstance(override, dict):
            for k, v in override.items():
                if k == "enforcementLevel":
                    level = _parse_level(v, pack, policy.name)
                else:
                    props[k] = v
        required = list(policy.configSchema.required) if policy.HasField("configSchema") else []
        missing = [r for r in required if r not in props]
        if missing:
            raise ConfigError(f"policy config of {pack}: {policy.name}", None, f"requires {', '.join(missing)}")
        cfg = analyzer_pb2.PolicyConfig(enforcementLevel=level)
        if props:
            cfg.properties.update(props)
        result[policy.name] = cfg
    return result


def _parse_level(value: Any, pack: str, where: str) -> int:
    if value not in _LEVEL_VALUES:
        raise ConfigError(f"policy config of {pack}: {where}", value, f"must be one of {', '.join(_LEVEL_VALUES)}")
    return _LEVEL_VALUES[value]


# ---------------------------------------------------------------------------------------------
def _violations(resp: analyzer_pb2.AnalyzeResponse, stack: str, default_urn: str) -> Iterable[Violation]:
    for d in resp.diagnostics:
        message = d.message
        if d.description and message.startswith(d.description):
            message = message[len(d.description):].lstrip("\n")
        yield Violation(pack=d.policyPackName, policy=d.policyName, level=_LEVELS.get(d.enforcementLevel, "advisory"),
                        stack=stack, urn=d.urn or default_urn, description=d.description, message=message)


def run_pack(pack_dir: str | os.PathLike[str], capture: Capture, *, user_config: dict[str, Any] | None = None,
             dry_run: bool = True) -> PackRun:
    """Start the pack, analyze every resource of ``capture`` and the whole stack; return the violations."""
    started = time.monotonic()
    resources, provider_of = engine_view(capture)
    with PackProcess(pack_dir, capture, dry_run=dry_run) as pack:
        pack.call("Handshake", analyzer_pb2.AnalyzerHandshakeRequest(
            engine_address=pack.engine_address, root_directory=str(pack.pack_dir), program_directory=str(pack.pack_dir)),
            optional=True)
        info = pack.call("GetAnalyzerInfo", empty_pb2.Empty())
        pack.call("ConfigureStack", analyzer_pb2.AnalyzerStackConfigureRequest(
            stack=capture.stack, project=capture.project, organization="organization", dry_run=dry_run,
            config=capture.config.values, config_secret_keys=list(capture.config.secret_keys)), optional=True)
        if info.supportsConfig:
            pack.call("Configure", analyzer_pb2.ConfigureAnalyzerRequest(
                policyConfig=effective_config(info, user_config, info.name or pack.label)))
        violations: list[Violation] = []
        not_applicable = 0
        t0 = time.monotonic()
        for req in analyze_requests(resources, provider_of):
            resp = pack.call("Analyze", req)
            violations.extend(_violations(resp, capture.stack, req.urn))
            not_applicable += len(resp.not_applicable)
        t1 = time.monotonic()
        resp = pack.call("AnalyzeStack", analyze_stack_request(resources, provider_of))
        violations.extend(_violations(resp, capture.stack, capture.stack_urn))
        t2 = time.monotonic()
        logs = list(pack.engine.logs)
    # As the CLI does, the version in PulumiPolicy.yaml wins over the SDK's placeholder "0.0.1".
    version = str(pack_metadata(Path(pack_dir).resolve()).get("version") or info.version)
    return PackRun(pack=info.name or pack.label, version=version, stack=capture.stack, resources=len(resources),
                   violations=violations, not_applicable=not_applicable, logs=logs, seconds=time.monotonic() - started,
                   analyze_seconds=t1 - t0, analyze_stack_seconds=t2 - t1)
