"""The contract between the edge and the cloud: topics and payloads (``ems_contract.telemetry``).

Imported by the edge agent (to build messages), by the ingest and the twin API (to
validate them) and by the Pulumi program (for topic filters in the broker's roles), so
none of those depends on another's runtime. Standard library only.

``ems_contract.config_file`` is the other shared rule book: what an operator's
config file may be (a regular file of at most 1 MiB of UTF-8 TOML, nested at
most 32 deep, 64-bit integers) and how a bad value is quoted in an error, for
the edge agent's ``sensors.conf``, the ingest's ``ingest.toml`` and the
north-bound client's config alike; ``ems_contract.config_reader.Section`` is the
typed reader of such a document that the ingest and the north-bound client share.

``ems_contract.roles`` (the API gateway's roles, their order and its user names) and
``ems_contract.oidc`` (the OIDC issuer whose tokens it accepts) are the access rules
the Pulumi program, the gateway's verifier and the north-bound operator route share.
"""
