"""EMS placement and scaling: latency-critical pods on interconnect nodes, the TSDB on CSI storage,
thermal-asset autoscalers that cool down before scaling in.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from pulumi_policy import PolicyResource

from .network import resource_kind, subject
from .props import (
    UNKNOWN, Resource, as_int, dig, elements, get, label_is_true, of_kinds, resource_policy, stack_policy,
    strings, unknown_message,
)
from .workloads import applies_to_pods, pod_templates

LATENCY_CRITICAL = "ems.io/latency-critical"
THERMAL_ASSET = "ems.io/thermal-asset"


# --------------------------------------------------------------------------- node affinity

def _term_pins_pool(term: Any, label: str, pool: str) -> Any:
    expressions = elements(get(term, "matchExpressions"))
    if expressions is UNKNOWN:
        return UNKNOWN
    for expr in expressions:
        key, op, values = get(expr, "key"), get(expr, "operator"), strings(get(expr, "values"))
        if UNKNOWN in (key, op, values):
            return UNKNOWN
        if key == label and op == "In" and values and set(values) <= {pool}:
            return True
    return False


def _latency_critical(res: Resource, cfg: dict) -> Iterator[str]:
    label, pool = str(cfg.get("poolLabel")), str(cfg.get("pool"))
    for template in pod_templates(res.resource_type, res.props):
        flags = [label_is_true(dig(template.obj, "metadata", "labels"), LATENCY_CRITICAL),
                 label_is_true(get(template.metadata, "labels"), LATENCY_CRITICAL)]
        if True not in flags:
            if UNKNOWN in flags:
                yield unknown_message(res.subject, f"labels[{LATENCY_CRITICAL}]")
            continue
        terms = elements(dig(template.spec, "affinity", "nodeAffinity",
                             "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms"))
        where = f"{template.path}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        if terms is UNKNOWN:
            yield unknown_message(res.subject, where)
            continue
        verdicts = [_term_pins_pool(term, label, pool) for term in terms]
        if UNKNOWN in verdicts:
            yield unknown_message(res.subject, f"{where}.nodeSelectorTerms")
        elif not terms or not all(verdicts):
            yield (f"{res.subject} is labelled {LATENCY_CRITICAL}: \"true\" but {where} does not pin every "
                   f"nodeSelectorTerm to {label} In [{pool}]; add a matchExpression "
                   f"{{key: {label}, operator: In, values: [{pool}]}} to each term (preferred affinity is not enough).")


# --------------------------------------------------------------------------- thermal HPA

def _thermal_hpa(res: Resource, cfg: dict) -> Iterator[str]:
    cooldown = as_int(cfg.get("thermalCooldownSeconds"))
    labels = dig(res.props, "metadata", "labels")
    thermal = label_is_true(labels, THERMAL_ASSET)
    if thermal is UNKNOWN:
        yield unknown_message(res.subject, f"metadata.labels[{THERMAL_ASSET}]")
        return
    if not thermal:
        return
    window = as_int(dig(res.props, "spec", "behavior", "scaleDown", "stabilizationWindowSeconds"))
    if window is UNKNOWN:
        yield unknown_message(res.subject, "spec.behavior.scaleDown.stabilizationWindowSeconds")
    elif window is None or window < cooldown:
        shown = "unset" if window is None else f"{window}"
        yield (f"{res.subject} is a thermal asset ({THERMAL_ASSET}: \"true\") but "
               f"spec.behavior.scaleDown.stabilizationWindowSeconds is {shown}; set it to at least {cooldown} "
               "(policy config thermalCooldownSeconds) so thermal inertia settles before scale-in "
               "(autoscaling/v2 is required for spec.behavior).")


# --------------------------------------------------------------------------- TSDB storage

def _labels_match_any(labels: Any, selectors: list) -> Any:
    if labels is UNKNOWN:
        return UNKNOWN
    for selector in selectors:
        if isinstance(selector, dict) and selector and all(get(labels, k) == v for k, v in selector.items()):
            return True
    return False


def is_csi(provisioner: str, known: list) -> bool:
    if provisioner in known:
        return True
    if provisioner.startswith("kubernetes.io/"):
        return False  # in-tree volume plugins
    tokens = provisioner.replace("/", ".").replace("-", ".").split(".")
    return "csi" in tokens


def _claims(res: PolicyResource, selectors: list) -> Iterator[tuple[str, Any, Any]]:
    """``(path, claim spec, property-dependency key)`` of TSDB claims: PVCs and volumeClaimTemplates."""
    kind = resource_kind(res)
    if kind == "PersistentVolumeClaim":
        tsdb = _labels_match_any(dig(res.props, "metadata", "labels"), selectors)
        if tsdb is not False:
            yield "spec", get(res.props, "spec"), tsdb
    elif kind == "StatefulSet":
        sts_labels = dig(res.props, "metadata", "labels")
        pod_labels = dig(res.props, "spec", "template", "metadata", "labels")
        owner = [_labels_match_any(sts_labels, selectors), _labels_match_any(pod_labels, selectors)]
        templates = elements(dig(res.props, "spec", "volumeClaimTemplates"))
        if templates is UNKNOWN:
            if True in owner:
                yield "spec.volumeClaimTemplates", UNKNOWN, True
            return
        for i, template in enumerate(templates):
            mine = _labels_match_any(dig(template, "metadata", "labels"), selectors)
            verdict = True if True in owner + [mine] else (UNKNOWN if UNKNOWN in owner + [mine] else False)
            if verdict is not False:
                yield f"spec.volumeClaimTemplates[{i}].spec", get(template, "spec"), verdict


def _tsdb_storage(resources: list[PolicyResource], cfg: dict) -> Iterator[tuple[str, Optional[str]]]:
    selectors = [s for s in cfg.get("tsdbLabels") or [] if isinstance(s, dict)]
    known = [str(p) for p in cfg.get("csiProvisioners") or []]
    classes: dict[str, Any] = {}
    by_urn: dict[str, Any] = {}
    for res in resources:
        if resource_kind(res) == "StorageClass":
            name = dig(res.props, "metadata", "name")
            provisioner = get(res.props, "provisioner")
            by_urn[res.urn] = provisioner
            if isinstance(name, str):
                classes[name] = provisioner
    for res in resources:
        if resource_kind(res) not in ("PersistentVolumeClaim", "StatefulSet"):
            continue
        for path, spec, tsdb in _claims(res, selectors):
            if tsdb is UNKNOWN:
                yield unknown_message(subject(res), "metadata.labels", "needed to tell a TSDB claim"), res.urn
                continue
            if spec is UNKNOWN:
                yield unknown_message(subject(res), path), res.urn
                continue
            name = get(spec, "storageClassName")
            provisioner: Any = None
            if name is UNKNOWN:
                deps = [d for d in res.property_dependencies.get("spec", []) + res.dependencies
                        if d.urn in by_urn]
                if not deps:
                    yield unknown_message(subject(res), f"{path}.storageClassName"), res.urn
                    continue
                name, provisioner = deps[0].name, by_urn[deps[0].urn]
            elif name is None:
                yield (f"{subject(res)}: TSDB claim {path}.storageClassName is unset (the cluster default class may "
                       "not be CSI-backed); name a StorageClass whose provisioner is a CSI driver."), res.urn
                continue
            elif not isinstance(name, str):
                yield f"{subject(res)}: TSDB claim {path}.storageClassName is {name!r}, not a name.", res.urn
                continue
            else:
                if name not in classes:
                    yield (f"{subject(res)}: TSDB claim {path}.storageClassName {name!r} is not a StorageClass of this "
                           "stack, so its provisioner cannot be checked; declare the StorageClass in the program."), res.urn
                    continue
                provisioner = classes[name]
            if provisioner is UNKNOWN:
                yield unknown_message(f"StorageClass {name!r}", "provisioner"), res.urn
            elif not isinstance(provisioner, str) or not is_csi(provisioner, known):
                yield (f"{subject(res)}: TSDB claim {path} uses StorageClass {name!r} with provisioner "
                       f"{provisioner!r}, which is not a CSI driver; use e.g. ebs.csi.aws.com or your private "
                       "cloud's CSI driver (policy config csiProvisioners)."), res.urn


POLICIES = [
    resource_policy(
        name="latency-critical-node-affinity",
        description=("Requires workloads labelled ems.io/latency-critical to require node affinity "
                     "to the interconnect pool."),
        applies=applies_to_pods, check=_latency_critical,
        config={"poolLabel": {"type": "string", "default": "ems.io/pool", "description": "Node pool label."},
                "pool": {"type": "string", "default": "interconnect",
                         "description": "Pool latency-critical pods must run on."}}),
    resource_policy(
        name="thermal-hpa-cooldown",
        description=("Requires HPAs labelled ems.io/thermal-asset to set a scale-down stabilization window "
                     "of at least the thermal cooldown."),
        applies=of_kinds("HorizontalPodAutoscaler"), check=_thermal_hpa,
        config={"thermalCooldownSeconds": {"type": "integer", "minimum": 0, "default": 300,
                                           "description": "Minimum scaleDown.stabilizationWindowSeconds."}}),
    stack_policy(
        name="tsdb-csi-storage",
        description="Requires the TSDB's volume claims to use a StorageClass backed by a CSI driver.",
        check=_tsdb_storage,
        config={"tsdbLabels": {"type": "array", "items": {"type": "object"},
                               "default": [{"ems.io/component": "tsdb"}, {"app.kubernetes.io/component": "tsdb"},
                                           {"app.kubernetes.io/name": "tsdb"},
                                           {"app.kubernetes.io/name": "prometheus"}],
                               "description": "Label sets (any one matching) that mark the TSDB or its claims."},
                "csiProvisioners": {"type": "array", "items": {"type": "string"},
                                    "default": ["ebs.csi.aws.com", "efs.csi.aws.com", "pd.csi.storage.gke.io",
                                                "disk.csi.azure.com", "driver.longhorn.io",
                                                "rook-ceph.rbd.csi.ceph.com", "csi.vsphere.vmware.com",
                                                "topolvm.io", "local.csi.openebs.io"],
                                    "description": "Provisioners accepted as CSI drivers (besides *.csi.* names)."}}),
]
