"""``opso demo``: generate a small synthetic archive and analyse it end to end on this machine."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class DemoResult:
    """Where the demo wrote its outputs and what it found."""

    out_dir: Path
    archive_dir: Path
    n_files: int
    audio_hours: float
    n_clips: int
    spectrogram_png: Path
    clip_table_csv: Path
    wall_s: float


def run_demo(out_dir, *, n_recorders=3, files_per_recorder=2, file_duration_s=60.0, sample_rate_hz=22050,
             clip_duration_s=2.0, seed=0) -> DemoResult:
    """Generate an AudioMoth-style archive under ``out_dir/archive`` and compute clip spectrograms.

    Writes ``out_dir/spectrogram.png`` (the first recording) and ``out_dir/clips.csv`` (every clip
    of every file with its loudest frequency), and returns a :class:`DemoResult`.
    """
    from opso_core import Audio, Spectrogram
    from opso_core.spectrogram import SpectrogramParams, spectrograms_from_clips
    from opso_core.testing import make_archive
    from opso_core.utils import make_clip_df

    started = time.perf_counter()
    out_dir = Path(out_dir)
    archive_dir = out_dir / "archive"
    logger.info("generating a synthetic archive in %s", archive_dir)
    archive = make_archive(archive_dir, n_recorders=n_recorders, files_per_recorder=files_per_recorder,
                           file_duration_s=file_duration_s, sample_rate_hz=sample_rate_hz, seed=seed)

    first = Audio.from_file(archive.files.file.iloc[0])
    png = out_dir / "spectrogram.png"
    Spectrogram.from_audio(first.trim(0, 10)).to_image(shape=(256, 512), invert=True).save(png)
    logger.info("wrote %s", png)

    clip_df = make_clip_df(list(archive.files.file), clip_duration=clip_duration_s).reset_index()
    params = SpectrogramParams.resolve(sample_rate_hz)
    peak_hz = []
    for path, clips in clip_df.groupby("file", sort=False):
        audio = Audio.from_file(path)
        n = int(round(clip_duration_s * audio.sample_rate))
        starts = (clips.start_time.to_numpy() * audio.sample_rate).round().astype(int)
        batch = np.stack([audio.samples[s : s + n] for s in starts])
        values, freqs, _ = spectrograms_from_clips(batch, audio.sample_rate, params=params)
        peak_hz.extend(freqs[values.mean(axis=2).argmax(axis=1)])
    clip_df["loudest_frequency_hz"] = peak_hz
    csv = out_dir / "clips.csv"
    clip_df.to_csv(csv, index=False)
    logger.info("wrote %s", csv)
    audio_hours = float(archive.files.duration_s.sum()) / 3600
    return DemoResult(out_dir=out_dir, archive_dir=archive_dir, n_files=len(archive.files),
                      audio_hours=audio_hours, n_clips=len(clip_df), spectrogram_png=png,
                      clip_table_csv=csv, wall_s=time.perf_counter() - started)
