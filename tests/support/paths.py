"""Where the repository, its test fixtures, the shared data and the test PostgreSQL are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("ECG_SHARED_DATA", REPO.parent / "shared" / "data"))
TEST_DATA = REPO / "tests" / "data"
PG_ADMIN_URL = os.environ.get("ECG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data; the test is skipped if the folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path
