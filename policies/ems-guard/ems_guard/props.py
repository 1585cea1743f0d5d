"""Reading resource properties as the Pulumi engine sends them, and building policies.

The engine hands a policy pack the *checked inputs* of a resource over gRPC as a protobuf Struct.
pulumi_policy turns it into read-only proxies (``_DictProxy``/``_ListProxy``) where:

* keys are the provider's camelCase names (``securityContext``, ``validityPeriodHours``);
* every number is a float (``443.0``), even when the schema says integer;
* during ``pulumi preview`` a value computed from another resource's output is *unknown*: the
  engine sends a sentinel string and the proxy raises ``UnknownValueError`` on access (``.get``,
  ``in`` and iteration included). Left alone, the SDK turns that into an ADVISORY note, so a
  mandatory rule would silently pass. These helpers turn an unknown into the ``UNKNOWN`` marker
  instead, and every rule reports "cannot verify … because it is unknown during preview".

``resource_policy`` and ``stack_policy`` wrap a generator of violation messages into a pulumi_policy
policy: they filter by type, merge the config schema's defaults with the configured values, and
catch any unknown that escapes a rule as a reported violation.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import (
    UNKNOWN_ARCHIVE_VALUE,
    UNKNOWN_ARRAY_VALUE,
    UNKNOWN_ASSET_VALUE,
    UNKNOWN_BOOLEAN_VALUE,
    UNKNOWN_NUMBER_VALUE,
    UNKNOWN_OBJECT_VALUE,
    UNKNOWN_STRING_VALUE,
    UnknownValueError,
)

_SENTINELS = frozenset({
    UNKNOWN_ARCHIVE_VALUE, UNKNOWN_ARRAY_VALUE, UNKNOWN_ASSET_VALUE, UNKNOWN_BOOLEAN_VALUE,
    UNKNOWN_NUMBER_VALUE, UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE,
})


class _Unknown:
    """The marker for a value the engine cannot know during preview."""

    _instance: Optional["_Unknown"] = None

    def __new__(cls) -> "_Unknown":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unknown during preview>"

    def __bool__(self) -> bool:  # an unknown is never "set to true" by accident
        return False


UNKNOWN: Any = _Unknown()


def is_unknown(value: Any) -> bool:
    """True for the UNKNOWN marker and for a raw engine sentinel string."""
    return value is UNKNOWN or (isinstance(value, str) and value in _SENTINELS)


# --------------------------------------------------------------------------- reading values

def get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]``; ``default`` when absent or ``obj`` is not a mapping; UNKNOWN when unknown."""
    if is_unknown(obj):
        return UNKNOWN
    if not isinstance(obj, Mapping):
        return default
    try:
        value = obj[key]
    except KeyError:
        return default
    except UnknownValueError:
        return UNKNOWN
    if is_unknown(value):
        return UNKNOWN
    return default if value is None else value


def dig(obj: Any, *keys: str, default: Any = None) -> Any:
    """Follow ``keys`` through nested mappings; UNKNOWN as soon as one level is unknown."""
    for key in keys:
        obj = get(obj, key, None)
        if obj is UNKNOWN:
            return UNKNOWN
        if obj is None:
            return default
    return obj


def elements(seq: Any) -> Any:
    """The elements of a list (each possibly UNKNOWN); ``[]`` when absent; UNKNOWN when unknown."""
    if is_unknown(seq):
        return UNKNOWN
    if seq is None or isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
        return []
    out = []
    for i in range(len(seq)):
        try:
            value = seq[i]
        except UnknownValueError:
            value = UNKNOWN
        out.append(UNKNOWN if is_unknown(value) else value)
    return out


def entries(obj: Any) -> Any:
    """``(key, value)`` pairs of a mapping (values possibly UNKNOWN); ``[]`` when absent."""
    if is_unknown(obj):
        return UNKNOWN
    if not isinstance(obj, Mapping):
        return []
    return [(key, get(obj, key)) for key in list(obj)]


def as_int(value: Any) -> Any:
    """443.0 / 443 / "443" → 443; UNKNOWN stays UNKNOWN; anything else → None."""
    if is_unknown(value):
        return UNKNOWN
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def as_bool(value: Any) -> Any:
    """True/False (also "true"/"false" strings, case-insensitive); UNKNOWN; None when unset/other."""
    if is_unknown(value):
        return UNKNOWN
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def strings(seq: Any) -> Any:
    """A list of strings as plain Python strings; UNKNOWN if the list or any element is unknown."""
    items = elements(seq)
    if items is UNKNOWN or any(item is UNKNOWN for item in items):
        return UNKNOWN
    return [str(item) for item in items]


def plain(value: Any) -> Any:
    """A deep plain-Python copy (dict/list) of a proxied value, unknowns as UNKNOWN."""
    if is_unknown(value):
        return UNKNOWN
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in entries(value)}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in elements(value)]
    return value


def label_is_true(labels: Any, key: str) -> Any:
    """Whether label/annotation ``key`` is "true" (case-insensitive); UNKNOWN when unknown."""
    value = get(labels, key)
    if value is UNKNOWN:
        return UNKNOWN
    return isinstance(value, str) and value.strip().lower() == "true"


def unknown_message(subject: str, path: str, why: str = "") -> str:
    """The one wording every rule uses for a security-relevant value unknown during preview."""
    reason = f" ({why})" if why else ""
    return (f"{subject}: cannot verify {path} because it is unknown during preview{reason}; "
            "set it from a literal or stack config, or run `pulumi up` only after a preview shows it")


# --------------------------------------------------------------------------- Kubernetes type tokens

@dataclass(frozen=True)
class K8sType:
    """``kubernetes:apps/v1:DeploymentPatch`` → group "apps", version "v1", kind "Deployment", patch."""

    group: str
    version: str
    kind: str
    patch: bool
    is_list: bool


