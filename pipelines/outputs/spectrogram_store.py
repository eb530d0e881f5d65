"""Clip spectrograms, and the chunked Zarr store (an xarray Dataset) that keeps them for the user.

Layout (``spectrograms.zarr``, Zarr format 2 with consolidated metadata)::

    spectrogram (clip, frequency, time), dB; chunks (clips_per_chunk, all, all)
    coords: clip, frequency (Hz), time (s from the clip start), and per clip: file, recorder,
            start_time, end_time (s from the file start), start_time_utc
    attrs:  spectrogram parameters, sample_rate_hz, clip_duration_s, window_step_s, store, precision_db
            (largest difference from the computed dB: half a step), compact_step_db (the grid's step)

``start_time_utc`` is UTC (its attributes say so); xarray decodes it to a time-zone-naive
``datetime64``, as numpy has no time zones (the Parquet tables hold UTC-aware timestamps).

Two encodings (``spectrogram.store``):

- ``compact`` (default): one byte a value, ``code = round((dB - min_db) / step_db)`` with
  ``step_db = spectrogram.compact_step_db`` (0.625 dB: 129 levels over the default [-100, -20] dB);
  values are within ``step_db / 2`` of the computed dB. The array carries CF ``scale_factor`` /
  ``add_offset`` attributes, so ``xr.open_zarr`` returns dB values directly. About 0.33x the size of
  16-bit audio on a noisy archive (less where the noise floor is below ``decibel_limits``).
- ``full``: float32 dB, as computed (about 1.5x the size of 16-bit audio).

Clips that cannot be read are NaN (code 255 in a compact store) and reported as failures. A
clip's values are ``Spectrogram.from_audio(clip_audio, **params)`` where ``clip_audio =
Audio.from_file(file, offset=start_time, duration=clip_duration, sample_rate=sample_rate_hz)``,
padded with silence to the clip length if the file ends first.

The driver writes the metadata and the small coordinates once (:func:`create_store`); each task
writes only its own, chunk-aligned clip range: values (:func:`write_values`) and per-clip
coordinates (:func:`write_clip_coords`), so no two tasks touch one chunk and the driver's work does
not grow with the archive (a store of 150,000 clips took the driver 23 s when it wrote them all).
The ``clip`` coordinate (the clip numbers, xarray's index of the ``clip`` dimension, which it reads
whole when it opens the store) has chunks of :data:`CLIP_INDEX_CHUNK` clips, so opening a store of
18 million clips reads 18 objects; each chunk is written by the task whose range holds its first clip
(and by any other task of the chunk that finds it missing).

Memory: a task holds the audio of its own clips only (``clips`` x clip duration at the native
rate, plus one decoded segment per file it touches), never a whole recording.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd

from opso_core.audio import load_clips
from opso_core.spectrogram import SpectrogramParams, spectrograms_from_clips
from opso_core.stft import window_times
from pipelines.driver.clip_plan import ClipRange
from pipelines.outputs.location import OutputLocation

__all__ = ["CLIP_INDEX_CHUNK", "STORE_NAME", "ClipSpectrograms", "StoreEncoding", "clip_audio_batch", "clip_index_chunk",
           "clip_samples",
           "clip_spectrograms", "create_clip_group", "create_store", "write_chunks", "open_store", "write_clip_coords", "write_values"]

logger = logging.getLogger(__name__)
STORE_NAME = "spectrograms.zarr"
_MISSING_CODE = 255
#: clips per chunk of the ``clip`` coordinate (a store of fewer clips has one chunk)
CLIP_INDEX_CHUNK = 2**20


@dataclasses.dataclass(frozen=True, slots=True)
class StoreEncoding:
    """How a store keeps dB values: ``compact`` (uint8 codes in ``step_db`` steps) or ``full`` (float32)."""

    kind: str = "compact"
    step_db: float = 0.625
    decibel_limits: tuple[float, float] = (-100.0, -20.0)

    @property
    def precision_db(self) -> float:
        """Largest difference (dB) between a stored value and the computed one."""
        return self.step_db / 2 if self.kind == "compact" else 0.0

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Stored form of dB ``values`` (NaN for clips that failed)."""
        if self.kind == "full":
            return values.astype(np.float32, copy=False)
        lo, hi = self.decibel_limits
        scaled = (np.clip(values, lo, hi) - np.float32(lo)) * np.float32(1 / self.step_db)
        np.rint(scaled, out=scaled)
        scaled[np.isnan(values)] = _MISSING_CODE
        return scaled.astype(np.uint8)

    @property
    def fill_value(self):
        """The stored value of a missing clip."""
        return np.float32(np.nan) if self.kind == "full" else np.uint8(_MISSING_CODE)

    def codec(self):
        """The compressor of the store's chunks (as written in its ``.zarray``)."""
        from numcodecs import Blosc

        if self.kind == "full":
            return Blosc("lz4", 5, Blosc.SHUFFLE)
        return Blosc("zstd", 1, Blosc.NOSHUFFLE)  # single bytes: no shuffle (measured: smallest, and fast)



