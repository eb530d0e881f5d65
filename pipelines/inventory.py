"""Inventory: list the archive's audio files and read their headers (never their samples).

Each file becomes one row: ``file, recorder, start_time_utc, sample_rate, channels, frames,
duration_s, size_bytes, status, error``. ``status`` is ``ok``, ``truncated`` (readable up to where the
file was cut; analysed up to there) or ``failed`` (with the reason in ``error``). A bad file never
stops the run.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from typing import Any

import fsspec
import pandas as pd

from opso_core.aru import audiomoth_start_time, parse_audiomoth_comment, resolve_timezone
from opso_core.audio_info import audio_file_info
from opso_core.errors import ParseError
from pipelines.errors import StorageError

__all__ = ["INVENTORY_COLUMNS", "inventory_file", "inventory_files", "list_audio_files", "recorder_of",
           "start_time_of"]

INVENTORY_COLUMNS = ["file", "recorder", "start_time_utc", "sample_rate", "channels", "frames",
                     "duration_s", "size_bytes", "status", "error"]
_STAMP = re.compile(r"(?<!\d)(\d{8})[_T-](\d{6})(?!\d)")


def list_audio_files(url: str, pattern: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Sorted paths (local) or URLs (remote) of the files matching ``pattern`` under ``url``.

    Raises
    ------
    StorageError
        The location cannot be listed (missing folder or bucket, no permission).
    """
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if not fs.exists(root):
            raise StorageError(f"input location does not exist: {url}")
        if not fs.isdir(root):
            raise StorageError(f"input.url must be a folder or prefix, but {url} is a file")
        found = fs.glob(posixpath.join(root.rstrip("/"), pattern), detail=True)
    except StorageError:
        raise
    except ImportError as exc:
        raise StorageError(f"cannot open {url}: {exc} (for s3:// install the extra: pip install 'opso[s3]')") from exc
    except Exception as exc:  # storage backends raise their own types (botocore, aiohttp): one error for the user
        raise StorageError(f"cannot list {url}: {type(exc).__name__}: {exc}") from exc
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    files = [name for name, entry in found.items() if entry.get("type") != "directory"]
    if protocol in ("file", "local"):
        return sorted(files)
    return sorted(fs.unstrip_protocol(m) for m in files)


def recorder_of(path: str, rule: str = "parent_dir") -> str:
    """Recorder id of a file: its parent folder's name, or the ``recorder`` group of a regex rule."""
    if rule == "parent_dir":
        return posixpath.basename(posixpath.dirname(path.split("://", 1)[-1])) or "unknown"
    m = re.search(rule, path)
    if m is None:
        raise ParseError(f"recorder pattern {rule!r} does not match {path}")
    return m["recorder"]


def start_time_of(path: str, tags: dict, timezone: str = "UTC") -> datetime.datetime | None:
    """Recording start (UTC) from the AudioMoth comment, else from a ``YYYYMMDD_HHMMSS`` or 8-hex
    file name (read in ``timezone``); None if neither is there."""
    comment = tags.get("comment") or ""
    if comment.startswith("Recorded at"):
        try:
            return parse_audiomoth_comment(comment)["recording_start_time"].astimezone(datetime.UTC)
        except ParseError:
            pass
    name = posixpath.basename(path)
    stem = name.rsplit(".", 1)[0]
    try:
        return audiomoth_start_time(name, filename_timezone=timezone if len(stem) != 8 else "UTC", to_utc=True)
    except ParseError:
        pass
    m = _STAMP.search(stem)
    if m:
        try:
            naive = datetime.datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S")
        except ValueError:
            return None
        tz = resolve_timezone(timezone)
        local = tz.localize(naive) if hasattr(tz, "localize") else naive.replace(tzinfo=tz)
        return local.astimezone(datetime.UTC)
    return None


def inventory_file(path: str, *, storage_options=None, recorder_rule="parent_dir", timezone="UTC") -> dict:
    """One inventory row for ``path``; failures become ``status="failed"`` rows, never exceptions."""
    row: dict[str, Any] = dict.fromkeys(INVENTORY_COLUMNS)
    row["file"] = path
    try:
        row["recorder"] = recorder_of(path, recorder_rule)
        info = audio_file_info(path, storage_options=storage_options)
        row.update(sample_rate=info.sample_rate_hz, channels=info.channels, frames=info.frames,
                   duration_s=info.duration_s, size_bytes=info.size_bytes)
        row["start_time_utc"] = start_time_of(path, info.tags, timezone)
        if info.frames == 0:
            row.update(status="failed", error="AudioFormatError: the file holds no audio frames")
        elif info.truncated:
            row.update(status="truncated", error=(f"TruncatedAudio: header declares {info.declared_frames} "
                                                  f"frames, file holds {info.frames}"))
        else:
            row["status"] = "ok"
    except Exception as exc:  # a bad file must become a row, whatever went wrong
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    return row


def inventory_files(paths: list[str], *, storage_options=None, recorder_rule="parent_dir",
                    timezone="UTC") -> pd.DataFrame:
    """Inventory rows for many files (one task's batch), as a DataFrame with INVENTORY_COLUMNS."""
    rows = [inventory_file(p, storage_options=storage_options, recorder_rule=recorder_rule, timezone=timezone)
            for p in paths]
    return _as_frame(rows)


def _as_frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=INVENTORY_COLUMNS)
    df["start_time_utc"] = pd.to_datetime(df["start_time_utc"], utc=True)
    for col in ("sample_rate", "channels", "frames", "size_bytes"):
        df[col] = df[col].astype("Int64")
    df["duration_s"] = df["duration_s"].astype(float)
    for col in ("file", "recorder", "status", "error"):
        df[col] = df[col].astype(object)
    return df
