"""The run's output folder: atomic writes under deterministic names, on local disk or object storage.

A local write goes to a temporary name in the same folder and is renamed into place; a write to
object storage is a single PUT. Either way a reader sees a whole file or none, so a crashed task
leaves nothing half-written, and a retried task overwrites instead of duplicating.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pandas as pd

from pipelines.errors import StorageError

__all__ = ["OutputLocation"]


class OutputLocation:
    """A folder (path or fsspec URL) with atomic file writes relative to it."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open output location {url}: {exc}") from exc
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            self.root = os.path.abspath(self.root)
            self.url = self.root

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state):
        self.__init__(state["url"], state["storage_options"])

    def path(self, rel: str) -> str:
        """File-system path of ``rel`` (no protocol)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def url_of(self, rel: str) -> str:
        """URL of ``rel`` (with the protocol, for zarr and xarray)."""
        return posixpath.join(self.url, rel) if rel else self.url

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically."""
        target = self.path(rel)
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = f"{target}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            else:
                self.fs.pipe_file(target, data)  # one PUT
        except OSError as exc:
            raise StorageError(f"cannot write {self.url_of(rel)}: {exc}") from exc

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def write_parquet(self, rel: str, df: pd.DataFrame) -> None:
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.read_bytes(rel)))

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly in folder ``rel``; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def read_parquet_folder(self, rel: str) -> pd.DataFrame:
        """All Parquet files under ``rel`` (recursively, hive partitions as columns)."""
        files = sorted(self.fs.glob(self.path(rel) + "/**/*.parquet"))
        frames = []
        for f in files:
            df = pd.read_parquet(io.BytesIO(self.fs.cat_file(f)))
            parts = posixpath.relpath(posixpath.dirname(f), self.path(rel)).split("/")
            for part in parts:
                if "=" in part:
                    key, value = part.split("=", 1)
                    df.insert(0, key, value)
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def remove_all(self) -> None:
        """Delete everything under the location (used to start a run over)."""
        if self.fs.exists(self.root):
            for entry in self.fs.ls(self.root, detail=False):
                self.fs.rm(entry, recursive=True)
