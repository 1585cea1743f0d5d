"""The TLS client context every EMS process uses toward the platform's MQTT broker.

``broker_client_context(ca, cert, key, error)`` verifies the broker (its name
included) against ``ca`` and presents ``cert`` with ``key``. A file that does not
load becomes the caller's config error, built by ``error(field, value, reason)``
(each package has its own ``ConfigError`` with that signature; the value is the
file's ``Path``, which their messages quote up to 256 characters) and naming the
file: ``broker.ca`` for the CA, ``broker.cert`` (with the key's path in the
reason) for the pair. The edge agent, the ingest and the north-bound client call
it at start and again on every certificate rotation.

``error_reason(exc)``: a short readable cause of a TLS or socket error, for such
messages and log lines.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ems_runtime import ErrorFactory

__all__ = ["broker_client_context", "error_reason"]


def broker_client_context(ca: Path, cert: Path, key: Path, error: ErrorFactory) -> ssl.SSLContext:
    """A client context verifying the broker and presenting our certificate; ``error(...)`` raised naming the file."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise error("broker.ca", Path(ca), f"is not a readable PEM CA certificate ({error_reason(exc)})") from exc
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise error("broker.cert", Path(cert), f"and broker.key {str(key)!r} are not a readable, matching PEM "
                                              f"certificate and key ({error_reason(exc)})") from exc
    return context


def error_reason(exc: BaseException) -> str:
    """``certificate verify failed``, ``No such file or directory``...: the cause without errno or C file names."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
