"""Cluster access for private clouds: a Kubernetes provider for a cluster the customer runs.

The kubeconfig is a secret (``pulumi config set --secret ems:kubeconfig < file``) and the
context is optional. The component exposes the same ``provider`` attribute as
``EksCluster`` and ``LocalRender``; it creates no AWS resource.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import ComponentArgsError


@dataclass(frozen=True)
class ExistingClusterArgs:
    kubeconfig: pulumi.Input[str] | None = None
    """Kubeconfig contents (a secret). Defaults to the operator's ``$KUBECONFIG``/``~/.kube/config``."""
    context: str | None = None
    """Context inside the kubeconfig. Defaults to its current context."""


class ExistingCluster(pulumi.ComponentResource):
    """A ``pulumi_kubernetes.Provider`` for an existing (private) cluster."""

    provider: k8s.Provider
    kube_context: pulumi.Output[str]

    def __init__(self, name: str, args: ExistingClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.context is not None and not args.context.strip():
            raise ComponentArgsError(name, "context", args.context, "must not be blank")
        super().__init__("ems:cluster:ExistingCluster", name, None, opts)
        kubeconfig = pulumi.Output.secret(args.kubeconfig) if args.kubeconfig is not None else None
        self.provider = k8s.Provider(
            f"{name}-provider",
            kubeconfig=kubeconfig,
            context=args.context,
            enable_server_side_apply=True,
            delete_unreachable=False,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["kubeconfig"]),
        )
        self.kube_context = pulumi.Output.from_input(args.context or "")
        self.register_outputs({"kube_context": self.kube_context})
