"""Certificate expiry as a metric: ``ems_<component>_certificate_expiry_timestamp_seconds{certificate}``.

A collector, not a gauge set once: it reads the certificate files at every
scrape, so a certificate renewed on disk (a Secret update, a renewed edge
certificate) shows its new expiry without a restart. A file that cannot be read
or parsed is left out of the scrape and logged once per distinct error; the
alert ``EmsCertificateExpiring`` (components/alerts.py) fires 30 days ahead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Mapping

from cryptography import x509
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CertificateExpiry", "not_after", "register_certificates"]

log = logging.getLogger(__name__)


def not_after(path: Path) -> float:
    """The certificate's notAfter as Unix seconds (the first certificate of a PEM file)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc.timestamp()


class CertificateExpiry(Collector):
    """Expiry of named certificate files, read at every scrape."""

    def __init__(self, component: str, certificates: Mapping[str, Path]) -> None:
        self.name = f"ems_{component}_certificate_expiry_timestamp_seconds"
        self.certificates = dict(certificates)
        self._reported: set[str] = set()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, "notAfter of a certificate this process loads (Unix seconds).",
                                   labels=["certificate"])
        for name, path in sorted(self.certificates.items()):
            try:
                family.add_metric([name], not_after(path))
            except (OSError, ValueError) as exc:
                problem = f"{name}: {exc}"
                if problem not in self._reported:
                    self._reported.add(problem)
                    log.warning("certificate %s (%s) has no readable expiry: %s", name, path, exc)
        yield family


def register_certificates(registry: CollectorRegistry, component: str, certificates: Mapping[str, Path | None]) -> None:
    """Register a ``CertificateExpiry`` for the certificates that are configured (None: not used)."""
    present = {name: Path(path) for name, path in certificates.items() if path is not None}
    if present:
        registry.register(CertificateExpiry(component, present))
