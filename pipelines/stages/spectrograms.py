"""The spectrogram stage: one task per range of clips reads their audio, computes their
spectrograms, scores them with every RIBBIT species while they are in memory, and writes them to
``spectrograms.zarr`` (compact, full, or not at all: ``spectrogram.store``).

A task covers ``spectrogram.task_audio_s`` seconds of audio (whole Zarr chunks of
``clips_per_chunk`` clips), so per-task overhead is small next to the work, and no two tasks write
the same chunk. RIBBIT reads the values as computed, whatever precision the store keeps.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from opso_core.ribbit import RibbitParams
from opso_core.spectrogram import SpectrogramParams
from pipelines.config import RunConfig
from pipelines.driver.clip_plan import ClipRange
from pipelines.driver.tasks import Stage, task_ranges
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.spectrogram_store import (
    STORE_NAME,
    StoreEncoding,
    clip_spectrograms,
    create_store,
    write_clip_coords,
    write_values,
)
from pipelines.stages.ribbit_scores import score_clips

__all__ = ["SpectrogramTask", "spectrogram_stage"]


@dataclasses.dataclass(frozen=True)
class SpectrogramTask:
    """What one spectrogram task does (picklable; see the module docstring)."""

    params: SpectrogramParams
    sample_rate_hz: int
    clip_duration_s: float
    input_storage_options: dict
    encoding: StoreEncoding | None
    species: tuple[RibbitParams, ...] = ()
    thresholds: tuple[tuple[str, float], ...] = ()
    clips_per_chunk: int = 64
    store_name: str = STORE_NAME

    def __call__(self, clip_range: ClipRange, clips: pd.DataFrame, location: OutputLocation) -> dict:
        spec = clip_spectrograms(clips, params=self.params, sample_rate_hz=self.sample_rate_hz,
                                 clip_duration_s=self.clip_duration_s, storage_options=self.input_storage_options)
        detections = {}
        if self.species:
            detections = score_clips(clip_range, clips, spec.values, spec.ok, spec.frequencies,
                                     self.params.step_samples / self.sample_rate_hz, location=location,
                                     species=list(self.species), thresholds=dict(self.thresholds))
        if self.encoding is not None:
            write_values(location, clip_range, spec.values, encoding=self.encoding,
                         clips_per_chunk=self.clips_per_chunk, store_name=self.store_name)
            write_clip_coords(location, clip_range, clips, clips_per_chunk=self.clips_per_chunk,
                              store_name=self.store_name)
        return {"n_ok": int(spec.ok.sum()), "n_clips": len(clip_range), "failures": [list(f) for f in spec.failures],
                "detections": detections}


def spectrogram_stage(config: RunConfig, plan: pd.DataFrame, *, params: SpectrogramParams, sample_rate_hz: int,
                      location: OutputLocation) -> Stage:
    """The run's spectrogram stage; creates ``spectrograms.zarr``'s metadata when the run keeps one."""
    sc, clips_cfg = config.spectrogram, config.clips
    encoding = None
    if sc.store != "none":
        encoding = StoreEncoding(sc.store, sc.compact_step_db, tuple(sc.decibel_limits))
        if not location.exists(f"{STORE_NAME}/.zmetadata"):
            create_store(location, plan, params=params, sample_rate_hz=sample_rate_hz,
                         clip_duration_s=clips_cfg.duration, clips_per_chunk=sc.clips_per_chunk, encoding=encoding)
    species = tuple(RibbitParams(name=s.name, signal_band=s.signal_band, pulse_rate_range=s.pulse_rate_range,
                                 noise_bands=tuple(s.noise_bands), nfft=s.nfft) for s in config.ribbit)
    task = SpectrogramTask(params=params, sample_rate_hz=sample_rate_hz, clip_duration_s=clips_cfg.duration,
                           input_storage_options=dict(config.input.storage_options), encoding=encoding,
                           species=species, thresholds=tuple((s.name, s.threshold) for s in config.ribbit),
                           clips_per_chunk=sc.clips_per_chunk)
    step_s = clips_cfg.duration - clips_cfg.overlap
    ranges = task_ranges(len(plan), max(1, round(sc.task_audio_s / step_s)), align=sc.clips_per_chunk)
    return Stage("spectrograms", plan, ranges, task, counts_clips=True)
