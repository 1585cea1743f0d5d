"""Paths of the fixture projects and packs used by the emsctl tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MINI = FIXTURES / "mini"
REFS = FIXTURES / "refs"
VIOLATIONS = FIXTURES / "violations"
TINY_GUARD = FIXTURES / "packs" / "tiny-guard"
BROKEN_PACK = FIXTURES / "packs" / "broken-pack"
EMS_GUARD = REPO / "policies" / "ems-guard"

