"""The gateway's roles and user names (ems_contract.roles): one order, one character set, hostile text made safe."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from ems_contract.command import ISSUER_PATTERN
from ems_contract.roles import (
    AUTH_METHODS, DEFAULT_CERT_OU_ROLES, MAX_USER_CHARS, ROLES, USER_PATTERN, clean_user, highest_role, role_at_least,
    role_problem, valid_user,
)


def test_roles_are_ordered_viewer_operator_admin() -> None:
    assert ROLES == ("viewer", "operator", "admin") and AUTH_METHODS == ("mtls", "oidc")
    assert [role_at_least(r, "operator") for r in ROLES] == [False, True, True]
    assert all(role_at_least(r, "viewer") for r in ROLES)
    assert [role_at_least(r, "admin") for r in ROLES] == [False, False, True]
    assert highest_role(["viewer", "admin", "operator"]) == "admin" and highest_role([]) is None
    assert DEFAULT_CERT_OU_ROLES == (("viewer", "viewer"), ("operator", "operator"), ("admin", "admin"))


@pytest.mark.parametrize("value", ["Viewer", "root", "", " viewer", None, 1, ["admin"]])
def test_unknown_roles_are_named(value: object) -> None:
    assert role_problem(value) == "must be one of viewer, operator, admin"
    if isinstance(value, str):
        with pytest.raises(ValueError, match=f"role {value!r} must be one of viewer, operator, admin"):
            role_at_least(value, "viewer")
        with pytest.raises(ValueError, match=f"role {value!r} must be one of"):
            role_at_least("admin", value)


def test_a_command_issuer_is_a_gateway_user_name() -> None:
    assert ISSUER_PATTERN == USER_PATTERN
    assert valid_user("cert:scada-main") and valid_user("alice@utility.example") and valid_user("a" * MAX_USER_CHARS)
    for bad in ("", "a" * (MAX_USER_CHARS + 1), "alice\n", "al ice", "bob;drop", "é", None, 7):
        assert not valid_user(bad), bad


@given(st.text(max_size=400))
def test_any_text_cleans_to_a_valid_user_name(text: str) -> None:
    cleaned = clean_user(text)
    assert valid_user(cleaned)
    assert len(cleaned) <= MAX_USER_CHARS
    if valid_user(text):
        assert cleaned == text          # a good name passes unchanged


@given(st.lists(st.sampled_from(ROLES), max_size=6), st.sampled_from(ROLES))
def test_the_highest_role_may_do_what_every_listed_role_may(roles: list[str], needed: str) -> None:
    top = highest_role(roles)
    assert (top is None) == (not roles)
    if top is not None:
        assert top in roles and all(role_at_least(top, r) for r in roles)
        assert role_at_least(top, needed) == any(role_at_least(r, needed) for r in roles)
