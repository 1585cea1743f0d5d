"""Plumbing every EMS process shares (the edge agent, the ingest, the north-bound client).

``status_http``: the metrics-and-health HTTP endpoint; ``http_server``: an HTTPS
listener's connection cap and request deadline; ``tls``: the broker client
context; ``server_tls``: an HTTPS listener's certificate, client-certificate rule and
rotation; ``log_setup``: the command lines' logging; ``file_watch``: certificate
rotation checks and their poll loop; ``cert_expiry``, ``sqlite``, ``version``. Runtime dependencies
only (prometheus-client), never pulumi.

``ErrorFactory`` (defined in ``ems_contract.config_reader``, whose typed reader uses it too)
is how a shared helper raises the calling package's own error: each package's
``ConfigError(field, value, reason)`` fits it.
"""

from ems_contract.config_reader import ErrorFactory

__all__ = ["ErrorFactory"]