_K8S_TOKEN = re.compile(r"^kubernetes:(?P<group>[^/:]+)/(?P<version>[^:]+):(?P<kind>[A-Za-z0-9]+)$")


@functools.lru_cache(maxsize=4096)
def k8s_type(resource_type: str) -> Optional[K8sType]:
    """Parse a Kubernetes custom-resource token, whatever its API version; None for anything else."""
    match = _K8S_TOKEN.match(resource_type)
    if not match:
        return None
    kind = match["kind"]
    patch = kind.endswith("Patch")
    if patch:
        kind = kind[: -len("Patch")]
    is_list = kind.endswith("List") and kind != "List"
    if is_list:
        kind = kind[: -len("List")]
    return K8sType(match["group"], match["version"], kind, patch, is_list)


def k8s_objects(resource_type: str, props: Any) -> list[tuple[str, Any]]:
    """The Kubernetes objects a resource declares: itself, or each item of a ``…List`` kind."""
    parsed = k8s_type(resource_type)
    if parsed is None:
        return []
    if not parsed.is_list:
        return [(parsed.kind, props)]
    items = elements(get(props, "items"))
    if items is UNKNOWN:
        return [(parsed.kind, UNKNOWN)]
    return [(parsed.kind, item) for item in items]


# --------------------------------------------------------------------------- config

def schema(properties: Mapping[str, Mapping[str, Any]]) -> PolicyConfigSchema:
    """A PolicyConfigSchema; every property must carry a ``default`` (a site tunes, never must set)."""
    for key, prop in properties.items():
        if "default" not in prop:
            raise TypeError(f"config property {key!r} needs a default")
    return PolicyConfigSchema(properties={k: dict(v) for k, v in properties.items()})


def effective_config(configured: Optional[Mapping[str, Any]], config_schema: Optional[PolicyConfigSchema]) -> dict:
    """Schema defaults overlaid with the configured values (numbers arrive as floats: 300.0)."""
    result: dict[str, Any] = {}
    if config_schema is not None:
        for key, prop in config_schema.properties.items():
            result[key] = copy.deepcopy(prop.get("default"))
    for key, value in (configured or {}).items():
        if key != "enforcementLevel":
            result[key] = plain(value)
    return result


# --------------------------------------------------------------------------- policy builders

@dataclass(frozen=True)
class Resource:
    """One resource under validation: type, logical name, URN and (engine-shaped) properties."""

    resource_type: str
    name: str
    urn: str
    props: Any

    @property
    def subject(self) -> str:
        parsed = k8s_type(self.resource_type)
        kind = parsed.kind if parsed else self.resource_type.rsplit(":", 1)[-1]
        return f"{kind} '{self.name}'"


Check = Callable[[Resource, dict], Iterable[str]]
StackCheck = Callable[[list[PolicyResource], dict], Iterable[tuple[str, Optional[str]]]]


INTERNAL_ERROR = "ems-guard could not evaluate"


def _internal_error(subject: str, exc: Exception) -> str:
    return (f"{subject}: {INTERNAL_ERROR} this resource ({type(exc).__name__}: {exc}); a property has a shape "
            "the Kubernetes/AWS schema does not allow — fix the property or report the pack bug.")


def _escaped_unknown(subject: str, exc: UnknownValueError) -> str:
    return unknown_message(subject, "." + ".".join(exc.props))


def resource_policy(*, name: str, description: str, check: Check,
                    applies: Callable[[str], bool],
                    config: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    level: EnforcementLevel = EnforcementLevel.MANDATORY) -> ResourceValidationPolicy:
    """A ResourceValidationPolicy running ``check`` on resources whose type satisfies ``applies``."""
    config_schema = schema(config) if config else None

    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        if not applies(args.resource_type):
            return
        resource = Resource(args.resource_type, args.name, args.urn, args.props)
        cfg = effective_config(args.get_config(), config_schema)
        try:
            for message in check(resource, cfg):
                report(message, None)
        except UnknownValueError as exc:
            report(_escaped_unknown(resource.subject, exc), None)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            # A shape no valid resource has: fail closed (a crash would abort the whole Analyze call).
            report(_internal_error(resource.subject, exc), None)

    return ResourceValidationPolicy(name=name, description=description, validate=validate,
                                    enforcement_level=level, config_schema=config_schema)


def stack_policy(*, name: str, description: str, check: StackCheck,
                 config: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 level: EnforcementLevel = EnforcementLevel.MANDATORY) -> StackValidationPolicy:
    """A StackValidationPolicy; ``check`` yields ``(message, urn or None)`` pairs."""
    config_schema = schema(config) if config else None

    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        cfg = effective_config(args.get_config(), config_schema)
        try:
            for message, urn in check(list(args.resources), cfg):
                report(message, urn)
        except UnknownValueError as exc:
            report(_escaped_unknown("stack", exc), None)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            report(_internal_error("stack", exc), None)

    return StackValidationPolicy(name=name, description=description, validate=validate,
                                 enforcement_level=level, config_schema=config_schema)


def of_kinds(*kinds: str, group: Optional[str] = None) -> Callable[[str], bool]:
    """``applies`` predicate: Kubernetes tokens of these kinds (any version, patches and lists too)."""
    wanted = frozenset(kinds)

    def applies(resource_type: str) -> bool:
        parsed = k8s_type(resource_type)
        return parsed is not None and parsed.kind in wanted and (group is None or parsed.group == group)

    return applies


def of_types(*types: str) -> Callable[[str], bool]:
    """``applies`` predicate: exact type tokens."""
    wanted = frozenset(types)
    return lambda resource_type: resource_type in wanted
