#!/usr/bin/env python
"""Golden manifest of opso pipeline output folders, and a comparison of two manifests.

    python golden_manifest.py RUN_FOLDER [RUN_FOLDER...] --out manifest.json [--save-tables DIR]
           [--replace OLD=TOKEN ...] [--aux NAME=PATH ...]
    python golden_manifest.py --compare A.json B.json [--ignore GLOB ...]

Standalone: imports only numpy, pandas, pyarrow, xarray (never opso's own code), so the same script
reads the outputs of the old and of the new code.

What a manifest holds, per run folder (everything below is compared, except the "info" sections):

- ``files``: the sorted relative paths of every file (``_lock/`` excluded: the run lock is
  per-process state with pids, hosts, lease ids and times);
- ``parquet_files``: per .parquet file: rows, column names and pandas dtypes, the Arrow schema
  (without metadata), ``sha256`` of the table sorted by all columns, ``sha256_as_stored`` of the
  table in its stored row order;
- ``tables``: per folder holding .parquet files (``scores/detector=X``, ``detections``,
  ``localizations``), the same for all its files concatenated, then sorted by all columns (so the
  split into part files does not matter);
- ``zarr``: per ``*.zarr`` store (opened with ``xr.open_zarr(path, consolidated=True)``): dataset
  attrs, dims, and per variable and coordinate: dims, shape, dtype, attrs, sha256 of the decoded
  values, sha256 of the stored (undecoded) values and the stored encoding (dtype, chunks,
  compressors, filters, fill value, scale/offset), plus a few statistics;
- ``run_json``: run.json with its volatile keys removed (see VOLATILE_RUN_KEYS; the dropped key
  paths are printed and kept in info.run_json_dropped) and its ``fingerprint`` replaced by the string
  ``"= sha256(config - output.url - output.lease_s)[:16]"`` when it is exactly that hash of the
  recorded config (the rule of ace722c), since for the demo the config holds the run folder's path;
- ``markers``: per ``_progress/**.json`` marker, its content less the keys that are timings or
  worker addresses (VOLATILE_MARKER_KEYS, and any other key ending in ``_s`` whose value is a
  float: a duration); the marker's name is in ``files``;
- ``other_files``: sha256 of every other file outside the zarr stores (text with the replacements
  below applied);
- ``aux``: (``--aux NAME=PATH``) sha256 of extra files or folders (e.g. the demo's archive).

Absolute paths: every string (cells, attrs, JSON values, text files) has the run's input url
(``config.input.url`` of run.json), the run folder itself, and any ``--replace OLD=TOKEN`` replaced
by ``<INPUT>``, ``<OUTPUT>``, ``TOKEN`` (longest first). Elided messages (``…[N characters]…``) keep
the length of the original path: compare runs whose paths have the same length.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

FORMAT = 1

#: run.json keys dropped at any depth: times, versions, hosts, wall times, per-session records
VOLATILE_RUN_KEYS = {"started", "finished", "resumed", "sessions", "versions", "host", "wall_s",
                     "stage_wall_s", "total_wall_s", "audio_hours_per_hour", "heartbeat"}
#: progress marker keys dropped: when the task ended, how long it took, which worker ran it
VOLATILE_MARKER_KEYS = {"finished", "started", "task_s", "worker", "host", "pid", "wall_s", "model_load_s",
                        "forward_s"}
FINGERPRINT_RULE = "= sha256(config - output.url - output.lease_s)[:16]"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------- paths
class Normalizer:
    def __init__(self, pairs):
        # longest first, so /a/b/archive is replaced before /a/b
        self.pairs = sorted(((old, new) for old, new in pairs if old), key=lambda p: -len(p[0]))

    def text(self, s: str) -> str:
        for old, new in self.pairs:
            s = s.replace(old, new)
        return s

    def json(self, value):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.json(v) for v in value]
        if isinstance(value, np.ndarray):
            return [self.json(v) for v in value.tolist()]
        if isinstance(value, np.generic):
            return self.json(value.item())
        if isinstance(value, float) and math.isnan(value):
            return "NaN"
        return value


def drop_keys(value, keys: set, path: str, dropped: list, durations=False):
    """``value`` without dict keys in ``keys`` (at any depth; with ``durations``, also keys ending in
    ``_s`` whose value is a float); dropped paths appended to ``dropped``."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            p = f"{path}.{k}" if path else k
            if k in keys or (durations and k.endswith("_s") and isinstance(v, float)):
                dropped.append(p)
                continue
            out[k] = drop_keys(v, keys, p, dropped, durations)
        return out
    if isinstance(value, list):
        return [drop_keys(v, keys, f"{path}[{i}]", dropped, durations) for i, v in enumerate(value)]
    return value


