"""Who may do what through the API gateway: its roles, how callers authenticate, and their user names.

One rule book for the three places that apply it: the Pulumi program (``components/gateway_settings.py``:
which roles ``ems:apiAuth`` may grant), the gateway's verifier (``ingest/gateway_auth.py``: the role a
caller has and the one a route needs) and the north-bound client's operator route
(``northbound/operator_api.py``: manual commands need ``operator``). A manual command's ``issuer``
(``ems_contract.command``) is such a user name. Standard library only.

===================  ==========================================================================
``ROLES``            ``viewer < operator < admin``: a role may do everything a lower one may
``AUTH_METHODS``     how the gateway verified a caller (``X-Ems-Auth``): ``mtls`` or ``oidc``
``USER_PATTERN``     a user name (``X-Ems-User``): 1..128 of ``A-Z a-z 0-9 @ . _ : + = / -``,
                     safe in an HTTP header, a log line and a command payload
===================  ==========================================================================
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["ROLES", "AUTH_METHODS", "DEFAULT_CERT_OU_ROLES", "MAX_USER_CHARS", "USER_PATTERN", "clean_user",
           "highest_role", "role_at_least", "role_problem", "valid_user"]

ROLES = ("viewer", "operator", "admin")
"""Roles, lowest first."""
AUTH_METHODS = ("mtls", "oidc")
"""``mtls``: a client certificate of the platform CA; ``oidc``: a bearer token of the configured issuer."""
DEFAULT_CERT_OU_ROLES = tuple((role, role) for role in ROLES)
"""(certificate subject OU, role) when none are configured: an OU named after a role grants it."""
MAX_USER_CHARS = 128
_USER_CHARACTERS = "A-Za-z0-9@._:+=/-"
USER_PATTERN = rf"^[{_USER_CHARACTERS}]{{1,{MAX_USER_CHARS}}}$"
"""A user name, whole (checked with ``fullmatch``: no trailing newline slips through ``$``)."""
_USER = re.compile(USER_PATTERN)
_NOT_USER = re.compile(rf"[^{_USER_CHARACTERS}]")
_RANK = {role: rank for rank, role in enumerate(ROLES)}


def role_problem(value: object) -> str | None:
    """None when ``value`` is one of ``ROLES``; else the reason a caller puts after the field and value."""
    return None if isinstance(value, str) and value in _RANK else f"must be one of {', '.join(ROLES)}"


def role_at_least(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may. Raises ValueError naming an unknown role."""
    for name in (role, needed):
        if role_problem(name) is not None:
            raise ValueError(f"role {name!r} {role_problem(name)}")
    return _RANK[role] >= _RANK[needed]


def highest_role(roles: Iterable[str]) -> str | None:
    """The highest of ``roles`` (all known roles), or None when there is none."""
    return max(roles, key=_RANK.__getitem__, default=None)


def valid_user(value: object) -> bool:
    """Whether ``value`` is a user name (``USER_PATTERN``)."""
    return isinstance(value, str) and _USER.fullmatch(value) is not None


def clean_user(text: str) -> str:
    """``text`` made a user name: every other character becomes ``_``, cut to ``MAX_USER_CHARS``; ``_`` when empty."""
    return _NOT_USER.sub("_", text)[:MAX_USER_CHARS] or "_"
