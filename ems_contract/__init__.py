"""The contract between the edge and the cloud: topics and payloads (``ems_contract.telemetry``).

Imported by the edge agent (to build messages), by the ingest and the twin API (to
validate them) and by the Pulumi program (for topic filters in the broker's roles), so
none of those depends on another's runtime. Standard library only.
"""
