"""The server side of the platform's in-cluster TLS: one listener's certificate, client check and rotation.

``ServerTls(cert, key, client_ca=None, client_cns=(), require_client=False, logger=None)`` serves TLS 1.2+ with
``cert``/``key``. With ``client_ca`` the handshake asks for a client certificate, which must verify
against it (a bundle during a CA rotation); ``require_client`` makes the handshake refuse a caller
without one (a listener no probe reaches), otherwise it is optional and ``refusal(peer)`` says why
the request must be answered 403 (no certificate, or, with ``client_cns``, a CN not listed).

``install(server)`` wraps an ``http.server`` server's listening socket without handshaking on
accept; the request handler calls ``handshake(request, timeout)`` in its ``setup``, so a slow
handshake holds the request's own thread, not the accept loop, and for ``timeout`` at most. The listening socket's SNI callback
(called for every ClientHello, with or without SNI) hands each new connection the context loaded
last, so ``check()`` (every few seconds from ``watch``) rotates the certificate, key and client CA
without a restart: files that changed and load as a matching pair take over for new connections; a
pair that does not load is logged once and the loaded one stays (``file_watch.CertificateWatch``).
The files are loaded once at construction; ``install`` serves that context. A file that does not
load raises :class:`TlsFileError`, which names it (``cert`` with the key, or ``client_ca``). The twin
API and the north-bound command listener use it.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from pathlib import Path
from typing import Any, Collection

from ems_runtime.file_watch import CertificateWatch
from ems_runtime.tls import error_reason

__all__ = ["ServerTls", "TlsFileError", "handshake"]

log = logging.getLogger(__name__)


class TlsFileError(OSError):
    """A listener's TLS file that does not load: ``field`` is ``cert`` (the certificate and key) or ``client_ca``.

    The message is the reason (``error_reason`` of the cause, which is chained).
    """

    def __init__(self, field: str, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.field, self.path, self.reason = field, path, reason


class ServerTls:
    """A listener's TLS: the current server context, the client-certificate rule and rotation (module docstring)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None, client_cns: Collection[str] = (),
                 require_client: bool = False, logger: logging.Logger | None = None) -> None:
        if client_cns and client_ca is None:
            raise ValueError("client_cns needs client_ca: the CA that signs those certificates")
        if require_client and client_ca is None:
            raise ValueError("require_client needs client_ca: the CA that signs the client certificates")
        self.cert, self.key = Path(cert), Path(key)
        self.client_ca = Path(client_ca) if client_ca is not None else None
        self.client_cns = frozenset(client_cns)
        self.require_client = require_client
        self.certificate_switches = 0
        self.log = logger or log
        self._rotation = CertificateWatch(self.cert, self.key, self.client_ca, self.context, errors=(OSError,),
                                          logger=self.log, what="server certificate")
        self._context = self._rotation.first()      # a bad pair at start is the caller's error (TlsFileError)

    def context(self) -> ssl.SSLContext:
        """A server context with the files on disk now; raises :class:`TlsFileError` naming the file that does not load."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise TlsFileError("cert", self.cert, error_reason(exc)) from exc
        if self.client_ca is not None:
            try:
                context.load_verify_locations(str(self.client_ca))
            except (OSError, ssl.SSLError) as exc:
                raise TlsFileError("client_ca", self.client_ca, error_reason(exc)) from exc
            context.verify_mode = ssl.CERT_REQUIRED if self.require_client else ssl.CERT_OPTIONAL
        return context

    def install(self, server: socketserver.TCPServer) -> None:
        """Wrap ``server``'s listening socket; every handshake (see :func:`handshake`) gets the current context.

        The listening socket uses the context loaded at construction (no second load); its SNI callback
        hands each new connection the one loaded last.
        """
        listening = self._context
        listening.sni_callback = self._choose_context
        server.socket = listening.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)

    def _choose_context(self, connection: ssl.SSLObject, server_name: str | None, listening: ssl.SSLContext) -> None:
        connection.context = self._context          # an attribute read: no lock needed

    def refusal(self, peer: dict[str, Any] | None) -> str | None:
        """Why a caller whose verified certificate is ``peer`` (None or empty: none) may not be served, or None."""
        if self.client_ca is None:
            return None
        if not peer:
            return "a client certificate is required (the API gateway's)"
        if self.client_cns:
            names = [value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"]
            if not names or names[-1] not in self.client_cns:
                return f"certificate CN {(names[-1] if names else '')[:64]!r} may not call this API"
        return None

    def check(self) -> bool:
        """Load the files on disk if they changed; True when new handshakes use them (a bad pair: logged, kept)."""
        context = self._rotation.check()
        if context is None:
            return False
        self._switch(context)
        return True

    def _switch(self, context: ssl.SSLContext) -> None:
        self._context = context
        self.certificate_switches += 1
        self.log.info("server certificate %s and key %s changed; new connections use them", self.cert, self.key)

    def watch(self, stop: threading.Event, every_s: float) -> None:
        """``check()`` every ``every_s`` until ``stop`` is set (a thread's target); survives any one bad check."""
        self._rotation.watch(stop, every_s, self._switch)


def handshake(request: socket.socket, timeout: float) -> None:
    """The TLS handshake of an accepted connection, done within ``timeout`` in all (handler ``setup``).

    CPython counts an SSL socket's timeout once for the whole handshake, not per read, so a client
    trickling its handshake cannot hold the thread longer. Raises ``TimeoutError`` past it, the TLS
    error of a refused handshake, or OSError; the socket keeps ``timeout`` per operation after.
    """
    request.settimeout(timeout)
    request.do_handshake()  # type: ignore[attr-defined]
