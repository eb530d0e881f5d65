"""Embeddings of every clip of a detector, as a chunked Zarr store (an xarray Dataset).

Layout (``embeddings.zarr/<kind>-<name>``, e.g. ``embeddings.zarr/birdnet-birds``; Zarr format 2 with
consolidated metadata)::

    embedding (clip, feature), float16; chunks (clips_per_chunk, all features); NaN where a clip failed
    coords: clip, feature, and per clip: file, recorder, start_time, end_time (s from the file
            start), start_time_utc (as in spectrograms.zarr)
    attrs:  model, window_s, sample_rate_hz, precision

float16 keeps about three significant digits (relative error at most 2^-11, 0.05%): the cosine
similarity of two embeddings moves by less than 1e-3, far below the differences search ranks by.
As for ``spectrograms.zarr``, the driver writes the metadata only (:func:`create_embedding_store`)
and each task writes its own chunk-aligned clips (:func:`write_embeddings`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from pipelines.driver.clip_plan import ClipRange
from pipelines.errors import OutputConflictError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.spectrogram_store import create_clip_group, write_chunks

__all__ = ["EMBEDDINGS_FOLDER", "MAX_EMBEDDING_CHUNK", "EmbeddingLayout", "create_embedding_store",
           "embedding_store_name", "ensure_embedding_store", "write_embeddings"]

#: the folder of every embedding store of a run
EMBEDDINGS_FOLDER = "embeddings.zarr"
#: most clips per chunk of an embedding store (2,048 BirdNET windows: 4 MB of float16)
MAX_EMBEDDING_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class EmbeddingLayout:
    """Where tasks write a store's embeddings: its clips, features, chunk length (clips; tasks own whole
    chunks) and ``clip`` coordinate chunk."""

    n_clips: int
    n_features: int
    chunk: int
    index_chunk: int


def embedding_store_name(detector: str) -> str:
    """The store of a detector's embeddings, relative to the run folder: ``embeddings.zarr/birdnet-birds``."""
    return f"{EMBEDDINGS_FOLDER}/{detector.replace(':', '-')}"


def create_embedding_store(location: OutputLocation, detector: str, n_clips: int, *, n_features: int,
                           clips_per_chunk: int, attrs: dict) -> None:
    """Write the metadata of ``detector``'s store of ``n_clips`` embeddings of ``n_features`` values."""
    import zarr
    from numcodecs import Blosc

    name = embedding_store_name(detector)
    group, coord_codec = create_clip_group(location, n_clips, clips_per_chunk=clips_per_chunk, store_name=name)
    feature = group.create_array("feature", shape=(n_features,), chunks=(n_features,), dtype=np.int32,
                                 fill_value=None, compressors=coord_codec)
    feature[...] = np.arange(n_features, dtype=np.int32)
    feature.attrs.update({"_ARRAY_DIMENSIONS": ["feature"]})
    values = group.create_array("embedding", shape=(int(n_clips), n_features),
                                chunks=(max(1, clips_per_chunk), n_features), dtype=np.float16, fill_value=np.nan,
                                compressors=_codec(Blosc))
    values.attrs.update({"long_name": "embedding", "coordinates": "end_time file recorder start_time start_time_utc",
                         "_ARRAY_DIMENSIONS": ["clip", "feature"]})
    group.attrs.update({**attrs, "detector": detector, "precision": "float16"})
    zarr.consolidate_metadata(group.store, zarr_format=2)


def ensure_embedding_store(location: OutputLocation, detector: str, n_clips: int, *,
                           n_features: int | Callable[[], int], clips_per_chunk: int, attrs: dict) -> EmbeddingLayout:
    """Create ``detector``'s store (:func:`create_embedding_store`) unless a run made it before; its layout.

    ``n_features`` may be a function, called only when the store is created (a CNN's size needs its model)."""
    from pipelines.outputs.spectrogram_store import open_store

    name = embedding_store_name(detector)
    location.check_lease()  # the store's metadata is written with zarr, not through the location
    if not location.exists(f"{name}/.zmetadata"):
        create_embedding_store(location, detector, n_clips, clips_per_chunk=clips_per_chunk, attrs=attrs,
                               n_features=n_features() if callable(n_features) else n_features)
    group = open_store(location, mode="r", store_name=name)
    values = group["embedding"]
    if int(values.shape[0]) != int(n_clips) or group.attrs.get("detector") != detector:
        raise OutputConflictError(
            f"{location.url}/{name} holds {values.shape[0]} embeddings of {group.attrs.get('detector')!r}, not the "
            f"{n_clips} clips of {detector!r} this run embeds: it is left from another run. Run again with "
            "--overwrite to replace the previous run's outputs")
    return EmbeddingLayout(int(values.shape[0]), int(values.shape[1]), int(values.chunks[0]),
                           int(group["clip"].chunks[0]))


def _codec(blosc):
    return blosc("zstd", 3, blosc.SHUFFLE)


def write_embeddings(location: OutputLocation, detector: str, clip_range: ClipRange, values: np.ndarray, *,
                     clips_per_chunk: int) -> None:
    """Write the embeddings of ``clip_range`` (chunk-aligned; ``values`` (n, n_features), NaN where a clip
    failed) into ``detector``'s store, one object per chunk."""
    from numcodecs import Blosc

    name = embedding_store_name(detector)
    write_chunks(location, clip_range, np.asarray(values, dtype=np.float16), lambda k: f"{name}/embedding/{k}.0",
                 clips_per_chunk=clips_per_chunk, fill=np.float16(np.nan), compressor=_codec(Blosc))
