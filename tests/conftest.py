"""Shared fixtures. Feature-specific fixtures live in tests/fixtures/ and are loaded here."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.onnx_model",
    "tests.fixtures.pulse",
]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data with the real ESC-50 clips; tests that need it skip without it."""
    if not (SHARED_DATA / "esc50-fold4-dev" / "meta" / "esc50.csv").exists():
        pytest.skip(f"real recordings not found at {SHARED_DATA} (see ../shared/README.md)")
    return SHARED_DATA