@dataclasses.dataclass(frozen=True, slots=True)
class ClipSpectrograms:
    """Spectrograms of a range of clips: ``values`` (n, n_frequencies, n_times) float32 dB (NaN where the
    clip failed), ``ok`` (n,) bool, ``frequencies`` (Hz) and failures as ``(item, error_type, message)``."""

    values: np.ndarray
    ok: np.ndarray
    frequencies: np.ndarray
    failures: tuple[tuple[str, str, str], ...]


def clip_samples(clip_duration_s: float, sample_rate_hz: int) -> int:
    """Samples in one clip of ``clip_duration_s`` seconds at ``sample_rate_hz`` (the width of
    :func:`clip_audio_batch`'s array)."""
    return int(round(clip_duration_s * sample_rate_hz))


def clip_audio_batch(clips: pd.DataFrame, *, sample_rate_hz: int, clip_duration_s: float,
                     storage_options=None):
    """Audio of each clip, as one array.

    Parameters
    ----------
    clips : pandas.DataFrame
        Rows of the clip table (``file``, ``start_time``).
    sample_rate_hz : int
        Target rate; clips of files at other rates are resampled one clip at a time.
    clip_duration_s : float

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, list)
        ``samples`` (n_clips, clip_samples) float32, a boolean ``ok`` mask, and failures as
        ``(file, error_type, message)``.
    """
    n_out = clip_samples(clip_duration_s, sample_rate_hz)
    samples = np.zeros((len(clips), n_out), dtype=np.float32)
    ok = np.zeros(len(clips), dtype=bool)
    failures = []
    starts_s = clips["start_time"].to_numpy()
    for file, rows in clips.groupby("file", sort=False).indices.items():
        try:
            samples[rows] = load_clips(file, starts_s[rows], clip_duration_s, sample_rate_hz,
                                       storage_options=storage_options)
            ok[rows] = True
        except Exception as exc:  # one bad file must not lose the other files' clips
            logger.warning("could not read clips of %s: %s", file, exc)
            failures.append((str(file), type(exc).__name__, str(exc)))
    return samples, ok, failures


def clip_spectrograms(clips: pd.DataFrame, *, params: SpectrogramParams, sample_rate_hz: int,
                      clip_duration_s: float, storage_options=None) -> ClipSpectrograms:
    """Read the clips' audio and compute their spectrograms (float32 dB) in one vectorised call.

    ``clips`` holds plan rows (``clip``, ``file``, ``start_time``); failures name the file and the
    global clip numbers it lost.
    """
    samples, ok, file_failures = clip_audio_batch(clips, sample_rate_hz=sample_rate_hz,
                                                  clip_duration_s=clip_duration_s, storage_options=storage_options)
    values, frequencies, _ = spectrograms_from_clips(samples, sample_rate_hz, params=params, dtype=np.float32)
    values[~ok] = np.nan
    return ClipSpectrograms(values, ok, frequencies, clip_failures(clips, file_failures))


def clip_failures(clips: pd.DataFrame, file_failures) -> tuple[tuple[str, str, str], ...]:
    """``(file, error_type, message)`` of :func:`clip_audio_batch` as ``("<file> clips a-b", error_type,
    message)``, naming the global clip numbers (``clips["clip"]``) each file lost."""
    failures = []
    for file, error_type, message in file_failures:
        idx = clips.loc[clips["file"] == file, "clip"]
        failures.append((f"{file} clips {int(idx.min())}-{int(idx.max())}", error_type, message))
    return tuple(failures)


def open_store(location: OutputLocation, mode="r+", store_name: str = STORE_NAME):
    """The Zarr group of a spectrogram store under ``location``."""
    import zarr

    return zarr.open_group(location.url_of(store_name), mode=mode, zarr_format=2,
                           storage_options=location.storage_options or None)


_COORD_CODEC = ("lz4", 5)  # blosc settings of the coordinate arrays
_NAT = np.iinfo(np.int64).min
#: per-clip coordinates: name -> (dtype, fill value of chunks not written yet, attributes)
_CLIP_COORDS = {
    "file": (str, None, {}),
    "recorder": (str, None, {}),
    "start_time": (np.float64, np.nan, {}),
    "end_time": (np.float64, np.nan, {}),
    "start_time_utc": (np.int64, _NAT, {"units": "nanoseconds since 1970-01-01", "calendar": "proleptic_gregorian",
                                         "_FillValue": int(_NAT), "long_name": "clip start (UTC)",
                                         "timezone": "UTC"}),
}


