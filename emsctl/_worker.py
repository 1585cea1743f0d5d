"""Run one Pulumi program under the mock runtime and write what it registered as JSON.

Started by :mod:`emsctl.capture` as ``python -m emsctl._worker RESULT_PATH`` with a JSON request on
stdin; one process per evaluation, so no module, config or runtime state leaks between stacks or
projects. The program runs the way ``pulumi-language-python-exec`` runs it: ``runpy.run_path``
inside :func:`pulumi.runtime.run_in_stack`, with the project directory as the working directory and
first on ``sys.path``, config from the stack file set before the program starts.

The resource monitor is :class:`pulumi.runtime.mocks.MockMonitor` with ``RegisterResource``,
``ReadResource``, ``Invoke`` and ``RegisterResourceOutputs`` taken over so that every request's
parent, provider, dependencies and property dependencies are recorded, the engine's
``pulumi:disable-default-providers`` rule is enforced, and ``pulumi:pulumi:StackReference`` is
satisfied by evaluating the referenced stack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import runpy
import sys
import threading
import time
import traceback
from typing import Any

from google.protobuf import json_format, struct_pb2

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import run_in_stack

from . import providers
from .values import SECRET_SIG, SIG_KEY

STACK_TYPE = "pulumi:pulumi:Stack"
STACK_REFERENCE_TYPE = "pulumi:pulumi:StackReference"


class EngineError(Exception):
    """A rule the Pulumi engine enforces was broken; reported as one line, like a RunError."""


def _wire(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


class _NullMocks(pulumi_mocks.Mocks):
    """Unused: :class:`CapturingMonitor` answers every call itself."""

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        raise AssertionError("not used")

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list | None]:
        raise AssertionError("not used")


class CapturingMonitor(pulumi_mocks.MockMonitor):
    """A mock resource monitor that records every registration as the engine would see it."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__(_NullMocks())
        self.request = request
        self.disabled = set(request.get("disabled_default_providers") or [])
        self.default_region = request.get("region") or "us-east-1"
        self.dry_run = bool(request.get("dry_run"))
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.seen_urns: set[str] = set()
        self.stack_urn = ""
        self.stack_outputs: dict[str, Any] = {}
        self.provider_regions: dict[str, str] = {}
        self.unemulated_calls: set[str] = set()

    # -- engine rules -------------------------------------------------------------------------
    def _check_default_provider(self, type_token: str, provider_ref: str, what: str) -> None:
        package = type_token.split(":")[0]
        if provider_ref or package == "pulumi":
            return
        if package in self.disabled or "*" in self.disabled:
            raise EngineError(
                f"Default provider for '{package}' disabled. '{type_token}' {what} must use an explicit provider "
                f"(stack config pulumi:disable-default-providers)")

    def _region_for(self, provider_ref: str) -> str:
        return self.provider_regions.get(provider_ref.rsplit("::", 1)[0], self.default_region)

    # -- monitor RPCs ---------------------------------------------------------------------------
    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == STACK_TYPE:
            self.stack_urn = urn
            return resource_pb2.RegisterResourceResponse(urn=urn)
        if request.custom and not request.type.startswith("pulumi:providers:"):
            self._check_default_provider(request.type, request.provider, f"resource '{request.name}'")
        inputs = _wire(request.object)
        if request.type == STACK_REFERENCE_TYPE:
            res_id, state = self._stack_reference(inputs)
        elif self.dry_run:
            # A first `pulumi preview`: a create returns its checked inputs; everything the cloud
            # computes (ids, ARNs, endpoints, PEMs) stays unknown.
            res_id, state = "", providers.check_inputs(request.type, request.name, urn, inputs)
        else:
            res_id, state = providers.mock_outputs(request.type, request.name, urn, inputs,
                                                   self._region_for(request.provider))
        for name in request.additionalSecretOutputs:  # the engine marks these secret in the response
            if name in state and not (isinstance(state[name], dict) and state[name].get(SIG_KEY) == SECRET_SIG):
                state[name] = {SIG_KEY: SECRET_SIG, "value": state[name]}
        if request.type == "pulumi:providers:aws" and isinstance(inputs.get("region"), str):
            self.provider_regions[urn] = inputs["region"]
        if not request.custom:
            res_id = ""
        options = {
            "protect": bool(request.protect),
            "ignoreChanges": list(request.ignoreChanges),
            "deleteBeforeReplace": bool(request.deleteBeforeReplace),
            "deleteBeforeReplaceDefined": bool(request.deleteBeforeReplaceDefined),
            "additionalSecretOutputs": list(request.additionalSecretOutputs),
            "aliases": list(request.aliasURNs),
            "customTimeouts": ({"create": request.customTimeouts.create, "update": request.customTimeouts.update,
                                "delete": request.customTimeouts.delete}
                               if request.HasField("customTimeouts") else None),
        }
        self._record(urn, request.type, request.name, bool(request.custom), inputs, request.parent,
                     request.provider, list(request.dependencies),
                     {k: list(v.urns) for k, v in request.propertyDependencies.items()},
                     request.version, res_id, options, read=False)
        self.resources[urn] = pulumi_mocks.MockMonitor.ResourceRegistration(urn, res_id, state)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=res_id, object=_struct(state))

    def ReadResource(self, request):  # noqa: N802
        urn = self.make_urn(request.parent, request.type, request.name)
        self._check_default_provider(request.type, request.provider, f"read '{request.name}'")
        inputs = _wire(request.properties)
        if request.type == STACK_REFERENCE_TYPE:
            res_id, state = self._stack_reference({"name": request.id, **inputs})
        else:
            res_id, state = providers.mock_outputs(request.type, request.name, urn, inputs,
                                                   self._region_for(request.provider))
            res_id = request.id or res_id
        self._record(urn, request.type, request.name, True, inputs, request.parent, request.provider,
                     list(request.dependencies), {}, request.version, res_id, {}, read=True)
        self.resources[urn] = pulumi_mocks.MockMonitor.ResourceRegistration(urn, res_id, state)
        return resource_pb2.ReadResourceResponse(urn=urn, properties=_struct(state))

    def Invoke(self, request):  # noqa: N802
        if request.tok == "pulumi:pulumi:getResource":
            return super().Invoke(request)
        self._check_default_provider(request.tok, request.provider, "function call")
        args = _wire(request.args)
        result = providers.mock_call(request.tok, args, self._region_for(request.provider))
        if result is None:
            with self.lock:
                self.unemulated_calls.add(request.tok)
            result = {}
        return resource_pb2.ResourceInvokeResponse(**{"return": _struct(result)})

    def RegisterResourceOutputs(self, request):  # noqa: N802
        if request.urn and request.urn == self.stack_urn:
            self.stack_outputs = _wire(request.outputs)
        return super().RegisterResourceOutputs(request)

    # -- helpers --------------------------------------------------------------------------------
    def _record(self, urn, type_, name, custom, inputs, parent, provider_ref, deps, prop_deps, version, res_id,
                options, *, read: bool) -> None:
        with self.lock:
            if urn in self.seen_urns:
                raise EngineError(f"Duplicate resource URN '{urn}'; try giving it a unique name")
            self.seen_urns.add(urn)
            self.records.append({
                "urn": urn, "type": type_, "name": name, "custom": custom, "inputs": inputs,
                "parent": parent or None, "provider": provider_ref.rsplit("::", 1)[0] if provider_ref else None,
                "provider_ref": provider_ref or None, "dependencies": deps, "property_dependencies": prop_deps,
                "version": version or "", "id": res_id, "options": options, "read": read,
            })

    def _stack_reference(self, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from . import capture  # imported lazily: only programs with StackReferences need it

        ref = inputs.get("name")
        if not isinstance(ref, str) or not ref:
            raise EngineError(f"StackReference needs a stack name, got {ref!r}")
        parts = ref.split("/")
        if len(parts) > 3 or (len(parts) == 3 and parts[1] != self.request["project"]):
            raise EngineError(
                f"StackReference '{ref}': offline, only stacks of this project ('{self.request['project']}') "
                f"can be referenced, as 'stack', 'org/stack' or 'org/{self.request['project']}/stack'")
        target = parts[-1]
        chain = list(self.request.get("chain") or []) + [self.request["stack"]]
        if target in chain:
            raise EngineError(f"StackReference cycle: {' -> '.join(chain + [target])}")
        try:
            referenced = capture.evaluate_stack(self.request["project_dir"], target, _chain=chain,
                                                _cache_dir=self.request.get("cache_dir"))
        except Exception as exc:  # noqa: BLE001 reported to the program as the engine would
            raise EngineError(f"StackReference '{ref}': {exc}") from exc
        outputs, secret_names = {}, []
        for key, value in referenced.outputs_wire.items():
            if isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG:
                secret_names.append(key)
                value = value.get("value")
            outputs[key] = value
        return ref, {"name": ref, "outputs": outputs, "secretOutputNames": secret_names}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"level": record.levelname.lower(), "message": record.getMessage()})


