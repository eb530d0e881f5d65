"""``opso demo``: a synthetic archive and a configuration that analyses it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import yaml

from pipelines.config import RunConfig, load_config

logger = logging.getLogger(__name__)

DEMO_SPECIES = [
    # the archive's frogs pulse at 12 Hz on a 2 kHz carrier
    {"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
     "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02},
    # nothing in the archive pulses this fast: a species that should stay (almost) silent
    {"name": "fast_pulser", "signal_band": [1800, 2200], "pulse_rate_range": [18, 22],
     "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02},
]


def prepare_demo(out_dir, *, seed: int = 0, n_recorders: int = 3, files_per_recorder: int = 3,
                 file_duration_s: float = 60.0, sample_rate_hz: int = 16000) -> RunConfig:
    """Generate ``out_dir/archive`` (AudioMoth-style WAVs, pulsed frog calls, a few bad files) and
    write ``out_dir/config.yaml``; returns the configuration (outputs in ``out_dir/results``)."""
    from opso_core.testing import make_archive, write_bad_files

    out_dir = Path(out_dir).resolve()
    archive_dir = out_dir / "archive"
    if archive_dir.exists():
        shutil.rmtree(archive_dir)
    make_archive(archive_dir, n_recorders=n_recorders, files_per_recorder=files_per_recorder,
                 file_duration_s=file_duration_s, sample_rate_hz=sample_rate_hz, seed=seed)
    write_bad_files(archive_dir / "rec_broken")
    config = {
        "input": {"url": str(archive_dir), "pattern": "**/*.[wW][aA][vV]"},
        "output": {"url": str(out_dir / "results")},
        "clips": {"duration": 2.0, "overlap": 0.0},
        "spectrogram": {"sample_rate": sample_rate_hz, "window_samples": 512, "overlap_fraction": 0.5,
                        "clips_per_chunk": 32},
        "ribbit": DEMO_SPECIES,
        "cluster": {"kind": "local", "threads_per_worker": 1},
    }
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(out_dir / "config.yaml")