def canon_json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------------------- tables
def _cell(v, norm: Normalizer):
    if v is None:
        return None
    if isinstance(v, str):
        return norm.text(v)
    if isinstance(v, (list, tuple, np.ndarray, dict)):
        return canon_json(norm.json(v))
    if isinstance(v, float) and math.isnan(v):
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def canonical_frame(df: pd.DataFrame, norm: Normalizer) -> tuple[pd.DataFrame, list]:
    """(df with path strings normalized and list/array/dict cells as JSON strings, sorted by all
    columns with a fresh index; the original (column, dtype) pairs)."""
    columns = [(str(c), str(t)) for c, t in df.dtypes.items()]
    df = df.copy()
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
            out = s
            for old, new in norm.pairs:
                out = out.str.replace(old, new, regex=False)
            df[c] = out
        elif s.dtype == object:
            df[c] = pd.Series([_cell(v, norm) for v in s.tolist()], index=s.index, dtype=object)
    if len(df.columns):
        try:
            df = df.sort_values(list(df.columns), kind="mergesort", na_position="last")
        except TypeError:  # mixed types in an object column: sort on their text
            keys = df.astype(str)
            df = df.loc[keys.sort_values(list(keys.columns), kind="mergesort").index]
    return df.reset_index(drop=True), columns


def frame_hash(df: pd.DataFrame, columns: list) -> str:
    h = hashlib.sha256()
    h.update(canon_json(columns).encode())
    h.update(str(len(df)).encode())
    if len(df) and len(df.columns):
        h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _stored_order_hash(df: pd.DataFrame, norm: Normalizer, columns: list) -> str:
    df = df.copy()
    for c in df.columns:
        s = df[c]
        if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            df[c] = pd.Series([_cell(v, norm) for v in s.tolist()], index=s.index, dtype=object)
    return frame_hash(df.reset_index(drop=True), columns)


def table_entry(df: pd.DataFrame, norm: Normalizer, stored_order: bool, save_as: Path | None) -> dict:
    canon, columns = canonical_frame(df, norm)
    entry = {"rows": int(len(df)), "columns": columns, "sha256": frame_hash(canon, columns)}
    if stored_order:
        entry["sha256_as_stored"] = _stored_order_hash(df, norm, columns)
    if save_as is not None:
        save_as.parent.mkdir(parents=True, exist_ok=True)
        canon.to_pickle(save_as)
    return entry


def arrow_schema(path: Path) -> str:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path).remove_metadata()
    return str(schema)