def _find(exc: BaseException | None, kind: type) -> BaseException | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


async def _drain_outputs() -> None:
    """Wait for every pending Output task with one ``asyncio.wait`` per round.

    The SDK's ``wait_for_rpcs`` waits on all pending outputs with ``FIRST_COMPLETED`` in a loop,
    which re-registers a callback on every pending task per completion — quadratic in the number
    of resources (36 of 60 seconds for 4,000 resources). Draining them here first, with
    ``ALL_COMPLETED``, is linear and awaits exactly the same tasks; a failed task is handed back to
    the SDK, whose loop then raises it exactly as it would have.
    """
    while True:
        with pulumi_settings.SETTINGS.lock:
            pending = list(pulumi_settings.SETTINGS.outputs)
            pulumi_settings.SETTINGS.outputs.clear()
        if not pending:
            return
        await asyncio.wait(pending)
        failed = [t for t in pending if t.cancelled() or t.exception() is not None]
        if failed:
            with pulumi_settings.SETTINGS.lock:
                pulumi_settings.SETTINGS.outputs.update(failed)
            return


def _program(main_path: str):
    runpy.run_path(main_path, run_name="__main__")
    return _drain_outputs()


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the program described by ``request``; return the JSON-able result."""
    started = time.monotonic()
    monitor = CapturingMonitor(request)
    engine_log = logging.getLogger("emsctl.program")
    engine_log.propagate = False
    handler = _ListHandler()
    engine_log.addHandler(handler)
    engine_log.setLevel(logging.INFO)
    settings = pulumi_mocks.MockSettings(
        monitor=monitor, monitor_features=set(monitor.GetDeploymentInfo(None).supportedFeatures),
        engine=pulumi_mocks.MockEngine(engine_log), project=request["project"], stack=request["stack"],
        dry_run=bool(request.get("dry_run")), organization=request.get("organization") or "organization", callbacks=None)
    pulumi_settings.configure(settings)
    set_all_config(request["config"], request.get("secret_keys") or [])

    program_dir = request["program_dir"]
    os.chdir(program_dir)
    sys.path.insert(0, program_dir)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    result: dict[str, Any] = {"ok": True}
    try:
        loop.run_until_complete(run_in_stack(lambda: _program(request["main"])))
    except BaseException as exc:  # noqa: BLE001 every failure is reported to the parent
        engine = _find(exc, EngineError)
        run_error = _find(exc, pulumi.RunError)
        if engine is not None or run_error is not None:
            result = {"ok": False, "kind": "run", "message": str(engine or run_error)}
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result = {"ok": False, "kind": "crash", "message": f"{type(exc).__name__}: {first}".rstrip(": "),
                      "traceback": traceback.format_exc()}
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.close()
    if result["ok"]:
        errors = [r["message"] for r in handler.records if r["level"] in ("error", "critical")]
        if errors:  # pulumi.log.error fails an update too
            result = {"ok": False, "kind": "run", "message": errors[0].strip().splitlines()[0]}
    result.update({
        "stack_urn": monitor.stack_urn, "resources": monitor.records, "outputs": monitor.stack_outputs,
        "diagnostics": handler.records, "unemulated_calls": sorted(monitor.unemulated_calls),
        "stats": {"seconds": round(time.monotonic() - started, 4),
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
    })
    return result


def main() -> None:
    result_path = sys.argv[1]
    request = json.load(sys.stdin)
    result = run(request)
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    sys.stdout.flush()
    # Skip interpreter teardown: grpc/asyncio threads left by the program must not hang the exit.
    os._exit(0)


if __name__ == "__main__":
    main()
