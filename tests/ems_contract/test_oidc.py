"""The OIDC issuer settings (ems_contract.oidc): one shape for the stack config and the verifier, with its shared rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from ems_contract.oidc import ALGORITHMS, OidcSettings, algorithms_problem

IDP = ("https://idp.example/r", "ems", "https://idp.example/jwks")


def test_defaults_are_documented_values() -> None:
    s = OidcSettings(*IDP, (("ems-viewers", "viewer"),))
    assert (s.role_claim, s.username_claim, s.algorithms) == ("groups", "sub", ("RS256", "ES256"))
    assert (s.leeway_s, s.jwks_refresh_s, s.jwks_min_refetch_s, s.jwks_timeout_s, s.jwks_ca) == (30.0, 300.0, 30.0, 5.0, None)


@pytest.mark.parametrize(("fields", "message"), [
    ({"algorithms": ()}, "algorithms: () must be a non-empty list of RS256, ES256"),
    ({"algorithms": ("HS256",)}, "algorithms: ('HS256',) must be a non-empty list of RS256, ES256"),
    ({"algorithms": ("none",)}, "algorithms: ('none',) must be a non-empty list of RS256, ES256"),
    ({"claim_roles": ()}, "claim_roles: () must map at least one claim value to a role"),
    ({"claim_roles": (("ems-root", "root"),)}, "claim_roles.ems-root: 'root' must be one of viewer, operator, admin"),
])
def test_settings_that_break_the_shared_rules_are_refused(fields: dict, message: str) -> None:
    args = {"claim_roles": (("g", "viewer"),), "jwks_ca": Path("/etc/ca.crt"), **fields}
    with pytest.raises(ValueError) as info:
        OidcSettings(*IDP, **args)
    assert str(info.value) == message


@given(st.one_of(st.none(), st.integers(), st.text(max_size=10),
                 st.lists(st.one_of(st.sampled_from(ALGORITHMS), st.text(max_size=8), st.integers()), max_size=4)))
def test_algorithms_rule_accepts_exactly_non_empty_lists_of_known_algorithms(value: object) -> None:
    good = isinstance(value, list) and bool(value) and all(isinstance(a, str) and a in ALGORITHMS for a in value)
    assert (algorithms_problem(value) is None) == good
    if not good:
        assert algorithms_problem(value) == "must be a non-empty list of RS256, ES256"