def read_parquet_file(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    # read_table of one file: no hive partition inferred from the folder name (detector=...)
    return pq.read_table(path, partitioning=None).to_pandas()


# ---------------------------------------------------------------------------------------- zarr
def _values_hash(values: np.ndarray, norm: Normalizer) -> str:
    values = np.asarray(values)
    h = hashlib.sha256()
    h.update(f"{values.dtype}|{values.shape}|".encode())
    if values.dtype.kind in "OUT" or "String" in type(values.dtype).__name__:
        h.update(canon_json([_cell(v, norm) for v in values.ravel().tolist()]).encode())
    else:
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def _stats(values: np.ndarray) -> dict:
    values = np.asarray(values)
    if values.dtype.kind not in "fiu" or values.size == 0:
        return {}
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return {"n_nan": int((~finite).sum())}
    return {"n_nonfinite": int((~finite).sum()), "min": float(v[finite].min()), "max": float(v[finite].max()),
            "sum": float(v[finite].sum())}


def _encoding(enc: dict) -> dict:
    keep = {}
    for k in ("dtype", "chunks", "compressors", "compressor", "filters", "shards", "_FillValue", "scale_factor",
              "add_offset", "units", "calendar"):
        if k in enc:
            keep[k] = repr(enc[k]) if not isinstance(enc[k], (str, int, float, bool, type(None))) else enc[k]
            if isinstance(keep[k], float) and math.isnan(keep[k]):
                keep[k] = "NaN"
    return keep


def zarr_entry(path: Path, norm: Normalizer) -> dict:
    import xarray as xr

    ds = xr.open_zarr(path, consolidated=True)
    raw = xr.open_zarr(path, consolidated=True, mask_and_scale=False, decode_times=False)
    entry = {"dims": {str(k): int(v) for k, v in ds.sizes.items()}, "attrs": norm.json(dict(ds.attrs)),
             "variables": {}}
    for name in sorted(map(str, ds.variables)):
        var = ds[name]
        values = var.values
        raw_values = raw[name].values
        entry["variables"][name] = {
            "kind": "coord" if name in ds.coords else "data",
            "dims": list(map(str, var.dims)), "shape": list(values.shape), "dtype": str(values.dtype),
            "attrs": norm.json(dict(var.attrs)), "sha256": _values_hash(values, norm),
            "stored_dtype": str(raw_values.dtype), "stored_sha256": _values_hash(raw_values, norm),
            "encoding": _encoding(var.encoding), "stats": _stats(values)}
    return entry


# ---------------------------------------------------------------------------------------- files
def file_digest(path: Path, norm: Normalizer) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return sha256(data)
    return sha256(norm.text(text).encode())


def dir_digest(root: Path, norm: Normalizer) -> dict:
    if root.is_file():
        return {"": file_digest(root, norm)}
    return {str(p.relative_to(root)): file_digest(p, norm) for p in sorted(root.rglob("*")) if p.is_file()}


def list_files(run: Path) -> list[str]:
    out = []
    for p in run.rglob("*"):
        rel = p.relative_to(run).as_posix()
        if rel == "_lock" or rel.startswith("_lock/"):
            continue
        if p.is_file():
            out.append(rel)
    return sorted(out)


def run_manifest(run: Path, extra_pairs, save_tables: Path | None, verbose=True) -> dict:
    run = run.resolve()
    info: dict = {"run_folder": str(run)}
    run_json_raw = None
    if (run / "run.json").is_file():
        run_json_raw = json.loads((run / "run.json").read_text())
    pairs = list(extra_pairs)
    input_url = ((run_json_raw or {}).get("config") or {}).get("input", {}).get("url")
    if input_url:
        pairs.append((str(input_url).rstrip("/"), "<INPUT>"))
    pairs.append((str(run), "<OUTPUT>"))
    output_url = ((run_json_raw or {}).get("config") or {}).get("output", {}).get("url")
    if output_url and output_url.rstrip("/") != str(run):
        pairs.append((str(output_url).rstrip("/"), "<OUTPUT>"))
    norm = Normalizer(pairs)
    info["replacements"] = [list(p) for p in norm.pairs]

    files = list_files(run)
    m: dict = {"files": files, "parquet_files": {}, "tables": {}, "zarr": {}, "markers": {}, "other_files": {}}
    zarr_stores = sorted({f.split(".zarr/")[0] + ".zarr" for f in files if ".zarr/" in f})
    for store in zarr_stores:
        m["zarr"][store] = zarr_entry(run / store, norm)
    folders: dict[str, list[str]] = {}
    marker_dropped: set[str] = set()
    for rel in files:
        if any(rel.startswith(s + "/") for s in zarr_stores):
            continue
        p = run / rel
        if rel.endswith(".parquet"):
            df = read_parquet_file(p)
            entry = table_entry(df, norm, stored_order=True, save_as=None)
            entry["arrow_schema"] = arrow_schema(p)
            m["parquet_files"][rel] = entry
            folder = os.path.dirname(rel)
            if folder:
                folders.setdefault(folder, []).append(rel)
            elif save_tables is not None:
                table_entry(df, norm, False, save_tables / (rel.replace("/", "__") + ".pkl"))
        elif rel == "run.json":
            continue
        elif rel.startswith("_progress/") and rel.endswith(".json"):
            dropped: list = []
            content = drop_keys(json.loads(p.read_text()), VOLATILE_MARKER_KEYS, "", dropped, durations=True)
            marker_dropped.update(dropped)
            m["markers"][rel] = norm.json(content)
        else:
            m["other_files"][rel] = file_digest(p, norm)
    for folder, rels in sorted(folders.items()):
        frames = [read_parquet_file(run / r) for r in rels]
        nonempty = [f for f in frames if len(f)]
        df = pd.concat(nonempty, ignore_index=True) if nonempty else frames[0]
        save = save_tables / (folder.replace("/", "__") + ".pkl") if save_tables is not None else None
        m["tables"][folder] = {"n_files": len(rels), **table_entry(df, norm, False, save)}
    if run_json_raw is not None:
        dropped = []
        content = drop_keys(run_json_raw, VOLATILE_RUN_KEYS, "", dropped)
        fp = content.get("fingerprint")
        cfg = run_json_raw.get("config")
        if fp and isinstance(cfg, dict):
            public = json.loads(json.dumps(cfg))
            public.get("output", {}).pop("url", None)
            public.get("output", {}).pop("lease_s", None)
            if hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()[:16] == fp:
                content["fingerprint"] = FINGERPRINT_RULE
        m["run_json"] = norm.json(content)
        info["run_json_dropped"] = dropped
        if verbose:
            print(f"{run}: run.json: dropped {', '.join(dropped) or 'nothing'}", file=sys.stderr)
    info["marker_keys_dropped"] = sorted({d.split(".")[-1] for d in marker_dropped})
    if verbose:
        print(f"{run}: {len(files)} files, {len(m['parquet_files'])} parquet, {len(m['tables'])} table folders, "
              f"{len(m['zarr'])} zarr, {len(m['markers'])} markers (dropped marker keys: "
              f"{', '.join(info['marker_keys_dropped']) or 'none'})", file=sys.stderr)
    m["info"] = info
    return m


def make(args) -> int:
    pairs = []
    for r in args.replace:
        old, _, new = r.partition("=")
        pairs.append((old.rstrip("/"), new))
    out: dict = {"format": FORMAT, "runs": {}, "aux": {}, "info": {"argv": sys.argv,
                                                                  "versions": {"pandas": pd.__version__,
                                                                               "numpy": np.__version__}}}
    for i, folder in enumerate(args.folders):
        key = args.names[i] if args.names and i < len(args.names) else (os.path.basename(os.path.normpath(folder)))
        save = Path(args.save_tables) / key if args.save_tables else None
        out["runs"][key] = run_manifest(Path(folder), pairs, save)
    for a in args.aux:
        name, _, path = a.partition("=")
        out["aux"][name] = dir_digest(Path(path), Normalizer(pairs))
    if args.save_tables:
        out["info"]["tables_dir"] = str(Path(args.save_tables).resolve())
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------- compare
def flatten(value, prefix="", out=None):
    out = {} if out is None else out
    if isinstance(value, dict):
        if not value:
            out[prefix] = {}
        for k, v in value.items():
            flatten(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(value, list) and prefix.endswith("/files"):
        for f in value:
            out[f"{prefix}/{f}"] = "present"
    else:
        out[prefix] = value
    return out


def _short(v, n=200) -> str:
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= n else s[:n] + f"...({len(s)} chars)"


def _table_detail(a_info, b_info, run, folder) -> list[str]:
    """Where both manifests saved their canonical tables: what differs."""
    try:
        pa = Path(a_info["tables_dir"]) / run / (folder.replace("/", "__") + ".pkl")
        pb = Path(b_info["tables_dir"]) / run / (folder.replace("/", "__") + ".pkl")
        da, db = pd.read_pickle(pa), pd.read_pickle(pb)
    except Exception:
        return []
    lines = []
    if list(da.columns) != list(db.columns):
        lines.append(f"    columns {list(da.columns)} != {list(db.columns)}")
    if len(da) != len(db):
        lines.append(f"    rows {len(da)} != {len(db)}")
        return lines
    for c in sorted(set(da.columns) & set(db.columns)):
        a, b = da[c], db[c]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(np.float64, na_value=np.nan), b.to_numpy(np.float64, na_value=np.nan)
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            if not same.all():
                lines.append(f"    column {c}: {int((~same).sum())} rows differ, max |diff| "
                             f"{np.nanmax(np.abs(x - y)):.3g}")
        else:
            neq = ~(a.astype(str) == b.astype(str))
            if neq.any():
                i = int(np.argmax(neq.to_numpy()))
                lines.append(f"    column {c}: {int(neq.sum())} rows differ, e.g. {a.iloc[i]!r} != {b.iloc[i]!r}")
    return lines


def compare(path_a: str, path_b: str, ignore: list[str]) -> int:
    A, B = json.loads(Path(path_a).read_text()), json.loads(Path(path_b).read_text())
    fa = {k: v for k, v in flatten({"runs": A.get("runs", {}), "aux": A.get("aux", {})}).items() if "/info/" not in k}
    fb = {k: v for k, v in flatten({"runs": B.get("runs", {}), "aux": B.get("aux", {})}).items() if "/info/" not in k}
    diffs, ignored = [], 0
    table_diffs = set()
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, "<absent>"), fb.get(key, "<absent>")
        if va == vb:
            continue
        if any(fnmatch.fnmatchcase(key, pat) for pat in ignore):
            ignored += 1
            continue
        diffs.append(f"{key}: {_short(va)} != {_short(vb)}")
        parts = key.split("/")
        if len(parts) > 3 and parts[0] == "runs" and parts[2] == "tables":
            table_diffs.add((parts[1], "/".join(parts[3:-1])))
    for line in diffs:
        print(line)
    for run, folder in sorted(table_diffs):
        detail = _table_detail(A.get("info", {}), B.get("info", {}), run, folder)
        if detail:
            print(f"table {run}/{folder}:")
            print("\n".join(detail))
    n_keys = len(set(fa) | set(fb))
    print(f"{path_a} vs {path_b}: {len(diffs)} difference(s) in {n_keys} entries"
          + (f" ({ignored} ignored by --ignore)" if ignored else ""))
    return 1 if diffs else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", help="run output folders")
    p.add_argument("--out", help="manifest JSON to write")
    p.add_argument("--names", nargs="*", help="key per run folder (default: the folder's name)")
    p.add_argument("--replace", action="append", default=[], metavar="OLD=TOKEN",
                   help="also replace this path prefix in every string")
    p.add_argument("--aux", action="append", default=[], metavar="NAME=PATH",
                   help="also record sha256 of this file or folder's files (paths normalized in text files)")
    p.add_argument("--save-tables", metavar="DIR", help="keep the canonical tables (pickles) for detailed diffs")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"))
    p.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                   help="--compare: ignore differences in flattened keys matching this glob "
                        "(e.g. 'runs/*/run_json/summary/n_sessions')")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare, args.ignore)
    if not args.folders or not args.out:
        p.error("give RUN_FOLDER(s) and --out, or --compare A B")
    return make(args)


if __name__ == "__main__":
    sys.exit(main())
