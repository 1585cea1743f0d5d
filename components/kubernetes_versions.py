"""The Kubernetes versions the platform supports: the one place that states the range.

| what | versions |
|---|---|
| any cluster (``ems:kubernetesVersion``) | ``MIN_KUBERNETES`` (1.26) and later; the stacks' manifests are validated against the strict schemas of each stack's own version |
| new EKS clusters (``ems:cloud aws``) | the versions EKS still offers on ``CALENDAR_AS_OF``: 1.32–1.36, of which 1.35 and 1.36 in standard support (1.32–1.34 in extended support, billed extra) |
| default of a new stack | ``DEFAULT_KUBERNETES`` (1.36): the newest version in EKS standard support, until 2027-08-02 |

``EKS_CALENDAR`` is the Amazon EKS Kubernetes release calendar (release, end of standard support,
end of extended support, UTC). Review it when EKS publishes a version: a newer version than
the calendar knows is accepted (EKS itself refuses it until it offers it); an older one than
EKS still offers is refused before anything is created.

``CHART_KUBERNETES`` holds what each pinned Helm chart states it needs; the EKS add-ons
(``vpc-cni``, ``aws-ebs-csi-driver``) are not pinned by hand: ``components/eks_cluster.py`` asks
EKS for the add-on version it publishes for the cluster's Kubernetes version, so an upgrade of
``ems:kubernetesVersion`` moves the add-ons with it.
"""

from __future__ import annotations

from datetime import date

__all__ = [
    "CALENDAR_AS_OF", "CHART_KUBERNETES", "DEFAULT_KUBERNETES", "EKS_CALENDAR", "MIN_KUBERNETES",
    "eks_offered", "eks_refusal", "eks_standard", "parse_version",
]

MIN_KUBERNETES = (1, 26)
DEFAULT_KUBERNETES = "1.36"
CALENDAR_AS_OF = date(2026, 12, 6)

# version: (Amazon EKS release, end of standard support, end of extended support)
EKS_CALENDAR: dict[str, tuple[date, date, date]] = {
    "1.29": (date(2024, 1, 23), date(2025, 3, 23), date(2026, 3, 23)),
    "1.30": (date(2024, 5, 23), date(2025, 7, 23), date(2026, 7, 23)),
    "1.31": (date(2024, 9, 26), date(2025, 11, 26), date(2026, 11, 26)),
    "1.32": (date(2025, 1, 23), date(2026, 3, 23), date(2027, 3, 23)),
    "1.33": (date(2025, 5, 29), date(2026, 7, 29), date(2027, 7, 29)),
    "1.34": (date(2025, 10, 2), date(2026, 12, 2), date(2027, 12, 2)),
    "1.35": (date(2026, 1, 27), date(2027, 3, 27), date(2028, 3, 27)),
    "1.36": (date(2026, 6, 2), date(2027, 8, 2), date(2028, 8, 2)),
}

# chart: (pinned chart version, minimum Kubernetes the chart states, maximum or None when it states none)
CHART_KUBERNETES: dict[str, tuple[str, tuple[int, int], tuple[int, int] | None]] = {
    # eks-charts aws-load-balancer-controller README: "Chart version v1.5.0+ requires Kubernetes 1.22+".
    "aws-load-balancer-controller": ("1.8.1", (1, 22), None),
}


def parse_version(text: str) -> tuple[int, int]:
    """``"1.36"`` → ``(1, 36)``; ValueError on anything else."""
    major, minor = text.split(".")
    return int(major), int(minor)


def _show(versions: list[str]) -> str:
    return f"{versions[0]}–{versions[-1]}" if len(versions) > 2 else ", ".join(versions)


def eks_offered(on: date = CALENDAR_AS_OF) -> list[str]:
    """Versions EKS creates clusters with on ``on`` (standard or extended support), oldest first."""
    return sorted((v for v, (released, _, extended) in EKS_CALENDAR.items() if released <= on < extended), key=parse_version)


def eks_standard(on: date = CALENDAR_AS_OF) -> list[str]:
    """Versions in EKS standard support on ``on``, oldest first."""
    return sorted((v for v, (released, standard, _) in EKS_CALENDAR.items() if released <= on < standard), key=parse_version)


def eks_refusal(version: str, on: date = CALENDAR_AS_OF) -> str | None:
    """Why EKS would not create a cluster of ``version`` on ``on``, or None when it would (or may: newer than the calendar)."""
    oldest = eks_offered(on)[0]
    if parse_version(version) >= parse_version(oldest):
        return None
    ended = EKS_CALENDAR[version][2].isoformat() if version in EKS_CALENDAR else "before the calendar"
    return (f"is no longer offered by EKS (extended support ended {ended}); new clusters: {_show(eks_offered(on))}, "
            f"standard support {_show(eks_standard(on))} (EKS calendar as of {on.isoformat()}, "
            f"components/kubernetes_versions.py)")
