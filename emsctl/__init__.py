"""emsctl — offline tools for the ems-platform Pulumi program.

* :mod:`emsctl.capture` — evaluate a stack under Pulumi's mock runtime and capture every resource
  (``evaluate_stack(project_dir, stack) -> Capture``);
* :mod:`emsctl.render` — write the Kubernetes objects a capture declares as YAML manifests;
* :mod:`emsctl.gate` — run CrossGuard policy packs over the Analyzer gRPC protocol, as the CLI does;
* :mod:`emsctl.cli` — ``emsctl preview`` and ``emsctl policy``.
"""
