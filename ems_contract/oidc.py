"""The OpenID Connect issuer whose access tokens the API gateway accepts: one shape, deploy time to run time.

``components/gateway_settings.py`` parses ``ems:apiAuth.oidc`` into an :class:`OidcSettings`,
``components/twin_api.py`` writes it into the twin API's ``[twin_api.auth.oidc]`` table, and
``ingest/config.py`` reads that table back into the same class for the verifier
(``ingest/gateway_auth.py``). The stack config sets the identity fields; the verifier's timing
fields (``leeway_s``, ``jwks_*``) keep their defaults unless an ``ingest.toml`` written by hand sets
them. Each parser checks its own text rules first and names its own keys (``ems:apiAuth.oidc.claimRoles``,
``twin_api.auth.oidc.claim_roles``); the rules both share are :func:`algorithms_problem` and
``ems_contract.roles.role_problem``, and :class:`OidcSettings` itself refuses values that break them.
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ems_contract.roles import role_problem

__all__ = ["ALGORITHMS", "OidcSettings", "algorithms_problem"]

ALGORITHMS = ("RS256", "ES256")
"""Signature algorithms the verifier can accept; never ``none`` or HMAC."""


def algorithms_problem(value: object) -> str | None:
    """None when ``value`` is a non-empty list or tuple of ``ALGORITHMS``; else the reason for the caller's error."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(a, str) and a in ALGORITHMS for a in value):
        return None
    return f"must be a non-empty list of {', '.join(ALGORITHMS)}"


@dataclass(frozen=True)
class OidcSettings:
    """An OIDC issuer whose access tokens the gateway accepts.

    Raises ValueError (naming the field and value) when ``algorithms`` or ``claim_roles`` break the
    shared rules: the parsers check first, so this only stops a caller that built one by hand.
    """

    issuer: str
    """``iss`` the tokens must carry (the issuer URL)."""
    audience: str
    """``aud`` the tokens must name (the gateway's client id at the identity provider)."""
    jwks_url: str
    """Where the issuer publishes its signing keys (JWKS)."""
    claim_roles: tuple[tuple[str, str], ...]
    """(claim value, role), at least one: a token whose ``role_claim`` holds the value has the role; the highest wins."""
    role_claim: str = "groups"
    """Claim holding the user's groups or roles (a string or a list of strings). Defaults to ``groups``."""
    username_claim: str = "sub"
    """Claim naming the user in logs and upstream headers. Defaults to ``sub``."""
    algorithms: tuple[str, ...] = ALGORITHMS
    """Accepted signature algorithms, a subset of RS256/ES256. Defaults to both."""
    leeway_s: float = 30.0
    """Clock skew tolerated on ``exp``/``nbf``. Defaults to 30 s."""
    jwks_refresh_s: float = 300.0
    """How long fetched keys are used before the JWKS is fetched again. Defaults to 300 s."""
    jwks_min_refetch_s: float = 30.0
    """Least time between two fetches (an unknown ``kid`` refetches early). Defaults to 30 s."""
    jwks_timeout_s: float = 5.0
    """Timeout of one JWKS fetch. Defaults to 5 s."""
    jwks_ca: Path | None = None
    """CA bundle to verify the JWKS URL's server with. Defaults to the system's."""

    def __post_init__(self) -> None:
        if (problem := algorithms_problem(self.algorithms)) is not None:
            raise ValueError(f"algorithms: {self.algorithms!r} {problem}")
        if not self.claim_roles:
            raise ValueError("claim_roles: () must map at least one claim value to a role")
        for value, role in self.claim_roles:
            if (problem := role_problem(role)) is not None:
                raise ValueError(f"claim_roles.{value}: {role!r} {problem}")
