"""Embeddings at archive scale: what they cost to write, to search and to score, in one invocation.

- ``store``: ``opso run`` with one BirdNET detector over the BirdNET benchmark archive (48 kHz,
  ``birdnet_throughput.py``'s), with ``embeddings: false`` and ``true``, alternating: the CPU-seconds the
  embeddings add, audio-hours per CPU-hour of each, and the store's bytes per audio hour. Also the
  precision float16 costs: the largest change of a cosine similarity between stored (float16) and
  float32 embeddings, over pairs of the run's windows.
- ``search``: ``--n`` generated vectors (1,024 values, clustered, float16) in a store laid out as a run's
  (chunks of 2,048): the exact scan (:func:`pipelines.embeddings.search.search_vectors`) on a local Dask
  cluster of ``--workers`` x 1 thread, one query and 10 queries per scan.
- ``index``: the approximate index (usearch HNSW, float16, cosine, as ``opso index`` builds it): build
  time and memory, query latency, recall@100 against the exact scan (10 queries).
- ``linear``: scoring every vector of the store with a linear classifier (1 and 10 classes), chunk by
  chunk as the ``linear`` stage does, on the same cluster.
- ``hoplite``: perch-hoplite 1.0.2 (its own environment, ``.bench/perch-hoplite-1.0.2``, made by
  ``--create-env``) on the first ``--hoplite-n`` vectors: its in-memory database's insert, its
  brute-force search and its USearch index, against opso's exact scan and index on the same vectors
  (``perch_hoplite_search.py``, beside this script, runs hoplite's side).

    python benchmarks/embeddings_search.py [--only store,search,index,linear,hoplite] [--n 1000000]
                                           [--workers 2] [--repeats 3] [--create-env]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from birdnet_throughput import ensure_archive
from versus_opensoundscape import alternate, ensure_venv, median, run

from pipelines.embeddings.index import ADD_BATCH, CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = ("store", "search", "index", "linear", "hoplite")
DIM = 1024
CHUNK = 2048
HOPLITE_PACKAGES = ["perch-hoplite==1.0.2"]


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def store_table(args, work: Path) -> None:
    import yaml

    archive = ensure_archive(work, args.recorders, args.files_per_recorder, args.minutes, 48000)
    hours = args.recorders * args.files_per_recorder * args.minutes / 60
    configs = {}
    for embeddings in (False, True):
        out = work / f"embeddings-run-{'with' if embeddings else 'without'}"
        path = work / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump({
            "input": {"url": str(archive)}, "output": {"url": str(out)}, "spectrogram": {"store": "none"},
            "birdnet": [{"name": "birds", "embeddings": embeddings}],
            "cluster": {"kind": "local", "n_workers": args.workers, "threads_per_worker": 1}}))
        configs[embeddings] = (path, out)
    opso = Path(sys.executable).parent / "opso"
    without, with_ = alternate(
        args.repeats,
        lambda: run([str(opso), "-q", "run", str(configs[False][0]), "--overwrite", "--no-progress"]),
        lambda: run([str(opso), "-q", "run", str(configs[True][0]), "--overwrite", "--no-progress"]))
    cpu = (median([r[1] for r in without]), median([r[1] for r in with_]))
    store = configs[True][1] / "embeddings.zarr" / "birdnet-birds"
    size = _folder_bytes(store)
    print(f"\nBirdNET over {hours:g} audio hours (48 kHz), {args.workers} workers x 1 thread, medians of {args.repeats}")
    print(f"{'measure':<46} {'no embeddings':>14} {'embeddings':>11} {'ratio':>8}")
    print(f"{'CPU s, all processes':<46} {cpu[0]:>14.1f} {cpu[1]:>11.1f} {cpu[1] / cpu[0]:>7.2f}x")
    print(f"{'audio-hours per CPU-hour':<46} {hours / cpu[0] * 3600:>14.1f} {hours / cpu[1] * 3600:>11.1f}")
    print(f"embeddings.zarr: {size / hours / 1e6:.2f} MB per audio hour ({size / 1e6:.1f} MB; float16, zstd; raw "
          f"1,200 windows x 1,024 x 2 B = 2.46 MB per audio hour without overlap)")
    _float16_drift(configs[True][1], archive)


def _float16_drift(run_dir: Path, archive: Path) -> None:
    """Cosine similarities from the stored float16 embeddings against float32 ones from the model."""
    import xarray as xr

    from opso_core.audio_info import audio_file_info
    from pipelines.birdnet import model
    from pipelines.birdnet.windows import read_windows

    ds = xr.open_zarr(run_dir / "embeddings.zarr" / "birdnet-birds")
    rows = np.arange(0, min(ds.sizes["clip"], 256))
    files, starts = ds["file"].values[rows].tolist(), ds["start_time"].values[rows]
    exact = []
    for file in dict.fromkeys(files):
        mine = [i for i, f in enumerate(files) if f == file]
        samples = read_windows(file, starts[mine], info=audio_file_info(file))
        exact.append(model.predict(samples, embeddings=True)[1])
    exact = np.concatenate(exact).astype(np.float64)
    stored = np.asarray(ds["embedding"].values[rows], dtype=np.float64)

    def cosines(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T

    drift = np.abs(cosines(stored) - cosines(exact)).max()
    print(f"float16: the largest change of a cosine similarity over {len(rows)}x{len(rows)} window pairs: {drift:.1e}")


def ensure_vectors(work: Path, n: int) -> Path:
    """A store of ``n`` generated float16 vectors laid out as a run's (made once per ``n``)."""
    from pipelines.driver.clip_plan import ClipRange
    from pipelines.outputs.embedding_store import create_embedding_store, write_embeddings
    from pipelines.outputs.location import OutputLocation

    root = work / f"vectors-{n}"
    marker = root / "done.json"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"generating {n:,} vectors of {DIM} values ...", flush=True)
    location = OutputLocation(str(root))
    create_embedding_store(location, "birdnet:bench", n, n_features=DIM, clips_per_chunk=CHUNK,
                           attrs={"model": "generated"})
    rng = np.random.default_rng(0)
    centres = np.abs(rng.normal(size=(1000, DIM))).astype(np.float32)  # non-negative, like BirdNET's
    step = CHUNK * 32
    for a in range(0, n, step):
        b = min(n, a + step)
        x = centres[rng.integers(0, len(centres), b - a)] + 0.6 * np.abs(rng.normal(size=(b - a, DIM)))
        write_embeddings(location, "birdnet:bench", ClipRange(a, b), x.astype(np.float16), clips_per_chunk=CHUNK)
    marker.write_text(json.dumps({"n": n}))
    return root


