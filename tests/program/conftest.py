"""Whole-stack tests share the mocks and the stack evaluator of tests/components/infra_mocks.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "components"))
