"""A throw-away OIDC issuer for the gateway tests and the demo: signing keys, a JWKS endpoint, tokens.

``OidcIssuer`` holds an RSA (RS256) and an EC P-256 (ES256) signing key, serves their public
halves as a JWKS at ``jwks_url`` (plain HTTP on 127.0.0.1, in a thread; ``fetches`` counts the
requests), and signs tokens with :meth:`token`, whose keyword arguments override any claim or
header (an expired ``exp``, another ``aud``, a ``kid`` nobody published). :meth:`rotate` replaces
the keys as an identity provider's key rotation does. Production tokens come from the utility's
identity provider (``docs/gateway-auth.md``).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["OidcIssuer"]


class OidcIssuer:
    """Use as a context manager (starts and stops the JWKS server)."""

    def __init__(self, issuer: str = "https://idp.test/realms/ems", audience: str = "ems-gateway") -> None:
        self.issuer, self.audience = issuer, audience
        self.fetches = 0
        self._generation = 0
        self.rotate()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                outer.fetches += 1
                body = json.dumps(outer.jwks()).encode()
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-issuer", daemon=True)

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks"

    def rotate(self) -> None:
        """New RSA and EC keys with new ``kid``s; the old ones are no longer published."""
        self._generation += 1
        self.keys = {f"rsa-{self._generation}": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                     f"ec-{self._generation}": ("ES256", ec.generate_private_key(ec.SECP256R1()))}

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, (alg, private) in self.keys.items():
            algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
            jwk = json.loads(algo.to_jwk(private.public_key()))
            keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": keys}

    def kid(self, alg: str = "RS256") -> str:
        return next(k for k, (a, _) in self.keys.items() if a == alg)

    def token(self, sub: str = "alice", groups: Any = ("ems-viewers",), *, alg: str = "RS256",
              lifetime_s: int = 300, headers: dict[str, Any] | None = None, signing_key: Any = None,
              **claims: Any) -> str:
        """A signed JWT for ``sub`` in ``groups`` (a sequence becomes a list; a str or dict is sent as it is);
        ``claims`` override or add (``None`` removes a claim)."""
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": sub,
                                "groups": groups if isinstance(groups, (str, dict)) else list(groups),
                                "iat": now, "nbf": now - 5, "exp": now + lifetime_s}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        kid = self.kid(alg)
        key = signing_key if signing_key is not None else self.keys[kid][1]
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(headers or {})})

    def start(self) -> "OidcIssuer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "OidcIssuer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
