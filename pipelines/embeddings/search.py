"""Search by example: the clips of a run most similar (cosine) to one or more example clips.

An example is ``FILE[:START-END]`` (seconds; the whole file without a range). For a BirdNET store it
may come from inside the archive or not: its audio is cut into 3 s windows at 48 kHz, as the run cut
them, and embedded with the model. For a CNN's store it is a stretch of an archive file: the stored
embeddings of the clips it covers are the queries. A clip's similarity is the largest cosine similarity between
its embedding and any example window; ``example`` names the example it is closest to.

The exact search scans the store chunk by chunk (:func:`search`): one task per chunk, run on the Dask
cluster of the current client when there is one (every worker scans its share), else on local
threads, each returning its own best ``k``; the driver merges ``chunks x k`` rows, never the store.
Memory per task: one chunk (``clips_per_chunk x 1,024`` float16, 4 MB at 2,048 clips) plus its float32
copy. Clips that failed (NaN embeddings) are never returned.

Embeddings are stored as float16 (relative error at most 2^-11): cosine similarities move by less
than 1e-3 against float32, so only clips whose similarities differ by less than that can swap ranks.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError
from pipelines.outputs.embedding_store import EMBEDDINGS_FOLDER, embedding_store_name
from pipelines.outputs.location import OutputLocation

__all__ = ["Example", "RESULT_COLUMNS", "embed_examples", "list_embedding_stores", "open_embeddings",
           "parse_example", "search", "search_vectors", "stored_examples"]

logger = logging.getLogger(__name__)

#: columns of :func:`search`'s table
RESULT_COLUMNS = ["rank", "similarity", "example", "clip", "file", "recorder", "start_time", "end_time",
                  "start_time_utc"]
_RANGE = re.compile(r"^(?P<file>.+?):(?P<start>\d+(?:\.\d*)?)-(?P<end>\d+(?:\.\d*)?)$")
_ATTEMPTED_RANGE = re.compile(r"^(?P<file>.+\.[A-Za-z0-9]{2,5}):(?P<range>[^/]*)$")


@dataclasses.dataclass(frozen=True)
class Example:
    """An example clip: ``file`` (path or URL) and ``start_s``/``end_s`` (None: the whole file)."""

    file: str
    start_s: float | None = None
    end_s: float | None = None

    def __str__(self) -> str:
        return self.file if self.start_s is None else f"{self.file}:{self.start_s:g}-{self.end_s:g}"


def parse_example(text: str) -> Example:
    """``FILE`` or ``FILE:START-END`` (seconds) as an :class:`Example`.

    Raises
    ------
    ConfigError
        An end not after the start, or a range that is not ``START-END``.
    """
    match = _RANGE.match(text)
    if not match:
        ranged = _ATTEMPTED_RANGE.match(text)
        if ranged:  # "rec.wav:abc", "rec.wav:5": a range was meant (a URL's "://" has a slash after the colon)
            raise ConfigError(f"search: the example {text!r} has the range {ranged['range']!r}, which is not "
                              "START-END in seconds (FILE:START-END, e.g. rec.wav:12-15, or FILE alone for the "
                              "whole file)")
        return Example(text)
    start, end = float(match["start"]), float(match["end"])
    if not end > start:
        raise ConfigError(f"search: the example {text!r} must end after it starts (FILE:START-END, seconds)")
    return Example(match["file"], start, end)


def list_embedding_stores(url: str, storage_options=None) -> list[str]:
    """The detectors with an embedding store in the run at ``url`` (``birdnet:birds``, ...)."""
    location = OutputLocation(url, storage_options)
    if not location.exists(EMBEDDINGS_FOLDER):
        return []
    names = [n.rstrip("/").rsplit("/", 1)[-1] for n in location.list(EMBEDDINGS_FOLDER)]
    return sorted(n.replace("-", ":", 1) for n in names if "-" in n and not n.startswith((".", "_")))


def open_embeddings(url: str, detector: str | None = None, storage_options=None):
    """The embedding store of ``detector`` (the run's only one when None) as an xarray Dataset, and its
    detector name.

    Raises
    ------
    ConfigError
        The run has no embeddings (``embeddings: true`` on a BirdNET entry writes them), or several and
        none is named.
    """
    import xarray as xr

    known = list_embedding_stores(url, storage_options)
    if detector is None:
        if len(known) != 1:
            raise ConfigError(f"search: the run at {url} has {'no embedding store' if not known else known}: "
                              + ("set embeddings: true on a birdnet entry and run it" if not known
                                 else "choose one with --detector"))
        detector = known[0]
    elif detector not in known:
        raise ConfigError(f"search: no embeddings of {detector!r} in {url}; it has {known or 'none'}")
    location = OutputLocation(url, storage_options)
    ds = xr.open_zarr(location.url_of(embedding_store_name(detector)), consolidated=True,
                      storage_options=location.storage_options or None)
    return ds, detector


def stored_examples(examples: list[Example], ds, detector: str) -> tuple[np.ndarray, list]:
    """The stored embeddings of the store's clips that the examples cover (by at least half a clip; a
    whole file without a range), float32, and the example each came from.

    Raises
    ------
    ConfigError
        An example that covers no clip of the store.
    """
    files = np.array(ds["file"].values.tolist(), dtype=object)  # StringDType does not cast to str
    starts, ends = ds["start_time"].values, ds["end_time"].values
    vectors, owners = [], []
    for example in examples:
        rows = files == example.file
        if example.start_s is not None:
            overlap = np.minimum(ends, example.end_s) - np.maximum(starts, example.start_s)
            rows &= overlap >= 0.5 * (ends - starts) - 1e-9
        rows = np.flatnonzero(rows)
        if not len(rows):
            raise ConfigError(f"search: the example {example} covers no clip of {detector}'s embeddings (an example "
                              "from outside the archive can be embedded for BirdNET stores only)")
        vectors.append(np.asarray(ds["embedding"].isel(clip=rows).values, dtype=np.float32))
        owners += [str(example)] * len(rows)
    return np.concatenate(vectors), owners


def embed_examples(examples: list[Example], detector: str, input_storage_options=None, ds=None) -> tuple[np.ndarray, list]:
    """The embeddings of the examples' windows with ``detector``'s model, float32 (n_windows, n_features),
    and the example each window came from. Stores of other models (CNNs) give the stored embeddings of
    the clips the examples cover (:func:`stored_examples`, with the store ``ds``).

    Raises
    ------
    ConfigError
        An example outside its file, or (not BirdNET) covering no clip of the store.
    """
    kind = detector.split(":", 1)[0]
    if kind != "birdnet":
        if ds is None:
            raise ConfigError(f"search: examples of {detector!r} come from its store; give the store")
        return stored_examples(examples, ds, detector)
    from opso_core.audio_info import audio_file_info
    from pipelines.birdnet import model
    from pipelines.birdnet.windows import read_windows, window_times

    vectors, owners = [], []
    for example in examples:
        info = audio_file_info(example.file, storage_options=input_storage_options)
        start = 0.0 if example.start_s is None else example.start_s
        end = info.duration_s if example.end_s is None else min(example.end_s, info.duration_s)
        if not end > start:
            raise ConfigError(f"search: the example {example} lies outside its file ({info.duration_s:g} s long)")
        if example.end_s is not None and example.end_s > info.duration_s:
            logger.warning("search: the example %s runs past the end of its file (%g s long): %g-%g s is used",
                           example, info.duration_s, start, end)
        starts, _ = window_times(end - start, 0.0)
        if not len(starts):  # shorter than BirdNET's shortest window (1.5 s): one window, zero-padded
            starts = np.zeros(1)
        samples = read_windows(example.file, start + starts, info=info, storage_options=input_storage_options)
        _, emb = model.predict(samples, embeddings=True)
        vectors.append(emb)
        owners += [str(example)] * len(emb)
    return np.concatenate(vectors).astype(np.float32), owners


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / norms


def _chunk_best(block: np.ndarray, queries: np.ndarray, k: int, offset: int) -> tuple[np.ndarray, ...]:
    """The best ``k`` rows of one chunk: (clip numbers, similarities, query index), best first."""
    x = np.asarray(block, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # one pass; no normalised copy of the chunk
    with np.errstate(invalid="ignore", divide="ignore"):
        sims = (x @ queries.T) / norms[:, None]  # (rows, queries); NaN for failed (or all-zero) clips
    sims = np.nan_to_num(sims, nan=-np.inf, posinf=-np.inf, neginf=-np.inf)
    best_query = np.argmax(sims, axis=1)
    best = sims[np.arange(len(sims)), best_query]
    keep = np.flatnonzero(np.isfinite(best))
    if len(keep) > k:
        keep = keep[np.argpartition(-best[keep], k - 1)[:k]]
    order = keep[np.argsort(-best[keep], kind="stable")]
    return order + offset, best[order].astype(np.float32), best_query[order]


def search_vectors(embeddings, queries: np.ndarray, k: int, *, client=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine search of ``queries`` (n_queries, n_features) over a chunked 2-D array.

    Parameters
    ----------
    embeddings : dask.array.Array or numpy.ndarray, shape (n_clips, n_features)
        Scanned one chunk (of rows) per task.
    client : distributed.Client, optional
        Where the tasks run (default for a dask array: the current client if any, else local threads;
        an array in memory is scanned here).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Row numbers, similarities (float32) and the closest query of the best ``k`` rows, best first
        (ties: lower row first).
    """
    import dask
    import dask.array as da

    if k < 1:
        raise ConfigError(f"search: k must be at least 1, got {k}")
    q = _normalised(queries)
    if not np.isfinite(q).all():
        raise ConfigError("search: an example's embedding is zero or not finite (a silent example?)")
    array = embeddings if isinstance(embeddings, da.Array) else da.from_array(np.asarray(embeddings),
                                                                              chunks=(4096, -1))
    offsets = np.r_[0, np.cumsum(array.chunks[0])[:-1]]
    blocks = array.to_delayed().ravel()
    parts = [dask.delayed(_chunk_best)(block, q, k, int(offset)) for block, offset in zip(blocks, offsets, strict=True)]
    if client is None and isinstance(embeddings, da.Array):  # a store's chunks: scanned where the workers are
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    results = client.gather(client.compute(parts)) if client is not None else dask.compute(*parts, scheduler="threads")
    rows = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.int64)
    sims = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.float32)
    which = np.concatenate([r[2] for r in results]) if results else np.zeros(0, np.int64)
    order = np.lexsort((rows, -sims))[:k]
    return rows[order], sims[order], which[order]


