"""The server side of the platform's in-cluster TLS: one listener's certificate, client check and rotation.

``ServerTls(cert, key, client_ca=None, client_cns=(), require_client=False, logger=None)`` serves TLS 1.2+ with
``cert``/``key``. With ``client_ca`` the handshake asks for a client certificate, which must verify
against it (a bundle during a CA rotation); ``require_client`` makes the handshake refuse a caller
without one (a listener no probe reaches), otherwise it is optional and ``refusal(peer)`` says why
the request must be answered 403 (no certificate, or, with ``client_cns``, a CN not listed).

``install(server)`` wraps an ``http.server`` server's listening socket without handshaking on
accept; the request handler calls ``handshake(request, timeout)`` in its ``setup``, so a slow
handshake holds the request's own thread, not the accept loop. The listening socket's SNI callback
(called for every ClientHello, with or without SNI) hands each new connection the context loaded
last, so ``check()`` (every few seconds from ``watch``) rotates the certificate, key and client CA
without a restart: files that changed and load as a matching pair take over for new connections; a
pair that does not load is logged once and the loaded one stays. The twin API and the north-bound
command listener use it.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from pathlib import Path
from typing import Any, Collection

from ems_runtime.file_watch import FileSetWatch
from ems_runtime.tls import error_reason

__all__ = ["ServerTls", "handshake"]

log = logging.getLogger(__name__)


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
        self._watch = FileSetWatch((self.cert, self.key) + ((self.client_ca,) if self.client_ca else ()))
        self._context = self._watch.load(self.context)      # a bad pair at start is the caller's error

    def context(self) -> ssl.SSLContext:
        """A server context with the files on disk now; raises OSError or ssl.SSLError on a bad pair or CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        if self.client_ca is not None:
            context.load_verify_locations(str(self.client_ca))
            context.verify_mode = ssl.CERT_REQUIRED if self.require_client else ssl.CERT_OPTIONAL
        return context

    def install(self, server: socketserver.TCPServer) -> None:
        """Wrap ``server``'s listening socket; every handshake (see :func:`handshake`) gets the current context."""
        listening = self.context()
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
        try:
            context = self._watch.poll(self.context)
        except (OSError, ssl.SSLError) as exc:
            self.log.warning("server certificate %s and key %s changed but cannot be used (not a readable, matching "
                        "PEM pair: %s); keeping the loaded certificate", self.cert, self.key, error_reason(exc))
            return False
        if context is None:
            return False
        self._context = context
        self.certificate_switches += 1
        self.log.info("server certificate %s and key %s changed; new connections use them", self.cert, self.key)
        return True

    def watch(self, stop: threading.Event, every_s: float) -> None:
        """``check()`` every ``every_s`` until ``stop`` is set (a thread's target); survives any one bad check."""
        while not stop.wait(every_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad check
                self.log.exception("server certificate check failed")


def handshake(request: socket.socket, timeout: float) -> None:
    """The TLS handshake of an accepted connection, bounded by ``timeout`` per socket operation (handler ``setup``)."""
    request.settimeout(timeout)
    request.do_handshake()  # type: ignore[attr-defined]
