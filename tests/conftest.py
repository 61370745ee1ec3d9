"""Shared test helpers: where the labelled data lives (never committed to this repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FINSENT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"labelled data not found at {SHARED_DATA} (set FINSENT_SHARED_DATA)")
    return SHARED_DATA
