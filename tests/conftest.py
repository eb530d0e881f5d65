"""Shared fixtures: OpenSoundscape's real test recordings (through OPSO_TEST_DATA) and synthetic audio."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def opso_test_data() -> Path:
    """Folder of OpenSoundscape's test resources; the test is skipped when OPSO_TEST_DATA is unset."""
    value = os.environ.get("OPSO_TEST_DATA")
    if not value:
        pytest.skip("OPSO_TEST_DATA is not set (folder of OpenSoundscape's test recordings)")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"OPSO_TEST_DATA={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def test_audio_dir(opso_test_data) -> Path:
    return opso_test_data / "tests" / "audio"
