"""The run's output folder: atomic writes under deterministic names, on local disk or object storage.

A local write goes to a hidden temporary name in the same folder (``.<name>.tmp-<32 hex>``: a
leading dot, so pandas, pyarrow, DuckDB and ``*.parquet`` globs never read it) and is renamed into
place; the temporary is removed when the write fails (a full disk), and :mod:`pipelines.outputs.run_folder`
removes those a killed process left. A write to object storage is a single PUT. Either way a reader
sees a whole file or none, so a crashed task leaves nothing half-written, and a retried task
overwrites instead of duplicating.

Storage options get opso's time limits and fresh listings (:mod:`pipelines.outputs.storage_options`), so
no request hangs a run and no listing comes from a cache.

A location may carry the run's lease (:mod:`pipelines.outputs.run_lock`): every write and delete through it
first checks that the lease is still the run folder's, so a run that lost its lock writes nothing.

Every storage failure (missing bucket, wrong credentials, unreachable endpoint) is raised as
:class:`~pipelines.errors.StorageError` naming the URL; a missing file stays ``FileNotFoundError``.
Deleting is not here: :mod:`pipelines.outputs.run_folder` deletes only what a run wrote.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pandas as pd

from pipelines.errors import StorageError
from pipelines.outputs.storage_options import with_storage_defaults

__all__ = ["OutputLocation", "ZARR_METADATA", "parquet_frame", "temporary_name"]

#: a Zarr store's own metadata files at its top (Zarr 2 and 3; ``.zgroup`` or ``zarr.json`` marks a folder as a store)
ZARR_METADATA = (".zgroup", ".zattrs", ".zmetadata", "zarr.json")


def parquet_frame(data: bytes, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file's bytes as a DataFrame, as ``pandas.read_parquet`` reads it, but read without
    Arrow's threaded reader (``use_threads=False``): after a threaded read, pyarrow (26.0.1 here; apache/arrow
    #34314) now and then aborts the process at exit ("terminate called without an active exception", exit
    code 134), which turned finished ``opso`` commands into failures (4 of 60 runs of a one-read script
    here, 0 of 60 with this read). The conversion to pandas is pandas' own."""
    return pd.read_parquet(io.BytesIO(data), columns=columns, use_threads=False)


def temporary_name(target: str) -> str:
    """The hidden name a local write of ``target`` goes to before its rename (same folder)."""
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")


