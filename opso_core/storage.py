"""Opening local paths and fsspec URLs (``s3://``, ``gs://``, ``file://``, ``memory://``) the same way."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["is_local", "local_path", "open_binary", "file_size_bytes"]


def _protocol(path: str) -> str | None:
    if "://" in path:
        return path.split("://", 1)[0].lower()
    return None


def is_local(path) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return _protocol(os.fspath(path)) in (None, "file", "local")


def local_path(path) -> str:
    """The local file-system path of a plain path or ``file://`` URL."""
    path = os.fspath(path)
    if _protocol(path) in ("file", "local"):
        return path.split("://", 1)[1]
    return path


@contextlib.contextmanager
def open_binary(path, storage_options: dict[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """Open a local path or fsspec URL for binary, seekable reading.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL.
    storage_options : dict, optional
        Keyword arguments for the fsspec file system (credentials, ``client_kwargs``, ...).

    Yields
    ------
    file-like
        A seekable binary file object; remote files are read lazily in blocks.
    """
    path = os.fspath(path)
    if is_local(path):
        with open(local_path(path), "rb") as f:
            yield f
        return
    import fsspec

    with fsspec.open(path, "rb", **(storage_options or {})) as f:
        yield f


def file_size_bytes(path, storage_options: dict[str, Any] | None = None) -> int:
    """Size of a local file or fsspec object in bytes."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.getsize(local_path(path))
    import fsspec

    fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return int(fs.size(fs_path))
