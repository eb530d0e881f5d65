"""Spectrograms stage: clip spectrograms into a chunked Zarr store (an xarray Dataset).

Layout (``spectrograms.zarr``, Zarr format 2 with consolidated metadata)::

    spectrogram (clip, frequency, time) float32, dB; chunks (clips_per_chunk, all, all)
    coords: clip, frequency (Hz), time (s from the clip start), and per clip: file, recorder,
            start_time, end_time (s from the file start), start_time_utc
    attrs:  spectrogram parameters, sample_rate_hz, clip_duration_s, window_step_s

The driver writes the coordinates and the metadata once (:func:`create_store`); each task computes
one chunk-aligned :class:`~pipelines.clip_plan.ClipRange` and writes only its own chunk
(:func:`compute_chunk`). A clip's values equal ``Spectrogram.from_audio(clip_audio, **params)``
where ``clip_audio = Audio.from_file(file, offset=start_time, duration=clip_duration,
sample_rate=sample_rate_hz)``, padded with silence to the clip length if the file ends first.
Clips that cannot be read are NaN and reported as failures.

Memory: a task holds the audio of its own clips only (``clips_per_chunk`` x clip duration at the
native rate, plus one decoded segment per file it touches), never a whole recording: a 24 h file
is processed in pieces of ``clips_per_chunk`` clips.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd

from opso_core.audio import _mix_to_mono, _read_frames, _sample_index, resample_samples
from opso_core.audio_info import audio_file_info
from opso_core.spectrogram import SpectrogramParams, spectrograms_from_clips
from opso_core.stft import window_times
from pipelines.clip_plan import ClipRange
from pipelines.outputs import OutputLocation

__all__ = ["STORE_NAME", "ChunkResult", "clip_audio_batch", "compute_chunk", "create_store", "open_store"]

logger = logging.getLogger(__name__)
STORE_NAME = "spectrograms.zarr"


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkResult:
    """What one spectrogram task did: clips written and clips that failed (with reasons)."""

    clip_range: ClipRange
    n_ok: int
    failures: tuple[tuple[str, str, str], ...]  # (item, error_type, message)


def clip_audio_batch(clips: pd.DataFrame, *, sample_rate_hz: int, clip_duration_s: float,
                     storage_options=None):
    """Audio of each clip, as one array.

    Parameters
    ----------
    clips : pandas.DataFrame
        Rows of the clip plan (``file``, ``start_time``).
    sample_rate_hz : int
        Target rate; clips of files at other rates are resampled one clip at a time.
    clip_duration_s : float

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, list)
        ``samples`` (n_clips, clip_samples) float32, a boolean ``ok`` mask, and failures as
        ``(file, error_type, message)``.
    """
    n_out = int(round(clip_duration_s * sample_rate_hz))
    samples = np.zeros((len(clips), n_out), dtype=np.float32)
    ok = np.zeros(len(clips), dtype=bool)
    failures = []
    starts_s = clips["start_time"].to_numpy()
    for file, rows in clips.groupby("file", sort=False).indices.items():
        try:
            info = audio_file_info(file, storage_options=storage_options)
            native = info.sample_rate_hz
            n_native = int(round(clip_duration_s * native))
            first = np.array([_sample_index(t, native) for t in starts_s[rows]])
            seg_start = int(first.min())
            seg_stop = min(int(first.max()) + n_native, info.frames)
            # one read per file per chunk, reusing the header just read (Audio.from_file would read it again)
            segment = _mix_to_mono(_read_frames(file, seg_start, seg_stop - seg_start, np.float32, storage_options))
            for row, frame in zip(rows, first, strict=True):
                piece = segment[frame - seg_start : frame - seg_start + n_native]
                if native != sample_rate_hz:
                    piece = resample_samples(piece, native, sample_rate_hz)
                piece = piece[:n_out]
                samples[row, : len(piece)] = piece
                ok[row] = True
        except Exception as exc:  # one bad file must not lose the other files' clips
            logger.warning("could not read clips of %s: %s", file, exc)
            failures.append((str(file), type(exc).__name__, str(exc)))
    return samples, ok, failures


def open_store(location: OutputLocation, mode="r+", store_name: str = STORE_NAME):
    """The Zarr group of a spectrogram store under ``location``."""
    import zarr

    return zarr.open_group(location.url_of(store_name), mode=mode, zarr_format=2,
                           storage_options=location.storage_options or None)


def create_store(location: OutputLocation, plan: pd.DataFrame, *, params: SpectrogramParams, sample_rate_hz: int,
                 clip_duration_s: float, clips_per_chunk: int, store_name: str = STORE_NAME) -> None:
    """Write the store's metadata and per-clip coordinates; the values are written by the tasks."""
    import dask.array as da
    import xarray as xr

    n_samples = int(round(clip_duration_s * sample_rate_hz))
    n_freq, n_time = params.n_frequencies(), params.n_times(n_samples)
    n = len(plan)
    template = da.full((n, n_freq, n_time), np.nan, dtype=np.float32,
                       chunks=(clips_per_chunk, n_freq, n_time))
    utc = pd.to_datetime(plan["start_time_utc"], utc=True).dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    ds = xr.Dataset(
        {"spectrogram": (("clip", "frequency", "time"), template)},
        coords={
            "clip": plan["clip"].to_numpy(np.int64),
            "frequency": params.frequencies(sample_rate_hz),
            "time": window_times(params, n_samples, sample_rate_hz),
            "file": ("clip", plan["file"].to_numpy(dtype=object)),
            "recorder": ("clip", plan["recorder"].to_numpy(dtype=object)),
            "start_time": ("clip", plan["start_time"].to_numpy(np.float64)),
            "end_time": ("clip", plan["end_time"].to_numpy(np.float64)),
            "start_time_utc": ("clip", utc),
        },
        attrs={
            "spectrogram_params": json.dumps(params.as_dict()),
            "sample_rate_hz": int(sample_rate_hz),
            "clip_duration_s": float(clip_duration_s),
            "window_step_s": params.step_samples / sample_rate_hz,
            "units": "dB" if params.dB_scale else "power",
        },
    )
    ds["spectrogram"].attrs.update(long_name="spectrogram", units="dB")
    ds["frequency"].attrs["units"] = "Hz"
    ds["time"].attrs["units"] = "s (window centre, from the clip start)"
    encoding = {k: {"chunks": (clips_per_chunk,)} for k in ("file", "recorder", "start_time", "end_time",
                                                           "start_time_utc")}
    encoding["start_time_utc"].update(units="nanoseconds since 1970-01-01", dtype="int64")
    ds.to_zarr(location.url_of(store_name), mode="w", compute=False, zarr_format=2, consolidated=True,
               encoding=encoding, storage_options=location.storage_options or None)


def compute_chunk(clip_range: ClipRange, clips: pd.DataFrame, *, location: OutputLocation,
                  params: SpectrogramParams, sample_rate_hz: int, clip_duration_s: float,
                  store_name: str = STORE_NAME) -> ChunkResult:
    """Compute and write the spectrograms of one chunk-aligned range of clips.

    ``clips`` holds the plan rows of ``clip_range`` (in order). Returns a :class:`ChunkResult`.
    """
    samples, ok, file_failures = clip_audio_batch(clips, sample_rate_hz=sample_rate_hz,
                                                  clip_duration_s=clip_duration_s,
                                                  storage_options=location.storage_options)
    values, _, _ = spectrograms_from_clips(samples, sample_rate_hz, params=params, dtype=np.float32)
    values[~ok] = np.nan
    store = open_store(location, store_name=store_name)
    store["spectrogram"][clip_range.start : clip_range.stop] = values
    failures = []
    for file, error_type, message in file_failures:
        idx = clips.loc[clips["file"] == file, "clip"]
        failures.append((f"{file} clips {int(idx.min())}-{int(idx.max())}", error_type, message))
    return ChunkResult(clip_range, int(ok.sum()), tuple(failures))
