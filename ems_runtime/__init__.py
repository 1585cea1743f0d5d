"""Plumbing every EMS process shares (the edge agent, the ingest, the north-bound client).

``status_http``: the metrics-and-health HTTP endpoint; ``tls``: the broker client
context; ``file_watch``: certificate rotation checks; ``cert_expiry``, ``sqlite``,
``version``. Runtime dependencies only (prometheus-client), never pulumi.
"""
