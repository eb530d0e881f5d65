"""An approximate nearest-neighbour index of a run's embeddings, built once and kept in the run folder.

``usearch`` (HNSW graphs; `pip install 'opso[search]'`) was chosen over ``faiss-cpu``: a 2 MB wheel
with no BLAS of its own, cosine distance and float16 storage built in, and an index that saves to and
loads from one file; faiss is about 30 MB and its HNSW index keeps float32 vectors (4 GB for a
million embeddings instead of 2 GB). The exact chunked scan (:mod:`pipelines.embeddings.search`)
needs neither.

Layout: ``indexes/<kind>-<name>.usearch`` (the index: cosine metric, float16 vectors, keys = clip
numbers of the store; failed clips left out) and ``indexes/<kind>-<name>.json`` (what it was built
from: the store's identity and epoch in ``run.json``, its clip count, the build settings). A store
recomputed since (another identity or epoch) makes the index stale: search refuses it and says to
rebuild. The build runs in one process (the index is one in-memory graph): about the size of the
vectors in float16 plus the graph (roughly 2.2 GB for a million 1,024-value embeddings).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time

import numpy as np

from pipelines.errors import ConfigError
from pipelines.outputs.location import OutputLocation

__all__ = ["INDEX_FOLDER", "IndexSummary", "build_index", "index_search"]

logger = logging.getLogger(__name__)

INDEX_FOLDER = "indexes"
#: HNSW settings: graph degree, construction and search breadth. 64 to build is 2.7x as fast as usearch's
#: default 128 at 1,024 dimensions; searching 1,024 wide costs about 4 ms a query on a million vectors
#: (benchmarks/README.md: recall@100 0.99 at 100,000 generated vectors, about 0.95 at a million)
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 64, 1024
#: vectors handed to usearch per call (its threads split a call's vectors)
ADD_BATCH = 65536


@dataclasses.dataclass(frozen=True)
class IndexSummary:
    """What :func:`build_index` built: the detector, vectors indexed, seconds, bytes of the index file."""

    detector: str
    n_vectors: int
    build_s: float
    size_bytes: int
    path: str


def _names(detector: str) -> tuple[str, str]:
    stem = f"{INDEX_FOLDER}/{detector.replace(':', '-')}"
    return f"{stem}.usearch", f"{stem}.json"


def _usearch():
    try:
        from usearch.index import Index
    except ImportError:
        raise ConfigError("the approximate index needs usearch: pip install 'opso[search]' (the exact search does "
                          "not)") from None
    return Index


def _store_token(url: str, detector: str, storage_options) -> str:
    """The store's identity and epoch in ``run.json`` (what the index must match)."""
    from pipelines.outputs.results import read_status

    record = (read_status(url, storage_options).get("outputs") or {}).get(f"embeddings:{detector}") or {}
    return f"{record.get('identity', '?')}.{record.get('epoch', 0)}"


def build_index(url: str, detector: str | None = None, storage_options=None, *, connectivity: int = CONNECTIVITY,
                expansion_add: int = EXPANSION_ADD) -> IndexSummary:
    """Build the approximate index of ``detector``'s embeddings (the run's only store when None) and save
    it in the run folder (see the module docstring).

    Parameters
    ----------
    connectivity, expansion_add : int
        HNSW's graph degree and construction breadth.
    """
    from pipelines.embeddings.search import open_embeddings

    Index = _usearch()
    ds, detector = open_embeddings(url, detector, storage_options)
    data = ds["embedding"].data
    index = Index(ndim=int(data.shape[1]), metric="cos", dtype="f16", connectivity=connectivity,
                  expansion_add=expansion_add)
    started = time.perf_counter()
    step = max(1, ADD_BATCH // data.chunks[0][0]) * data.chunks[0][0]  # whole chunks, about ADD_BATCH vectors
    for first in range(0, data.shape[0], step):
        x = np.asarray(data[first:first + step].compute(), dtype=np.float32)
        ok = np.flatnonzero(np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0))  # failed clips left out
        if len(ok):
            index.add(ok.astype(np.uint64) + np.uint64(first), x[ok], threads=os.cpu_count() or 1)
    build_s = time.perf_counter() - started
    location = OutputLocation(url, storage_options)
    index_rel, meta_rel = _names(detector)
    with tempfile.TemporaryDirectory(prefix="opso-index-") as tmp:
        path = os.path.join(tmp, "index.usearch")
        index.save(path)
        with open(path, "rb") as f:
            payload = f.read()
    location.write_bytes(index_rel, payload)
    location.write_json(meta_rel, {"detector": detector, "store": _store_token(url, detector, storage_options),
                                   "n_clips": int(data.shape[0]), "n_vectors": len(index), "metric": "cos",
                                   "dtype": "f16", "connectivity": connectivity, "expansion_add": expansion_add,
                                   "build_s": round(build_s, 3)})
    logger.info("index: %d vectors of %s in %.1f s (%.1f MB)", len(index), detector, build_s, len(payload) / 1e6)
    return IndexSummary(detector, len(index), build_s, len(payload), location.url_of(index_rel))


def index_search(url: str, detector: str, queries: np.ndarray, k: int, storage_options=None, *,
                 expansion_search: int = EXPANSION_SEARCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate top-``k`` cosine search with the run's saved index: (clip numbers, similarities,
    closest query), best first, as :func:`pipelines.embeddings.search.search_vectors` returns them.

    Raises
    ------
    ConfigError
        No index (``opso index RUN`` builds it), or one built from an older store.
    """
    Index = _usearch()
    location = OutputLocation(url, storage_options)
    index_rel, meta_rel = _names(detector)
    if not location.exists(meta_rel) or not location.exists(index_rel):
        raise ConfigError(f"search --approximate: no index of {detector} in {url}; build it with opso index {url}")
    meta = location.read_json(meta_rel)
    if meta.get("store") != _store_token(url, detector, storage_options):
        raise ConfigError(f"search --approximate: the index of {detector} was built from embeddings the run has "
                          f"recomputed since; rebuild it with opso index {url}")
    with tempfile.TemporaryDirectory(prefix="opso-index-") as tmp:
        path = os.path.join(tmp, "index.usearch")
        with open(path, "wb") as f:
            f.write(location.read_bytes(index_rel))
        index = Index.restore(path)
    index.expansion_search = max(expansion_search, k)
    q = np.asarray(queries, dtype=np.float32)
    found = index.search(q, k)
    keys = np.asarray(found.keys).reshape(len(q), -1).astype(np.int64)
    sims = 1.0 - np.asarray(found.distances, dtype=np.float64).reshape(len(q), -1)
    best: dict[int, tuple[float, int]] = {}
    for query in range(len(q)):
        for key, sim in zip(keys[query], sims[query], strict=True):
            if key < 0 or key >= meta["n_clips"]:  # usearch pads missing results with a sentinel key
                continue
            if key not in best or sim > best[key][0]:
                best[int(key)] = (float(sim), query)
    rows = np.array(sorted(best, key=lambda r: (-best[r][0], r))[:k], dtype=np.int64)
    return rows, np.array([best[r][0] for r in rows], dtype=np.float32), np.array([best[r][1] for r in rows],
                                                                                   dtype=np.int64)
