"""The embedded default: a Kubernetes provider that renders manifests instead of applying them.

With ``render_yaml_to_directory`` the provider writes every object as YAML under the
directory, so ``pulumi up -s local`` shows the whole platform without any cluster. The
component exposes the same ``provider`` attribute as ``EksCluster``; no AWS resource.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.k8s_common import ComponentArgsError


@dataclass(frozen=True)
class LocalRenderArgs:
    directory: str = "out/rendered/local"
    """Where the manifests are written (relative to the project). Defaults to ``out/rendered/local``."""


class LocalRender(pulumi.ComponentResource):
    """A ``pulumi_kubernetes.Provider`` that renders YAML to a directory instead of applying it."""

    provider: k8s.Provider
    render_directory: pulumi.Output[str]

    def __init__(self, name: str, args: LocalRenderArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not args.directory.strip():
            raise ComponentArgsError(name, "directory", args.directory, "must be a directory path")
        super().__init__("ems:cluster:LocalRender", name, None, opts)
        self.provider = k8s.Provider(
            f"{name}-provider", render_yaml_to_directory=args.directory, opts=pulumi.ResourceOptions(parent=self)
        )
        self.render_directory = pulumi.Output.from_input(args.directory)
        self.register_outputs({"render_directory": self.render_directory})
