"""Ingest errors.

* IngestError
  * ConfigError        bad ingest config: names the field path, the value and what is allowed
  * TsdbError          the time-series database did not take a write
    * TsdbUnavailable  connection refused, timeout, 5xx: retried with backoff, messages stay unacked
    * TsdbRejected     4xx (and Prometheus' "too old sample"): permanent, those samples are dead-lettered
  * BrokerError        the MQTT broker could not be reached or refused us
"""

from __future__ import annotations

from ems_contract.config_file import message_parts

__all__ = ["IngestError", "ConfigError", "TsdbError", "TsdbUnavailable", "TsdbRejected", "BrokerError"]


class IngestError(Exception):
    """Base class of every error the ingest raises on purpose."""


class ConfigError(IngestError):
    """A config value is missing or invalid; ``field`` is its dotted path (``broker.port``).

    ``str()`` is ``<field>: <reason> (got <value!r>)`` on one line whatever the
    value: its repr is shortened (a 10 MB string is quoted by its first 60
    characters and its length) and field and reason are clipped.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        shown_field, shown_value, shown_reason = message_parts(field, value, reason)
        super().__init__(f"{shown_field}: {shown_reason} (got {shown_value})")
        self.field = field
        self.value = value
        self.reason = reason


class TsdbError(IngestError):
    """A remote write did not succeed."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(f"remote write failed: {detail}" + (f" (HTTP {status})" if status else ""))
        self.detail = detail
        self.status = status


class TsdbUnavailable(TsdbError):
    """Transient: the same request may succeed later."""


class TsdbRejected(TsdbError):
    """Permanent: the TSDB refused the samples (out of bounds, too old, duplicate timestamp...)."""


class BrokerError(IngestError):
    """The MQTT broker could not be reached, refused the connection or a publish."""
