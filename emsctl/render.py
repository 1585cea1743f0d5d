"""Write the Kubernetes objects a captured program declared as YAML manifests, one object per file.

Each manifest holds exactly the fields the program set (``apiVersion``, ``kind``, ``metadata``, …
as the Kubernetes SDK sent them), after the provider's ``Check`` (auto-names, see
:mod:`emsctl.providers`): integers stay integers, ``None`` and unknown values are dropped, and the
namespace is the one in ``metadata`` (never invented). Values the program marked secret are
redacted — strings become ``REDACTED``, and in a Secret's ``data`` (base64 by definition) the
base64 of ``REDACTED`` — so a render never holds key material; the fields stay, so schema
validation still sees them.

Layout mirrors pulumi-kubernetes ``renderYamlToDirectory``::

    DIR/0-crd/<apiVersion>-<kind>-<namespace>-<name>.yaml        CustomResourceDefinitions
    DIR/1-manifest/<apiVersion>-<kind>-<namespace>-<name>.yaml   everything else

(``/`` and ``:`` become ``_``; an object without ``metadata.namespace`` — cluster-scoped ones
included — gets ``default`` as namespace part, as in pulumi-kubernetes).
When objects go to more than one Kubernetes provider (cluster), each provider gets its own
``DIR/<provider name>/`` tree. Two objects with the same kind, namespace and name on one
cluster are a program error (:class:`RenderError`): the second would fail at apply time.
Earlier ``*.yaml`` files in the manifest folders written to are removed first, so a render
shows exactly the current program.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .capture import Capture, CapturedResource
from .errors import EmsctlError
from .providers import CLUSTER_SCOPED_KINDS, check_inputs, kubernetes_kind
from .values import UNKNOWN, Secret, decode

REDACTED = "REDACTED"
_TOP_ORDER = ("apiVersion", "kind", "metadata")


class RenderError(EmsctlError):
    """The declared objects cannot be rendered (e.g. two objects with the same identity on one cluster)."""


@dataclass(frozen=True)
class KubeObject:
    """One Kubernetes object a program declared."""

    urn: str
    api_version: str
    kind: str
    name: str
    namespace: str | None
    provider: str | None
    manifest: dict[str, Any]

    @property
    def identity(self) -> tuple[str, str, str, str]:
        return (self.api_version.split("/")[0] if "/" in self.api_version else "", self.kind, self.namespace or "", self.name)


def _clean(value: Any, *, in_secret: bool = False, base64_strings: bool = False) -> Any:
    """Drop None/unknown, redact secrets; returns UNKNOWN for values to drop."""
    if isinstance(value, Secret):
        return _clean(value.value, in_secret=True, base64_strings=base64_strings)
    if value is None or value is UNKNOWN:
        return UNKNOWN
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            cleaned = _clean(v, in_secret=in_secret, base64_strings=base64_strings)
            if cleaned is not UNKNOWN:
                out[k] = cleaned
        return out
    if isinstance(value, list):
        return [c for c in (_clean(v, in_secret=in_secret, base64_strings=base64_strings) for v in value)
                if c is not UNKNOWN]
    if in_secret and isinstance(value, str):
        return base64.b64encode(REDACTED.encode()).decode() if base64_strings else REDACTED
    return value


def manifest_of(resource: CapturedResource) -> dict[str, Any] | None:
    """The manifest of ``resource``, or None if it is not a Kubernetes object."""
    kind = kubernetes_kind(resource.type)
    if kind is None or not resource.custom or resource.read:
        return None
    checked = decode(check_inputs(resource.type, resource.name, resource.urn, resource.inputs_wire))
    manifest: dict[str, Any] = {}
    for key, value in checked.items():
        is_secret_data = kind[1] == "Secret" and key in ("data",)
        cleaned = _clean(value, base64_strings=is_secret_data)
        if cleaned is not UNKNOWN:
            manifest[key] = cleaned
    manifest.setdefault("apiVersion", kind[0])
    manifest.setdefault("kind", kind[1])
    meta = manifest.get("metadata")
    if isinstance(meta, dict):  # name and namespace first, as kubectl shows them
        manifest["metadata"] = {**{k: meta[k] for k in ("name", "namespace") if k in meta},
                                **{k: v for k, v in meta.items() if k not in ("name", "namespace")}}
    ordered = {k: manifest[k] for k in _TOP_ORDER if k in manifest}
    ordered.update({k: v for k, v in manifest.items() if k not in ordered})
    return ordered


def kubernetes_objects(capture: Capture) -> list[KubeObject]:
    """Every Kubernetes object the program declared, in registration order."""
    objects = []
    for r in capture.resources:
        manifest = manifest_of(r)
        if manifest is None:
            continue
        meta = manifest.get("metadata") or {}
        kind = manifest["kind"]
        namespace = None if kind in CLUSTER_SCOPED_KINDS else meta.get("namespace")
        objects.append(KubeObject(urn=r.urn, api_version=manifest["apiVersion"], kind=kind, name=str(meta.get("name")),
                                  namespace=namespace, provider=r.provider, manifest=manifest))
    return objects


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data and all(c == "\n" or c.isprintable() for c in data) and not data.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def to_yaml(manifest: dict[str, Any]) -> str:
    """One manifest as a YAML document (keys in program order, block style)."""
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)


def _sanitise(part: str) -> str:
    return part.replace("/", "_").replace(":", "_")


def _file_name(obj: KubeObject) -> str:
    # pulumi-kubernetes renderPathForResource: "<apiVersion>-<kind>-<namespace or default>-<name>.yaml"
    namespace = obj.manifest.get("metadata", {}).get("namespace") or "default"
    return f"{_sanitise(obj.api_version)}-{obj.kind.lower()}-{_sanitise(namespace)}-{_sanitise(obj.name)}.yaml"


def render(capture: Capture, directory: str | os.PathLike[str]) -> list[Path]:
    """Write every object of ``capture`` under ``directory``; return the files written (sorted)."""
    objects = kubernetes_objects(capture)
    providers = sorted({o.provider or "default" for o in objects})
    seen: dict[tuple[str, tuple[str, str, str, str]], str] = {}
    for obj in objects:
        key = (obj.provider or "default", obj.identity)
        if key in seen:
            ns = f" in namespace {obj.namespace}" if obj.namespace else ""
            raise RenderError(f"{obj.kind} {obj.name!r}{ns} is declared twice on one cluster: {seen[key]} and {obj.urn}")
        seen[key] = obj.urn
    root = Path(directory)
    targets = []
    for obj in objects:
        base = root
        if len(providers) > 1:
            base = root / (obj.provider.split("::")[-1] if obj.provider else "default")
        sub = "0-crd" if obj.kind == "CustomResourceDefinition" else "1-manifest"
        targets.append((obj, base / sub / _file_name(obj)))
    # A manifest left from an earlier render would look declared: clear the manifest folders we write.
    for folder in {path.parent for _, path in targets}:
        for stale in folder.glob("*.yaml") if folder.is_dir() else ():
            stale.unlink()
    written = []
    for obj, path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_yaml(obj.manifest), encoding="utf-8")
        written.append(path)
    return sorted(written)
