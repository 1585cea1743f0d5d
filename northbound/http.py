"""The client's status endpoint (``ems_runtime.status_http``): ``/metrics`` and ``/healthz``;
a port that cannot be bound is a ConfigError naming ``http.port``."""

from __future__ import annotations

from ems_runtime.status_http import StatusEndpoint as _Endpoint

from northbound.errors import ConfigError

__all__ = ["StatusEndpoint"]


class StatusEndpoint(_Endpoint):
    def start(self) -> None:
        try:
            super().start()
        except OSError as exc:
            raise ConfigError("http.port", self.requested_port,
                              f"cannot be bound on {self.host} ({exc.strerror or exc})") from exc