def _open(root: Path):
    import xarray as xr

    return xr.open_zarr(root / "embeddings.zarr" / "birdnet-bench", consolidated=True)["embedding"].data


def _queries(data, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(data.shape[0], count, replace=False))
    picked = np.asarray(data[rows].compute(), dtype=np.float32)
    return picked + 0.05 * rng.normal(size=picked.shape).astype(np.float32)


def search_table(args, work: Path, client) -> None:
    from pipelines.embeddings.search import search_vectors

    data = _open(ensure_vectors(work, args.n))
    queries = _queries(data, 10)
    search_vectors(data, queries[:1], 100, client=client)  # warm: workers import, first reads
    one, ten = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        search_vectors(data, queries[:1], 100, client=client)
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        search_vectors(data, queries, 100, client=client)
        ten.append(time.perf_counter() - t)
    gb = args.n * DIM * 2 / 1e9
    print(f"\nexact search over {args.n:,} vectors x {DIM} (float16, {gb:.2f} GB), {args.workers} workers x 1 thread, "
          f"chunks of {CHUNK}; medians of {args.repeats}")
    print(f"  1 query per scan:   {median(one):6.2f} s  ({1 / median(one):.2f} queries/s; {gb / median(one):.2f} GB/s)")
    print(f"  10 queries per scan: {median(ten):6.2f} s  ({10 / median(ten):.2f} queries/s)")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def index_table(args, work: Path, client) -> None:
    from usearch.index import Index

    from pipelines.embeddings.search import search_vectors

    data = _open(ensure_vectors(work, args.n))
    queries = _queries(data, 10)
    before = _rss_mb()
    index = Index(ndim=DIM, metric="cos", dtype="f16", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)
    t = time.perf_counter()
    for first in range(0, args.n, ADD_BATCH):  # as opso index adds them
        x = np.asarray(data[first:first + ADD_BATCH].compute(), dtype=np.float32)
        index.add(np.arange(first, first + len(x), dtype=np.uint64), x, threads=os.cpu_count() or 1)
    build = time.perf_counter() - t
    index.expansion_search = EXPANSION_SEARCH
    latencies, recalls = [], []
    for q in queries:
        exact, _, _ = search_vectors(data, q[None, :], 100, client=client)
        t = time.perf_counter()
        found = index.search(q, 100)
        latencies.append(time.perf_counter() - t)
        recalls.append(len(set(exact.tolist()) & set(np.asarray(found.keys).tolist())) / 100)
    print(f"\napproximate index (usearch HNSW, cosine, float16, connectivity {CONNECTIVITY}, expansion "
          f"{EXPANSION_ADD}/{EXPANSION_SEARCH}, as opso index) of {args.n:,} vectors")
    print(f"  build: {build:.1f} s ({args.n / build:,.0f} vectors/s on {os.cpu_count()} threads); driver peak RSS "
          f"grew {max(0.0, _rss_mb() - before):,.0f} MB")
    print(f"  query: median {1e3 * median(latencies):.2f} ms; recall@100 against the exact scan: mean "
          f"{np.mean(recalls):.3f}, worst {min(recalls):.2f}")