def search(url: str, examples, k: int = 100, *, detector: str | None = None, storage_options=None,
           input_storage_options=None, client=None, approximate: bool = False) -> pd.DataFrame:
    """The ``k`` clips of the run at ``url`` most similar to the examples (see the module docstring).

    Parameters
    ----------
    examples : list of str or Example
        ``FILE`` or ``FILE:START-END`` (seconds).
    k : int
    detector : str, optional
        Whose embeddings (``birdnet:birds``); the run's only store by default.
    storage_options, input_storage_options : dict, optional
        fsspec options of the run folder and of the examples' files.
    client : distributed.Client, optional
    approximate : bool
        Use the run's approximate index (:mod:`pipelines.embeddings.index`; ``opso index`` builds it)
        instead of scanning every embedding.

    Returns
    -------
    pandas.DataFrame
        :data:`RESULT_COLUMNS`, best first (``rank`` 1..k; ``similarity`` the cosine, -1 to 1).
    """
    if not examples:
        raise ConfigError("search: give at least one example (FILE or FILE:START-END)")
    parsed = [e if isinstance(e, Example) else parse_example(str(e)) for e in examples]
    ds, detector = open_embeddings(url, detector, storage_options)
    queries, owners = embed_examples(parsed, detector, input_storage_options, ds)
    if approximate:
        from pipelines.embeddings.index import index_search

        rows, sims, which = index_search(url, detector, queries, k, storage_options)
    else:
        rows, sims, which = search_vectors(ds["embedding"].data, queries, k, client=client)
    picked = ds[["file", "recorder", "start_time", "end_time", "start_time_utc"]].isel(clip=rows).load()
    utc = pd.to_datetime(picked["start_time_utc"].values).tz_localize("UTC")
    table = pd.DataFrame({"rank": np.arange(1, len(rows) + 1), "similarity": sims.astype(np.float64),
                          "example": [owners[i] for i in which], "clip": rows.astype(np.int64),
                          "file": picked["file"].values.tolist(), "recorder": picked["recorder"].values.tolist(),
                          "start_time": picked["start_time"].values, "end_time": picked["end_time"].values,
                          "start_time_utc": utc})
    logger.info("search: %d example window(s) over %d clips of %s: best similarity %.3f", len(queries),
                ds.sizes["clip"], detector, float(sims[0]) if len(sims) else float("nan"))
    return table[RESULT_COLUMNS]