def _clip_coord_values(clips: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-clip coordinate arrays of ``clips`` (rows of the clip table), as stored."""
    utc = pd.to_datetime(clips["start_time_utc"], utc=True).dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    return {"file": clips["file"].to_numpy(dtype=object), "recorder": clips["recorder"].to_numpy(dtype=object),
            "start_time": clips["start_time"].to_numpy(np.float64),
            "end_time": clips["end_time"].to_numpy(np.float64),
            "start_time_utc": np.where(np.isnat(utc), _NAT, utc.view(np.int64))}


def write_chunks(location: OutputLocation, clip_range: ClipRange, stored: np.ndarray, key, *, clips_per_chunk: int,
                  fill, compressor, filters=()) -> None:
    """Write ``stored`` (rows of ``clip_range``, which starts on a chunk boundary) as Zarr v2 chunks along
    the clip axis: chunk ``k`` goes to ``key(k)``, encoded by ``filters`` then ``compressor``, one object
    written atomically (:meth:`OutputLocation.write_bytes`); the last chunk of an array is padded with
    ``fill`` to the full chunk shape, as Zarr stores it."""
    import numcodecs

    if clip_range.start % clips_per_chunk:
        raise ValueError(f"clip range {clip_range.name} does not start on a chunk of {clips_per_chunk} clips")
    numcodecs.blosc.use_threads = False  # a Dask worker's threads are its only threads (one per core)
    for offset in range(0, len(stored), clips_per_chunk):
        block = stored[offset : offset + clips_per_chunk]
        if len(block) < clips_per_chunk:
            pad = np.full((clips_per_chunk - len(block), *block.shape[1:]), fill, dtype=block.dtype)
            block = np.concatenate([block, pad])
        raw = np.ascontiguousarray(block)
        for f in filters:
            raw = f.encode(raw)
        location.write_bytes(key((clip_range.start + offset) // clips_per_chunk), compressor.encode(raw))


def clip_index_chunk(n_clips: int) -> int:
    """Clips per chunk of a store's ``clip`` coordinate."""
    return min(CLIP_INDEX_CHUNK, max(int(n_clips), 1))


def write_clip_coords(location: OutputLocation, clip_range: ClipRange, clips: pd.DataFrame, *,
                      clips_per_chunk: int, n_clips: int, index_chunk: int | None = None,
                      store_name: str = STORE_NAME) -> None:
    """Write the per-clip coordinates (``file, recorder, start_time, end_time, start_time_utc``) of
    ``clip_range`` (chunk-aligned; ``clips`` its rows of the clip table) as Zarr v2 chunks (``<name>/<k>``),
    and the chunks of the ``clip`` coordinate the range overlaps (``n_clips``: the store's clips;
    ``index_chunk``: the coordinate's chunk length, by default :func:`clip_index_chunk`).

    A ``clip`` chunk is written by the task holding its first clip, and by any other task overlapping
    it that finds it missing (its content is the clip numbers, the same whoever writes it): one failed
    task does not leave the index of the clips the others wrote unreadable."""
    import numcodecs

    compressor = numcodecs.Blosc(_COORD_CODEC[0], _COORD_CODEC[1], numcodecs.Blosc.SHUFFLE)
    numcodecs.blosc.use_threads = False
    per_index_chunk = index_chunk or clip_index_chunk(n_clips)
    for k in range(clip_range.start // per_index_chunk, -(-clip_range.stop // per_index_chunk)):
        key = f"{store_name}/clip/{k}"
        if k * per_index_chunk < clip_range.start and location.exists(key):
            continue
        numbers = np.zeros(per_index_chunk, dtype=np.int64)  # the last chunk is padded, as Zarr stores it
        stop = min((k + 1) * per_index_chunk, n_clips)
        numbers[: stop - k * per_index_chunk] = np.arange(k * per_index_chunk, stop, dtype=np.int64)
        location.write_bytes(key, compressor.encode(numbers))
    for name, values in _clip_coord_values(clips).items():
        text = values.dtype == object
        write_chunks(location, clip_range, values, lambda k, name=name: f"{store_name}/{name}/{k}",
                      clips_per_chunk=clips_per_chunk, fill="" if text else _CLIP_COORDS[name][1],
                      compressor=compressor, filters=(numcodecs.VLenUTF8(),) if text else ())


def create_clip_group(location: OutputLocation, n_clips: int, *, clips_per_chunk: int, store_name: str):
    """Create the Zarr v2 group ``store_name`` of a store of ``n_clips`` clips with its clip coordinates'
    metadata (``clip`` and the per-clip ``file, recorder, start_time, end_time, start_time_utc``, chunks
    of ``clips_per_chunk``): the tasks write their chunks (:func:`write_clip_coords`), so the driver
    writes a handful of objects whatever the archive's size.

    Returns
    -------
    (zarr.Group, numcodecs.Blosc)
        The group (the caller adds its arrays, then consolidates the metadata) and the coordinates' codec.
    """
    import zarr
    from numcodecs import Blosc

    n = int(n_clips)
    group = zarr.open_group(location.url_of(store_name), mode="w", zarr_format=2,
                            storage_options=location.storage_options or None)
    coord_codec = Blosc(_COORD_CODEC[0], _COORD_CODEC[1], Blosc.SHUFFLE)
    clip = group.create_array("clip", shape=(n,), chunks=(clip_index_chunk(n),), dtype=np.int64,
                              fill_value=None, compressors=coord_codec)  # its chunks: written by the tasks
    clip.attrs.update({"_ARRAY_DIMENSIONS": ["clip"]})
    for name, (dtype, fill, attrs) in _CLIP_COORDS.items():
        arr = group.create_array(name, shape=(n,), chunks=(max(1, clips_per_chunk),), dtype=dtype, fill_value=fill,
                                 compressors=coord_codec)
        arr.attrs.update({**attrs, "_ARRAY_DIMENSIONS": ["clip"]})
    return group, coord_codec


def create_store(location: OutputLocation, n_clips: int, *, params: SpectrogramParams, sample_rate_hz: int,
                 clip_duration_s: float, clips_per_chunk: int, encoding: StoreEncoding | None = None,
                 store_name: str = STORE_NAME) -> None:
    """Write the metadata of a store of ``n_clips`` clips and its small coordinates (frequency, time);
    the values and every per-clip coordinate are written by the tasks (:func:`write_values`,
    :func:`write_clip_coords`).

    The layout is the one ``xarray.Dataset.to_zarr`` writes (``_ARRAY_DIMENSIONS``, CF attributes,
    consolidated metadata), made with zarr directly: the driver needs neither xarray nor dask.
    """
    import zarr

    encoding = encoding or StoreEncoding(decibel_limits=tuple(params.decibel_limits))
    n_samples = int(round(clip_duration_s * sample_rate_hz))
    n_freq, n_time = params.n_frequencies(), params.n_times(n_samples)
    n = int(n_clips)
    group, coord_codec = create_clip_group(location, n, clips_per_chunk=clips_per_chunk, store_name=store_name)
    per_clip = max(1, clips_per_chunk)

    def array(name, data, dims, chunks, attrs=None, fill_value=None):
        arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype if data.dtype != object
                                 else str, fill_value=fill_value, compressors=coord_codec)
        if len(data):
            arr[...] = data
        arr.attrs.update({**(attrs or {}), "_ARRAY_DIMENSIONS": list(dims)})

    array("frequency", params.frequencies(sample_rate_hz), ["frequency"], (n_freq,), {"units": "Hz"}, np.nan)
    array("time", window_times(params, n_samples, sample_rate_hz), ["time"], (max(n_time, 1),),
          {"units": "s (window centre, from the clip start)"}, np.nan)
    values = group.create_array("spectrogram", shape=(n, n_freq, n_time), chunks=(per_clip, n_freq, n_time),
                                dtype=np.float32 if encoding.kind == "full" else np.uint8,
                                fill_value=encoding.fill_value.item() if encoding.kind != "full" else np.nan,
                                compressors=encoding.codec())
    attrs = {"long_name": "spectrogram", "units": "dB",
             "coordinates": "end_time file recorder start_time start_time_utc",
             "_ARRAY_DIMENSIONS": ["clip", "frequency", "time"]}
    if encoding.kind == "compact":
        attrs.update(scale_factor=float(encoding.step_db), add_offset=float(encoding.decibel_limits[0]),
                     _FillValue=_MISSING_CODE)
    values.attrs.update(attrs)
    group.attrs.update({
        "spectrogram_params": json.dumps(params.as_dict()),
        "sample_rate_hz": int(sample_rate_hz),
        "clip_duration_s": float(clip_duration_s),
        "window_step_s": params.step_samples / sample_rate_hz,
        "units": "dB" if params.dB_scale else "power",
        "store": encoding.kind,
        "precision_db": encoding.precision_db,
        "compact_step_db": float(encoding.step_db) if encoding.kind == "compact" else 0.0,
    })
    zarr.consolidate_metadata(group.store, zarr_format=2)


def write_values(location: OutputLocation, clip_range: ClipRange, values: np.ndarray, *, encoding: StoreEncoding,
                 clips_per_chunk: int, store_name: str = STORE_NAME) -> None:
    """Write the dB ``values`` of ``clip_range`` (which starts on a chunk boundary) into the store:
    each chunk compressed here and written as one object under its Zarr v2 key (``spectrogram/<k>.0.0``)."""
    write_chunks(location, clip_range, encoding.encode(values), lambda k: f"{store_name}/spectrogram/{k}.0.0",
                  clips_per_chunk=clips_per_chunk, fill=encoding.fill_value, compressor=encoding.codec())
