"""Paths the tests share: the repository root, the bundled real data, the fixtures, and the
scripted run config (instant in-process backends) that most flow tests start from."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sources"
FIXTURES = ROOT / "tests" / "fixtures"
SCRIPTED_CONFIG = str(FIXTURES / "configs" / "scripted.yaml")
