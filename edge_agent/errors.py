"""Edge agent errors: one tree, every class carries its fields, not only text.

::

    EdgeAgentError                     base of everything the edge agent raises on purpose
    ├── ConfigError                    bad sensors.conf: field path, bad value, what is allowed (and a ``fix``)
    ├── DeviceError                    a Modbus device could not be read (``device`` = its name)
    │   ├── DeviceUnreachable          refused / reset / closed connection: retried with backoff
    │   │   └── DeviceTimeout          no answer within the device's timeout: retried with backoff
    │   └── DeviceExceptionResponse    the device answered with a Modbus exception code: counted, not retried
    ├── DecodeError                    registers that cannot become a value (wrong count, NaN/inf float)
    ├── SpoolError                     the durable spool failed (disk full, I/O error)
    │   └── SpoolCorrupt               a record fails its checksum: quarantined, never dropped
    ├── PublishError                   MQTT delivery failed (not connected, no PUBACK in time)
    │   └── BrokerRefused              the broker refused the connection (bad certificate, not authorised)
    ├── AuditError                     the audit log cannot be written
    │   └── AuditCorrupt               a record fails its CRC: ``index`` and ``offset`` of the first bad one
    ├── TwinError                      the digital-twin cache cannot be read or written
    └── CommandStateError              the command handler's state file cannot be opened

Adapters end with ``raise <ours>(...) from exc`` so third-party exceptions
(pymodbus, paho, OSError) never cross a module boundary. The CLI prints
``str(error)`` as one line and exits with code 2 for ``ConfigError``.
"""

from __future__ import annotations

from ems_contract.config_file import fix_suffix, message_parts

__all__ = [
    "EdgeAgentError", "ConfigError",
    "DeviceError", "DeviceUnreachable", "DeviceTimeout", "DeviceExceptionResponse", "MODBUS_EXCEPTION_NAMES",
    "DecodeError", "SpoolError", "SpoolCorrupt", "PublishError", "BrokerRefused",
    "AuditError", "AuditCorrupt", "TwinError", "CommandStateError",
]

#: Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
MODBUS_EXCEPTION_NAMES: dict[int, str] = {
    1: "IllegalFunction",
    2: "IllegalDataAddress",
    3: "IllegalDataValue",
    4: "ServerDeviceFailure",
    5: "Acknowledge",
    6: "ServerDeviceBusy",
    8: "MemoryParityError",
    10: "GatewayPathUnavailable",
    11: "GatewayTargetDeviceFailedToRespond",
}


class EdgeAgentError(Exception):
    """Base class of the edge agent's errors."""


class ConfigError(EdgeAgentError):
    """Bad agent configuration.

    ``path`` is the field path in the config (``devices[0].points[2].address``,
    or the file path for file-level problems), ``value`` the offending value,
    ``reason`` what is allowed. ``str()`` is ``<path>: <value!r> <reason>``,
    one line whatever the file held: the value's repr is shortened (a 10 MB
    string is quoted by its first 60 characters and its length) and the path
    and reason are clipped (``ems_contract.config_file.message_parts``). ``fix``,
    when given, is a shell command that repairs the problem (its paths
    ``shlex``-quoted by the caller); it follows as ``; run: <fix>``, whole: never
    clipped or escaped, since a cut command could act on another file. A fix that
    is not one printable line (a file name with a line break) or is longer than
    ``FIX_CHARS`` is withheld with a note instead (``fix_suffix``).
    """

    def __init__(self, path: str, value: object, reason: str, fix: str | None = None) -> None:
        shown_path, shown_value, shown_reason = message_parts(path, value, reason)
        super().__init__(f"{shown_path}: {shown_value} {shown_reason}{fix_suffix(fix)}")
        self.path = path
        self.value = value
        self.reason = reason
        self.fix = fix

    def __reduce__(self):  # keep the fields across pickling (multiprocessing, executors)
        return (type(self), (self.path, self.value, self.reason, self.fix))


class DeviceError(EdgeAgentError):
    """A Modbus device could not be read. ``device`` is the configured device name."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"device {device!r}: {message}")
        self.device = device
        self.detail = message

    def __reduce__(self):
        return (type(self), (self.device, self.detail))


class DeviceUnreachable(DeviceError):
    """Connection refused, reset or closed; the poller retries with backoff and reconnects."""


class DeviceTimeout(DeviceUnreachable):
    """No (complete) answer within the device's ``timeout_s``; retried like an unreachable device."""


class DeviceExceptionResponse(DeviceError):
    """The device answered with a Modbus exception code (a valid reply, not a transport failure).

    ``address`` is the first register/bit of the failed request, ``code`` the
    Modbus exception code (2 = IllegalDataAddress, ...), ``doing`` ``reading`` or ``writing``. Counted per device and
    point; not retried within the poll.
    """

    def __init__(self, device: str, address: int, code: int, doing: str = "reading") -> None:
        self.address = address
        self.code = code
        self.doing = doing
        self.code_name = MODBUS_EXCEPTION_NAMES.get(code, f"code{code}")
        super().__init__(device, f"Modbus exception {code} ({self.code_name}) {doing} address {address}")

    def __reduce__(self):
        return (type(self), (self.device, self.address, self.code, self.doing))


class DecodeError(EdgeAgentError):
    """Registers that cannot be decoded into a value (wrong count, NaN or infinite float)."""

    def __init__(self, point: str, reason: str) -> None:
        super().__init__(f"point {point!r}: {reason}")
        self.point = point
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.point, self.reason))


class SpoolError(EdgeAgentError):
    """The durable spool failed (I/O error, disk full)."""


class SpoolCorrupt(SpoolError):
    """A spool record fails its checksum; it is quarantined, never dropped."""


class PublishError(EdgeAgentError):
    """MQTT delivery failed (not connected, no PUBACK in time)."""


class BrokerRefused(PublishError):
    """The broker refused the connection (certificate rejected, not authorised, bad protocol)."""


class AuditError(EdgeAgentError):
    """The audit log cannot be written or read."""


class AuditCorrupt(AuditError):
    """An audit record fails its CRC. ``index`` (0-based record number) and ``offset`` (byte) of the first bad one."""

    def __init__(self, index: int, offset: int, reason: str) -> None:
        super().__init__(f"audit record {index} at byte {offset}: {reason}")
        self.index = index
        self.offset = offset
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.index, self.offset, self.reason))


class TwinError(EdgeAgentError):
    """The digital-twin cache cannot be read or written."""


class CommandStateError(EdgeAgentError):
    """The command handler's state file (``[commands] state_path``) cannot be opened."""
