#!/usr/bin/env python
"""perch-hoplite 1.0.2's embedding search, run in its own environment by embeddings_search.py (--only hoplite).

Run with the venv's python:
  .bench/perch-hoplite-1.0.2/bin/python benchmarks/perch_hoplite_search.py \
      --vectors V.npy --queries Q.npy --k 100 [--approximate]

V.npy: (N, D) float16/float32 database vectors; Q.npy: (q, D) queries.
Prints ONE JSON object on stdout (everything else goes to stderr).

Similarity is COSINE. hoplite's default score function is 'dot'
(score_functions.numpy_dot) and its USearch index uses metric 'IP'
(1 - inner product), so we L2-normalise database vectors and queries up front
(in float32, before any cast) and then use dot product everywhere:
dot(unit_v, unit_q) == cos(v, q). Normalisation time is NOT in insert_s.

APIs used:
  brute force : in_mem_impl.InMemoryGraphSearchDB.create(embedding_dim, embedding_dtype)
                .insert_recording(...), .insert_windows_batch(..., handle_duplicates='allow')
                .search(q, k, approximate=False, score_fn_name='dot', batch_size, max_workers)
                  -> brutalism.threaded_brute_search   (or --brute single:
                     brutalism.brute_search(db, q, k, score_fn=numpy_dot))
  approximate : sqlite_usearch_impl.SQLiteUSearchDB.create(db_path, usearch_cfg)
                with db_loader-style get_default_usearch_config(D)
                (float16 HNSW, metric IP, expansion_add 256, expansion_search 128),
                .insert_windows_batch(..., handle_duplicates='allow'),
                .search(q, k, approximate=True, score_fn_name='dot')
                  -> usearch Index.search + rerank by exact dot on stored f16.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def l2_normalise(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, dtype=np.float32)
  n = np.linalg.norm(x, axis=-1, keepdims=True)
  n[n == 0] = 1.0
  return x / n


def safe_batch_size(n: int, k: int, requested: int) -> int:
  """threaded_brute_search calls np.argpartition(scores, k) on every batch,
  which raises if a batch has <= k rows (e.g. the last, partial batch).
  Pick a batch size where every batch has > k rows."""
  bs = max(requested, k + 1)
  if n <= bs:
    return bs  # single batch; needs n > k (checked by caller)
  while 0 < n % bs <= k:
    bs += 1
  return bs


def keys_from_results(results, id_to_row):
  # TopKSearchResults iterates best-first.
  return [int(id_to_row[int(r.window_id)]) for r in results]


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--vectors', required=True)
  p.add_argument('--queries', required=True)
  p.add_argument('--k', type=int, default=100)
  p.add_argument('--approximate', action='store_true',
                 help='also build/query the SQLite+USearch (HNSW) DB')
  p.add_argument('--dtype', choices=['float32', 'float16'], default='float32',
                 help='dtype the vectors are cast to before insertion into the '
                      'in-memory DB (hoplite\'s embedding_dtype default is '
                      'float16; InMemoryGraphSearchDB stores arrays as given)')
  p.add_argument('--brute', choices=['threaded', 'single'], default='threaded',
                 help="threaded = db.search(approximate=False) -> "
                      "threaded_brute_search (hoplite's default path); "
                      'single = brutalism.brute_search')
  p.add_argument('--workers', type=int, default=8,
                 help='max_workers for threaded_brute_search (lib default 8)')
  p.add_argument('--batch-size', type=int, default=None,
                 help='brute batch size (lib defaults: 1024 threaded, 4096 single)')
  p.add_argument('--workdir', default=None,
                 help='parent dir for the temporary SQLite/USearch DB '
                      '(default: system temp dir); deleted afterwards')
  args = p.parse_args()

  from perch_hoplite.db import brutalism, in_mem_impl, score_functions, sqlite_usearch_impl

  V = np.load(args.vectors, mmap_mode='r')
  Q = np.load(args.queries)
  if Q.ndim == 1:
    Q = Q[None, :]
  n, d = V.shape
  k = args.k
  if Q.shape[1] != d:
    raise SystemExit(f'dim mismatch: V {V.shape} Q {Q.shape}')
  if n <= k:
    raise SystemExit('need N > k')
  log(f'N={n} D={d} q={len(Q)} k={k} V.dtype={V.dtype}')

  # Cosine -> dot on unit vectors (see module docstring).
  Vn = l2_normalise(V)
  Qn = l2_normalise(Q)
  store_dtype = np.float32 if args.dtype == 'float32' else np.float16
  Vs = Vn.astype(store_dtype, copy=False)
  del Vn

  out = {}
  notes = [
      'cosine similarity via L2-normalised vectors + hoplite dot-product '
      'scoring (normalisation not timed)',
      f'in-mem DB storage dtype={args.dtype}',
  ]

  # ---------------- in-memory DB + brute force ----------------
  t0 = time.perf_counter()
  db = in_mem_impl.InMemoryGraphSearchDB.create(
      embedding_dim=d, embedding_dtype=store_dtype)
  rec_id = db.insert_recording(filename='bench')
  # handle_duplicates='allow' is essential: the default 'error' scans all
  # existing windows on every insert (O(N^2)). Offsets are just the row index.
  window_ids = db.insert_windows_batch(
      [{'recording_id': rec_id, 'offsets': [float(i), float(i) + 1.0]}
       for i in range(n)],
      embeddings_batch=Vs,   # each window holds a view of its row (no copy)
      handle_duplicates='allow',
  )
  out['insert_s'] = time.perf_counter() - t0
  id_to_row = {int(w): i for i, w in enumerate(window_ids)}
  log(f'in-mem insert: {out["insert_s"]:.3f}s')

  dot = score_functions.get_score_fn('dot')
  brute_s, brute_keys = [], []
  if args.brute == 'threaded':
    bs = safe_batch_size(n, k, args.batch_size or 1024)
    notes.append(f'brute: db.search(approximate=False) -> threaded_brute_search'
                 f' max_workers={args.workers} batch_size={bs}')
  else:
    bs = args.batch_size or 4096
    notes.append(f'brute: brutalism.brute_search batch_size={bs} (1 thread)')
  for qi, q in enumerate(Qn):
    t0 = time.perf_counter()
    if args.brute == 'threaded':
      res = db.search(q, k, approximate=False, score_fn_name='dot',
                      batch_size=bs, max_workers=args.workers)
    else:
      res = brutalism.brute_search(db, q, k, score_fn=dot, batch_size=bs)
    keys = keys_from_results(res, id_to_row)
    brute_s.append(time.perf_counter() - t0)
    brute_keys.append(keys)
    log(f'brute q{qi}: {brute_s[-1]:.3f}s')
  out['brute_query_s'] = brute_s
  out['brute_keys'] = brute_keys
  del db, Vs

  # ---------------- SQLite + USearch (HNSW) ----------------
  if args.approximate:
    tmp = tempfile.mkdtemp(prefix='hoplite_usearch_', dir=args.workdir)
    try:
      V16 = l2_normalise(V).astype(np.float16)  # index stores float16 anyway
      t0 = time.perf_counter()
      cfg = sqlite_usearch_impl.get_default_usearch_config(d)
      udb = sqlite_usearch_impl.SQLiteUSearchDB.create(
          db_path=os.path.join(tmp, 'db'), usearch_cfg=cfg)
      rec = udb.insert_recording(filename='bench')
      uids = udb.insert_windows_batch(
          [{'recording_id': rec, 'offsets': [float(i), float(i) + 1.0]}
           for i in range(n)],
          embeddings_batch=V16,
          handle_duplicates='allow',
      )
      out['approx_build_s'] = time.perf_counter() - t0
      log(f'usearch build: {out["approx_build_s"]:.3f}s')
      uid_to_row = {int(w): i for i, w in enumerate(uids)}
      a_s, a_keys = [], []
      for q in Qn:
        t0 = time.perf_counter()
        res = udb.search(q, k, approximate=True, score_fn_name='dot')
        keys = keys_from_results(res, uid_to_row)
        a_s.append(time.perf_counter() - t0)
        a_keys.append(keys)
      out['approx_query_s'] = a_s
      out['approx_keys'] = a_keys
      notes.append(
          'approx: SQLiteUSearchDB (sqlite file in a temp dir + in-memory '
          'usearch HNSW, float16, metric IP, expansion_add=256, '
          'expansion_search=128); build_s includes per-row SQLite INSERTs and '
          'usearch add (all cores); no commit/save to disk; query includes '
          'hoplite rerank by exact dot on stored float16 vectors')
      udb.db.close()
    finally:
      shutil.rmtree(tmp, ignore_errors=True)

  out['notes'] = '; '.join(notes)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