class OutputLocation:
    """A folder (path or fsspec URL) with atomic file writes relative to it.

    Parameters
    ----------
    url : str
        Local folder or fsspec URL.
    storage_options : dict, optional
        For fsspec; opso's defaults are added (:func:`~pipelines.storage_options.with_storage_defaults`).
    lease : object, optional
        The run's lease (:class:`pipelines.run_lock.Lease`): writes and deletes call its
        ``check(location)`` first, which raises when the run no longer holds the folder.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, lease=None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.lease = lease
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **with_storage_defaults(self.url,
                                                                                       self.storage_options))
        except ImportError as exc:
            raise StorageError(f"cannot open {url}: {exc} (for s3:// install the extra: pip install 'opso[s3]')") \
                from exc
        except Exception as exc:  # fsspec raises whatever its backend raises for bad options
            raise StorageError(f"cannot open {url}: {type(exc).__name__}: {exc}") from exc
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        from fsspec.asyn import AsyncFileSystem

        self._is_async = isinstance(self.fs, AsyncFileSystem)
        if self.is_local:
            self.root = os.path.abspath(self.root)
            self.url = self.root

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options, "lease": self.lease}

    def __setstate__(self, state):
        self.__init__(state["url"], state["storage_options"], state.get("lease"))

    def with_lease(self, lease) -> OutputLocation:
        """This location, writing under ``lease`` (None: unguarded)."""
        return OutputLocation(self.url, self.storage_options, lease)

    def check_lease(self) -> None:
        """Raise :class:`~pipelines.errors.RunLockLostError` if the location's lease is no longer the
        run folder's (no-op without a lease)."""
        if self.lease is not None:
            self.lease.check(self)

    def path(self, rel: str) -> str:
        """File-system path of ``rel`` (no protocol)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def url_of(self, rel: str) -> str:
        """URL of ``rel`` (with the protocol, for zarr and xarray)."""
        return posixpath.join(self.url, rel) if rel else self.url

    @contextlib.contextmanager
    def _errors(self, action: str, rel: str):
        try:
            yield
        except (FileNotFoundError, StorageError):
            raise
        except Exception as exc:  # backends raise their own types (botocore, aiohttp): one error for the user
            raise StorageError(f"cannot {action} {self.url_of(rel)}: {type(exc).__name__}: {exc}") from exc

    def exists(self, rel: str) -> bool:
        with self._errors("check", rel):
            return self.fs.exists(self.path(rel))

    def check_writable(self) -> None:
        """Write and remove a small probe file; raises :class:`StorageError` where that fails.

        Local folders the probe had to create are removed again, so a failed run leaves no trace.
        """
        rel = f".opso-write-check-{uuid.uuid4().hex}"
        created = []
        if self.is_local:
            folder = self.root
            while not os.path.exists(folder) and folder != os.path.dirname(folder):
                created.append(folder)
                folder = os.path.dirname(folder)
        self.write_bytes_unguarded(rel, b"opso")
        with self._errors("remove", rel):
            self.fs.rm_file(self.path(rel))
            for folder in created:  # deepest first
                os.rmdir(folder)

    def write_bytes(self, rel: str, data: bytes, *, in_place_when_full: bool = False) -> None:
        """Write ``data`` to ``rel`` atomically (under the location's lease, if it has one).

        ``in_place_when_full``: on a full local disk, overwrite an existing ``rel`` in place instead (no
        temporary, so no new space for a file of about the same size; not atomic). For the small state
        files whose last word matters most: ``run.json`` when a run stops, the lock.
        """
        self.check_lease()
        self.write_bytes_unguarded(rel, data, in_place_when_full=in_place_when_full, deadline_s=self._deadline_s())

    def _deadline_s(self) -> float | None:
        """Seconds a write to object storage may take, with its retries, under the location's lease
        (its write deadline, :mod:`pipelines.outputs.run_lock`): a write that passed the lease check lands in
        time, or fails. None without a lease."""
        return None if self.lease is None else self.lease.write_deadline_s

    def deadline(self, deadline_s: float | None) -> dict:
        """Keyword arguments that give a call on the location's file system ``deadline_s`` seconds to finish
        (fsspec's ``timeout`` of asynchronous, object-storage file systems; none for local disks)."""
        return {"timeout": deadline_s} if deadline_s and self._is_async else {}

    def write_bytes_unguarded(self, rel: str, data: bytes, *, in_place_when_full: bool = False,
                              deadline_s: float | None = None) -> None:
        """Write ``data`` to ``rel`` atomically without checking the lease (the lock's own files);
        on object storage the PUT and its retries end within ``deadline_s`` seconds or fail."""
        target = self.path(rel)
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = temporary_name(target)
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, target)
                except BaseException as exc:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    if not (in_place_when_full and isinstance(exc, OSError) and exc.errno == errno.ENOSPC
                            and os.path.isfile(target)):
                        raise
                    with open(target, "r+b") as f:  # the blocks the file already has
                        f.write(data)
                        f.truncate()
            else:
                self.fs.pipe_file(target, data, **self.deadline(deadline_s))  # one PUT
        except Exception as exc:  # backends raise their own types: one error for the user
            from fsspec.exceptions import FSTimeoutError

            if isinstance(exc, FSTimeoutError):
                raise StorageError(f"cannot write {self.url_of(rel)}: {len(data):,} bytes did not reach the storage "
                                   f"within {deadline_s:g} s (output.lease_s / 4, so that a run that lost its lock "
                                   "cannot write late); for a slow link, raise output.lease_s") from exc
            raise StorageError(f"cannot write {self.url_of(rel)}: {type(exc).__name__}: {exc}") from exc

    def read_bytes(self, rel: str) -> bytes:
        with self._errors("read", rel):
            return self.fs.cat_file(self.path(rel))

    def write_json(self, rel: str, obj, *, in_place_when_full: bool = False) -> None:
        """Write ``obj`` as JSON (see :meth:`write_bytes`)."""
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(),
                         in_place_when_full=in_place_when_full)

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def write_parquet(self, rel: str, df, schema=None) -> None:
        """Write ``df`` (a DataFrame, or an Arrow table) to ``rel`` atomically, with the Arrow ``schema`` if
        given (types of empty tables)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if isinstance(df, pa.Table):
            table = df if schema is None else df.cast(schema)
        else:
            table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str) -> pd.DataFrame:
        """The Parquet file ``rel`` as a DataFrame (:func:`parquet_frame`)."""
        return parquet_frame(self.read_bytes(rel))

    def read_arrow(self, rel: str, columns: list[str] | None = None):
        """The Parquet file ``rel`` (its ``columns``, default all) as a ``pyarrow.Table`` (no pandas
        conversion); read without Arrow's threaded reader, as :func:`parquet_frame`."""
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.read_bytes(rel)), columns=columns, use_threads=False)

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly in folder ``rel``; empty if it does not exist."""
        try:
            with self._errors("list", rel):
                entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def find(self, rel: str) -> list[str]:
        """Paths relative to the location of every file under folder ``rel`` (recursively)."""
        root = self.path(rel)
        try:
            with self._errors("list", rel):
                found = self.fs.find(root)
        except FileNotFoundError:
            return []
        return sorted(posixpath.relpath(f, self.root) for f in found)

    #: files deleted per request (and per lease check)
    DELETE_BATCH = 1000

    def remove_files(self, rels: list[str]) -> None:
        """Delete these files (paths relative to the location); used by :mod:`pipelines.outputs.run_folder` only.
        Under a lease, in batches, each checked and (on object storage) within the write deadline."""
        for i in range(0, len(rels), self.DELETE_BATCH):
            self.check_lease()
            with self._errors("delete files under", ""):
                self.fs.rm([self.path(r) for r in rels[i : i + self.DELETE_BATCH]],
                           **self.deadline(self._deadline_s()))

    def remove_tree(self, rel: str) -> None:
        """Delete folder ``rel`` and everything in it; used by :mod:`pipelines.outputs.run_folder` only.

        A Zarr store's own metadata (``rel/.zgroup``, ``rel/zarr.json``, ...) goes last, so a deletion cut
        short still leaves a store that the next run recognises and deletes."""
        files = self.find(rel)
        top = {f"{rel}/{name}" for name in ZARR_METADATA}
        self.remove_files([f for f in files if f not in top] + [f for f in files if f in top])
        if self.is_local and os.path.isdir(self.path(rel)):
            with self._errors("delete", rel):
                for folder, _, _ in sorted(os.walk(self.path(rel)), key=lambda entry: -len(entry[0])):
                    os.rmdir(folder)  # empty now: only the folders are left

    def read_parquet_folder(self, rel: str) -> pd.DataFrame:
        """All Parquet files under ``rel`` (recursively, hive partitions as columns)."""
        with self._errors("list", rel):
            files = sorted(self.fs.glob(self.path(rel) + "/**/*.parquet"))
        frames = []
        for f in files:
            with self._errors("read", posixpath.relpath(f, self.root)):
                data = self.fs.cat_file(f)
            df = parquet_frame(data)
            parts = posixpath.relpath(posixpath.dirname(f), self.path(rel)).split("/")
            for part in parts:
                if "=" in part:
                    key, value = part.split("=", 1)
                    df.insert(0, key, value)
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