def linear_table(args, work: Path, client) -> None:
    import dask

    from pipelines.embeddings.linear import LinearModel

    data = _open(ensure_vectors(work, args.n))
    rng = np.random.default_rng(2)
    for n_classes in (1, 10):
        model = LinearModel(tuple(f"c{i}" for i in range(n_classes)), rng.normal(size=(n_classes, DIM)).astype(np.float32),
                            np.zeros(n_classes, np.float32), np.zeros(DIM, np.float32), np.ones(DIM, np.float32),
                            "birdnet:bench", "", {})
        parts = [dask.delayed(lambda b, m=model: int((m.scores(np.asarray(b, dtype=np.float32)) >= 0.5).sum()))(block)
                 for block in data.to_delayed().ravel()]
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            client.gather(client.compute(parts))
            times.append(time.perf_counter() - t)
        print(f"linear classifier, {n_classes} class(es), over {args.n:,} stored vectors (read + score): "
              f"{median(times):.2f} s ({args.n / median(times):,.0f} vectors/s)")


def hoplite_table(args, work: Path) -> None:
    from usearch.index import Index

    from pipelines.embeddings.search import search_vectors

    python = ensure_venv(REPO / ".bench" / "perch-hoplite-1.0.2", args.create_env, HOPLITE_PACKAGES,
                         "no perch-hoplite environment at .bench/perch-hoplite-1.0.2; add --create-env",
                         "about 3 minutes")
    script = Path(__file__).with_name("perch_hoplite_search.py")  # hoplite's side, run in its environment
    n = min(args.hoplite_n, args.n)
    data = _open(ensure_vectors(work, args.n))
    vectors = np.asarray(data[:n].compute(), dtype=np.float16)
    queries = _queries(data[:n], 5)
    np.save(work / "hoplite-vectors.npy", vectors)
    np.save(work / "hoplite-queries.npy", queries)
    wall, _, out = run([str(python), str(script), "--vectors", str(work / "hoplite-vectors.npy"), "--queries",
                        str(work / "hoplite-queries.npy"), "--k", "100", "--approximate"])
    theirs = json.loads(out.strip().splitlines()[-1])
    ours_exact = []
    agree = []
    for q, keys in zip(queries, theirs["brute_keys"], strict=True):
        t = time.perf_counter()
        rows, _, _ = search_vectors(vectors, q[None, :], 100)
        ours_exact.append(time.perf_counter() - t)
        agree.append(len(set(rows.tolist()) & set(keys)) / 100)
    index = Index(ndim=DIM, metric="cos", dtype="f16", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)
    t = time.perf_counter()
    for first in range(0, n, ADD_BATCH):
        index.add(np.arange(first, min(n, first + ADD_BATCH), dtype=np.uint64),
                  vectors[first:first + ADD_BATCH].astype(np.float32), threads=os.cpu_count() or 1)
    build = time.perf_counter() - t
    index.expansion_search = EXPANSION_SEARCH
    latencies = []
    for q in queries:
        t = time.perf_counter()
        index.search(q, 100)
        latencies.append(time.perf_counter() - t)
    print(f"\nperch-hoplite 1.0.2 (own environment) vs opso on the same {n:,} vectors, 5 queries, top 100")
    print(f"{'measure':<44} {'opso':>10} {'hoplite':>10} {'opso gain':>10}")
    h_brute = median(theirs["brute_query_s"])
    print(f"{'exact search, s per query (in memory)':<44} {median(ours_exact):>10.3f} {h_brute:>10.3f} "
          f"{h_brute / median(ours_exact):>9.2f}x")
    print(f"{'loading the vectors (hoplite: insert), s':<44} {'-':>10} {theirs['insert_s']:>10.1f}")
    if "approx_build_s" in theirs:
        print(f"{'approximate index build, s':<44} {build:>10.1f} {theirs['approx_build_s']:>10.1f} "
              f"{theirs['approx_build_s'] / build:>9.2f}x")
        h_q = median(theirs["approx_query_s"])
        print(f"{'approximate query, ms':<44} {1e3 * median(latencies):>10.2f} {1e3 * h_q:>10.2f} "
              f"{h_q / median(latencies):>9.2f}x")
    print(f"exact results agree with hoplite's brute force: mean overlap {np.mean(agree):.3f} of the top 100 "
          f"({theirs.get('notes', '')})")
    print(f"(whole hoplite process: {wall:.1f} s wall)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / ".bench/work"), help="archives, stores and runs [.bench/work]")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated: {','.join(WORKLOADS)}")
    parser.add_argument("--n", type=int, default=1_000_000, help="generated vectors [1,000,000]")
    parser.add_argument("--hoplite-n", type=int, default=50_000, help="vectors given to perch-hoplite [50,000]")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recorders", type=int, default=2)
    parser.add_argument("--files-per-recorder", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--create-env", action="store_true", help="create perch-hoplite's environment if missing")
    args = parser.parse_args()
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores")
    if "store" in only:
        store_table(args, work)
    if {"search", "index", "linear"} & set(only):
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            if "search" in only:
                search_table(args, work, client)
            if "index" in only:
                index_table(args, work, client)
            if "linear" in only:
                linear_table(args, work, client)
    if "hoplite" in only:
        hoplite_table(args, work)


if __name__ == "__main__":
    main()
