"""North-bound client errors: one tree, every class carries its fields, not only text.

::

    NorthboundError                 base of everything ems-northbound raises on purpose
    ├── ConfigError                 bad config: field path, bad value, what is allowed
    ├── Sep2Error                   a 2030.5 document we refuse: too large, too deep, a DTD, not
    │                               well-formed, wrong root element, a missing or out-of-range field
    ├── TransportError              the server could not be reached: refused, timeout, TLS failure
    │   └── ServerStatusError       the server answered with an HTTP status we cannot use (``status``)
    ├── RegistrationError           the server neither lists nor accepts our EndDevice, or its PIN differs
    └── BrokerError                 a command could not be handed to the platform's MQTT broker (``kind``:
                                    unreachable, refused, timeout), or no site was listening for it
                                    (``no_subscribers``: PUBACK reason 16, nothing was delivered)

``identity.IdentityError`` (a ``ValueError``) stays beside the pure identity functions.
Adapters end with ``raise <ours>(...) from exc``: httpx, lxml and pydantic exceptions
never leave ``transport`` and ``sep2``.
"""

from __future__ import annotations

from ems_contract.config_file import message_parts

__all__ = ["NorthboundError", "ConfigError", "Sep2Error", "TransportError", "ServerStatusError", "RegistrationError",
           "BrokerError"]


class NorthboundError(Exception):
    """Base of the north-bound client's own errors."""


class ConfigError(NorthboundError):
    """A config value that is not allowed; the message is one line naming field and value (shortened)."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        # Bounded like the edge's and the ingest's: a 10 MB value is quoted by its first 60 characters.
        shown_field, shown_value, shown_reason = message_parts(field, value, reason)
        super().__init__(f"{shown_field} {shown_reason} (got {shown_value})")
        self.field = field
        self.value = value
        self.reason = reason


class Sep2Error(NorthboundError):
    """A 2030.5 document refused at the boundary; ``reason`` is a short code, ``detail`` says where."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransportError(NorthboundError):
    """The request did not complete: ``url`` and what went wrong (never a body, never a key)."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.detail = detail


class ServerStatusError(TransportError):
    """The server answered ``status`` where we needed a success."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(url, f"HTTP {status}")
        self.status = status


class RegistrationError(NorthboundError):
    """A site's EndDevice could not be found or created, or its Registration PIN does not match."""

    def __init__(self, site: str, detail: str) -> None:
        super().__init__(f"site {site}: {detail}")
        self.site = site
        self.detail = detail


class BrokerError(NorthboundError):
    """A command did not reach a site: ``kind`` is unreachable, refused, timeout or no_subscribers."""

    KINDS = ("unreachable", "refused", "timeout", "no_subscribers")

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"broker {kind}: {detail}")
        self.kind = kind
        self.detail = detail
