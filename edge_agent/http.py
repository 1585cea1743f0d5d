"""The agent's status endpoint (``ems_runtime.status_http``) on ``HttpConfig``'s host and port
(default 127.0.0.1:9108); a port that cannot be bound is a ConfigError naming ``http.port``."""

from __future__ import annotations

from ems_runtime.status_http import StatusEndpoint

from edge_agent.errors import ConfigError

__all__ = ["HttpEndpoint"]


class HttpEndpoint(StatusEndpoint):
    def start(self) -> None:
        try:
            super().start()
        except OSError as exc:
            raise ConfigError("http.port", self.requested_port,
                              f"cannot be bound on {self.host} ({exc.strerror or exc})") from exc
