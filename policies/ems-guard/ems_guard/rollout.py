"""Config changes reach the pods: a workload that mounts a ConfigMap or Secret rolls on a change, or reloads it.

The kubelet updates a whole-mounted ConfigMap or Secret in place, but a process that read the file at start
does not notice (docs/deploy.md, "Config changes reach the pods"). So every Deployment, StatefulSet and
DaemonSet whose pod mounts one — directly, or as a ``configMap``/``secret`` source of a projected volume —
must either carry the ``annotation`` (``ems.io/config-sha256``: a digest of what the pod reads, so a change
rolls it) on its pod template, or run the ``reloaderContainer`` sidecar (``components/config_reload.py``)
mounting that volume, in a pod with ``shareProcessNamespace: true`` so it can signal the process.

Not counted: a projected volume of service-account tokens, downward-API fields or cluster trust bundles only
(nothing in it comes from a ConfigMap or Secret the program changes). The annotation's value may be unknown
during preview (a digest of computed contents): its presence is what the rule needs.
"""

from __future__ import annotations

from typing import Any, Iterator

from .props import UNKNOWN, Resource, as_bool, elements, get, of_kinds, resource_policy, unknown_message
from .workloads import pod_templates, pod_volumes, workload_identity

KINDS = ("Deployment", "StatefulSet", "DaemonSet")
_CONFIG = {
    "annotation": {"type": "string", "default": "ems.io/config-sha256",
                   "description": "Pod-template annotation holding the digest of the config the pod reads."},
    "reloaderContainer": {"type": "string", "default": "config-reloader",
                          "description": "Name of the sidecar that reloads a mounted config in place."},
    "exemptions": {"type": "array", "items": {"type": "string"}, "default": [],
                   "description": "Workloads that need neither, by Pulumi name, metadata.name or namespace/name."},
}


def _config_sources(volume: Any) -> Any:
    """What a volume mounts from ConfigMaps and Secrets, e.g. ``["Secret broker-tls"]``; UNKNOWN when unknown."""
    if volume is UNKNOWN:
        return UNKNOWN
    found = []
    for field, kind, key in (("configMap", "ConfigMap", "name"), ("secret", "Secret", "secretName")):
        source = get(volume, field)
        if source is UNKNOWN:
            return UNKNOWN
        if source is not None:
            found.append(f"{kind} {get(source, key)!r}")
    projected = get(volume, "projected")
    sources = elements(get(projected, "sources")) if projected is not None else []
    if sources is UNKNOWN:
        return UNKNOWN
    for source in sources:
        for field, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
            inner = get(source, field)
            if inner is UNKNOWN:
                return UNKNOWN
            if inner is not None:
                found.append(f"{kind} {get(inner, 'name')!r}")
    return found


def _reloaded(spec: Any, volume_name: str, reloader: str) -> Any:
    """Whether the reloader sidecar mounts ``volume_name`` in a pod that shares its process namespace."""
    shared = as_bool(get(spec, "shareProcessNamespace"))
    containers = elements(get(spec, "containers"))
    if shared is UNKNOWN or containers is UNKNOWN:
        return UNKNOWN
    for container in containers:
        if get(container, "name") != reloader:
            continue
        mounts = elements(get(container, "volumeMounts"))
        if mounts is UNKNOWN:
            return UNKNOWN
        if any(get(m, "name") == volume_name for m in mounts):
            return shared is True
    return False


def _config_rolls(res: Resource, cfg: dict) -> Iterator[str]:
    key, reloader = str(cfg["annotation"]), str(cfg["reloaderContainer"])
    exempt = {str(e) for e in cfg.get("exemptions") or []}
    for template in pod_templates(res.resource_type, res.props):
        if template.spec is None or workload_identity(res, template) & exempt:
            continue        # a patch that leaves the pod template alone, or an exempted workload
        if template.spec is UNKNOWN:
            yield unknown_message(res.subject, template.path)
            continue
        annotations = get(template.metadata, "annotations")
        digest = get(annotations, key)
        if digest is UNKNOWN and annotations is UNKNOWN:
            yield unknown_message(res.subject, f"{template.path.removesuffix('spec')}metadata.annotations")
            continue
        if digest is UNKNOWN or (isinstance(digest, str) and digest.strip()):
            continue        # the digest is there (computed during preview)
        for where, volume in pod_volumes(template):
            sources = _config_sources(volume)
            if sources is UNKNOWN:
                yield unknown_message(res.subject, where)
                continue
            if not sources:
                continue
            name = get(volume, "name")
            reloads = _reloaded(template.spec, name, reloader)
            if reloads is UNKNOWN:
                yield unknown_message(res.subject, f"{template.path}.containers")
            elif not reloads:
                yield (f"{res.subject}: volume {name!r} ({where}) mounts {', '.join(sources)}, but the pod template "
                       f"has no {key} annotation and no {reloader!r} sidecar mounting it (with shareProcessNamespace: "
                       f"true), so a changed file never reaches a process that read it at start; add "
                       f"template_metadata(config=...) (components/k8s_common.py) or the reloader "
                       f"(components/config_reload.py), or list the workload in exemptions.")


POLICIES = [
    resource_policy(
        name="pod-config-change-rolls",
        description="Requires Deployments, StatefulSets and DaemonSets that mount a ConfigMap or Secret to carry "
                    "the ems.io/config-sha256 pod-template annotation or run the config-reloader sidecar on it.",
        applies=of_kinds(*KINDS), check=_config_rolls, config=_CONFIG),
]
