"""Fixtures for emsctl tests: fixture projects under tests/fixtures, evaluated once per session.

``emsctl.capture.evaluate_stack`` memoises per process, so every test that asks for the same
(project, stack) shares one evaluation; these fixtures only name them.
"""

from __future__ import annotations

import pytest

from emsctl.capture import Capture, evaluate_stack

from emsctl_paths import MINI, REFS


@pytest.fixture(scope="session")
def mini_dev() -> Capture:
    return evaluate_stack(MINI, "dev")


@pytest.fixture(scope="session")
def refs_global() -> Capture:
    return evaluate_stack(REFS, "global")
