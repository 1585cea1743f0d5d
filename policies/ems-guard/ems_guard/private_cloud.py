"""Private-cloud stacks (``ems:cloud`` is ``private`` or ``local``): no AWS resource at all, and every
Kubernetes resource on an explicit provider (a default provider would talk to whatever cluster the
operator's kubeconfig points at).

The pack reads the stack's config the way the Pulumi CLI hands it over: the CLI starts the pack with
``PULUMI_CONFIG`` (a JSON object of ``namespace:key`` → value) in its environment, and
``pulumi.runtime.get_config`` reads it. A default provider is the engine-made provider whose URN is
``…::pulumi:providers:kubernetes::default…``.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import pulumi.runtime
from pulumi_policy import PolicyResource

from .props import stack_policy

# Kubernetes SDK components that are not custom resources (their children are checked instead).
K8S_COMPONENTS = frozenset({
    "kubernetes:helm.sh/v3:Chart", "kubernetes:yaml:ConfigFile", "kubernetes:yaml:ConfigGroup",
    "kubernetes:kustomize:Directory",
})
CLOUD_PREFIXES = ("aws:", "aws-native:", "awsx:", "eks:", "pulumi:providers:aws", "pulumi:providers:aws-native",
                  "pulumi:providers:awsx", "pulumi:providers:eks")

_CONFIG = {
    "cloudConfigKey": {"type": "string", "default": "ems:cloud",
                       "description": "Stack config key naming the cloud of the stack."},
    "defaultCloud": {"type": "string", "default": "local",
                     "description": "Cloud assumed when the stack config does not set the key (the program's default)."},
    "privateClouds": {"type": "array", "items": {"type": "string"}, "default": ["private", "local"],
                      "description": "Cloud values that mean a private (non-AWS) cluster."},
}


def stack_cloud(cfg: dict) -> str:
    """The stack's cloud from its config (PULUMI_CONFIG), else the configured default."""
    value = pulumi.runtime.get_config(str(cfg.get("cloudConfigKey")))
    if isinstance(value, str) and value.strip():
        return value.strip().strip('"')
    return str(cfg.get("defaultCloud"))


def _private(cfg: dict) -> Optional[str]:
    cloud = stack_cloud(cfg)
    return cloud if cloud in {str(c) for c in cfg.get("privateClouds") or []} else None


def is_default_provider(urn: str, name: str) -> bool:
    return name == "default" or name.startswith("default_") or urn.rsplit("::", 1)[-1].startswith("default")


def _no_aws(resources: list[PolicyResource], cfg: dict) -> Iterator[tuple[str, Optional[str]]]:
    cloud = _private(cfg)
    if cloud is None:
        return
    for res in resources:
        if res.resource_type.startswith(CLOUD_PREFIXES):
            yield (f"{res.resource_type} '{res.name}' exists in a {cloud!r} stack ({cfg.get('cloudConfigKey')}); "
                   "private and local stacks must not create or configure AWS resources — remove it or "
                   "move it to an AWS stack."), res.urn


def _explicit_provider(resources: list[PolicyResource], cfg: dict) -> Iterator[tuple[str, Optional[str]]]:
    cloud = _private(cfg)
    if cloud is None:
        return
    for res in resources:
        t = res.resource_type
        if t.startswith("pulumi:providers:kubernetes") and is_default_provider(res.urn, res.name):
            yield (f"the default Kubernetes provider '{res.name}' exists in a {cloud!r} stack; pass an explicit "
                   "kubernetes.Provider to every resource (and keep pulumi:disable-default-providers)."), res.urn
            continue
        if not t.startswith("kubernetes:") or t in K8S_COMPONENTS:
            continue
        provider: Any = res.provider
        if provider is None:
            yield (f"{t} '{res.name}' has no provider reference in a {cloud!r} stack; pass the cluster's "
                   "kubernetes.Provider (opts providers=/provider=) so it cannot reach the default kubeconfig."), res.urn
        elif is_default_provider(provider.urn, provider.name):
            yield (f"{t} '{res.name}' uses the default Kubernetes provider ({provider.urn}) in a {cloud!r} stack; "
                   "pass the cluster's kubernetes.Provider explicitly (opts providers=/provider=)."), res.urn


POLICIES = [
    stack_policy(
        name="private-cloud-no-aws",
        description="Prohibits AWS resources and providers in private and local stacks.",
        check=_no_aws, config=_CONFIG),
    stack_policy(
        name="private-cloud-explicit-provider",
        description="Requires every Kubernetes resource of a private or local stack to use an explicit provider.",
        check=_explicit_provider, config=_CONFIG),
]
