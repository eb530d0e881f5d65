"""Fixtures shared by the end-to-end tests: one synthetic archive for the session."""

import pytest

from opso_core.testing import make_archive, noise, write_bad_files

SR = 16000


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    arch = make_archive(root, n_recorders=3, files_per_recorder=2, file_duration_s=30, sample_rate_hz=SR,
                        frog_calls_per_file=2, seed=0)
    write_bad_files(root / "broken")
    # a recorder at another sample rate: its clips are resampled to SR
    noise(20, 22050, dBFS=-45, seed=5).save(root / "rec22k" / "20240501_060000.WAV")
    return arch


