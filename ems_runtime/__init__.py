"""Plumbing every EMS process shares (the edge agent, the ingest, the north-bound client).

``status_http``: the metrics-and-health HTTP endpoint. Runtime dependencies only
(prometheus-client), never pulumi.
"""
