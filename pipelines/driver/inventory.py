"""Inventory: list the archive's audio files and read their headers (never their samples).

Each file becomes one row: ``file, recorder, start_time_utc, start_time_source, sample_rate,
channels, frames, duration_s, size_bytes, n_clips, status, error, warning``. ``status`` is ``ok``,
``truncated`` (readable up to where the file was cut; analysed up to there), ``no_clips`` (readable,
but shorter than one clip: nothing of it is analysed) or ``failed`` (with the reason in ``error``).
A bad file never stops the run, and a folder that cannot be listed becomes a ``failed`` row too.

``start_time_source`` says where ``start_time_utc`` came from: ``comment`` (an AudioMoth comment,
which carries its own time zone), ``file_name`` (``YYYYMMDD_HHMMSS`` or 8 hexadecimal digits, read in
``input.timezone``) or ``none``. When a file has both and they disagree by more than
:data:`START_TIME_TOLERANCE_S`, the comment is used and ``warning`` says so; ``warning`` also names
files of one recorder that share a start time (:func:`add_clip_counts_and_warnings`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import posixpath
import re
from typing import Any

import fsspec
import pandas as pd

from opso_core.aru import audiomoth_start_time, parse_audiomoth_comment, resolve_timezone
from opso_core.audio_info import audio_file_info
from opso_core.errors import ParseError
from pipelines.errors import StorageError
from pipelines.outputs.storage_options import with_storage_defaults

__all__ = ["INVENTORY_COLUMNS", "START_TIME_TOLERANCE_S", "ArchiveListing", "add_clip_counts_and_warnings",
           "archive_changes", "describe_archive_changes",
           "count_warnings", "inventory_file", "inventory_files", "inventory_part", "inventory_part_name",
           "list_archive", "read_inventory_part", "list_audio_files", "recorder_of", "start_time_of",
           "unlisted_folder_rows"]

INVENTORY_COLUMNS = ["file", "recorder", "start_time_utc", "start_time_source", "sample_rate", "channels", "frames",
                     "duration_s", "size_bytes", "n_clips", "status", "error", "warning"]
#: seconds by which a file name's start time may differ from the AudioMoth comment's without a warning
START_TIME_TOLERANCE_S = 2.0
_STAMP = re.compile(r"(?<!\d)(\d{8})[_T-](\d{6})(?!\d)")


@dataclasses.dataclass(frozen=True)
class ArchiveListing:
    """What listing the input found: the matching files (sorted) and the folders it could not list,
    as ``(folder, "ErrorType: message")``."""

    files: tuple[str, ...]
    unlisted: tuple[tuple[str, str], ...] = ()


def list_audio_files(url: str, pattern: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Sorted paths (local) or URLs (remote) of the files matching ``pattern`` under ``url``
    (:func:`list_archive` also names the folders that could not be listed).

    Raises
    ------
    StorageError
        The location cannot be listed (missing folder or bucket, no permission).
    """
    return list(list_archive(url, pattern, storage_options).files)


def list_archive(url: str, pattern: str, storage_options: dict[str, Any] | None = None) -> ArchiveListing:
    """The files matching ``pattern`` under ``url``, and the sub-folders that could not be listed
    (no permission, vanished during the listing): their files would otherwise be missing silently.

    Raises
    ------
    StorageError
        The location itself cannot be listed (missing folder or bucket, no permission).
    """
    unlisted: dict[str, str] = {}
    try:
        fs, root = fsspec.core.url_to_fs(url, **with_storage_defaults(url, storage_options))
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
    local = protocol in ("file", "local")
    if local:  # local folders can be unreadable one by one (object stores list a prefix whole, or fail)
        unlisted = _unreadable_folders(root)
    if root.rstrip("/") in unlisted:
        raise StorageError(f"cannot list {url}: {unlisted[root.rstrip('/')]}")
    return ArchiveListing(tuple(sorted(files if local else (fs.unstrip_protocol(m) for m in files))),
                          tuple(sorted((f if local else fs.unstrip_protocol(f), m) for f, m in unlisted.items())))


def archive_changes(listed, inventory_files) -> tuple[list[str], list[str]]:
    """``(new, gone)``: the files ``listed`` now (:func:`list_archive`) that a stored inventory lacks, and
    the inventory's files no longer listed (folders that could not be listed, ``file`` ending in ``/``,
    are neither), each sorted."""
    stored = {f for f in inventory_files if not str(f).endswith("/")}
    now = set(listed)
    return sorted(now - stored), sorted(stored - now)


def describe_archive_changes(new, gone, *, shown: int = 3) -> list[str]:
    """Sentences (none when nothing changed) saying what a run that keeps its stored inventory does
    with the files added to or gone from the archive since (:func:`archive_changes`)."""
    def some(files):
        return ", ".join(files[:shown]) + (f" and {len(files) - shown:,} more" if len(files) > shown else "")

    lines = []
    if new:
        lines.append(f"{len(new):,} input file(s) appeared since this run made its inventory and are NOT analysed "
                     f"({some(new)}): a run keeps the inventory it began with, so its clips and outputs stay the "
                     "same. Analyse them in another output folder (input.pattern can select them), or start over "
                     "with --overwrite")
    if gone:
        lines.append(f"{len(gone):,} file(s) of this run's inventory are no longer under input.url ({some(gone)}): "
                     "their clips not yet analysed fail to read (failures.parquet) until they are back")
    return lines


def _unreadable_folders(root: str) -> dict[str, str]:
    """``{folder: "ErrorType: message"}`` of the folders under ``root`` that cannot be listed (fsspec's
    glob passes them over in silence)."""
    unreadable: dict[str, str] = {}

    def note(exc: OSError) -> None:
        unreadable.setdefault(str(exc.filename).rstrip("/"), f"{type(exc).__name__}: {exc.strerror or exc}")

    for _ in os.walk(root, onerror=note):
        pass
    return unreadable


def unlisted_folder_rows(unlisted, recorder_rule: str = "parent_dir") -> pd.DataFrame:
    """``failed`` inventory rows for folders that could not be listed (``file`` is the folder, with a
    trailing ``/``), so the files in them are not missing silently."""
    rows = []
    for folder, message in unlisted:
        row: dict[str, Any] = dict.fromkeys(INVENTORY_COLUMNS)
        try:
            recorder = recorder_of(folder.rstrip("/") + "/_", recorder_rule)
        except ParseError:
            recorder = None
        row.update(file=folder.rstrip("/") + "/", recorder=recorder, start_time_source="none", status="failed",
                   error=f"{message} (this folder could not be listed; the recordings in it are not part of the "
                         "run: give opso's user read access, then start the run over with --overwrite, as a "
                         "resumed run keeps the inventory it has)")
        rows.append(row)
    return _as_frame(rows)


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
    return _start_times(path, tags, timezone)[0]


def _start_times(path: str, tags: dict, timezone: str) -> tuple[datetime.datetime | None, str, str | None]:
    """(start time in UTC, its source, a warning): see the module docstring."""
    from_comment = _comment_start_time(tags)
    from_name = _file_name_start_time(path, timezone)
    if from_comment is None:
        return from_name, "file_name" if from_name is not None else "none", None
    warning = None
    if from_name is not None:
        apart_s = abs((from_comment - from_name).total_seconds())
        if apart_s > START_TIME_TOLERANCE_S:
            warning = (f"{_NAME_VS_COMMENT} {from_comment:%Y-%m-%d %H:%M:%S} UTC, the file name "
                       f"{from_name:%Y-%m-%d %H:%M:%S} UTC ({_span(apart_s)} apart); the comment is used (check "
                       "input.timezone, and whether the file was renamed or the recorder's clock was set)")
    return from_comment, "comment", warning


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def _comment_start_time(tags: dict) -> datetime.datetime | None:
    comment = tags.get("comment") or ""
    if comment.startswith("Recorded at"):
        try:
            return parse_audiomoth_comment(comment)["recording_start_time"].astimezone(datetime.UTC)
        except ParseError:
            return None
    return None


def _file_name_start_time(path: str, timezone: str) -> datetime.datetime | None:
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
    row.update(file=path, start_time_source="none")
    try:
        row["recorder"] = recorder_of(path, recorder_rule)
        info = audio_file_info(path, storage_options=storage_options)
        row.update(sample_rate=info.sample_rate_hz, channels=info.channels, frames=info.frames,
                   duration_s=info.duration_s, size_bytes=info.size_bytes)
        start, source, warning = _start_times(path, info.tags, timezone)
        row.update(start_time_utc=start, start_time_source=source, warning=warning)
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


def inventory_files(paths: list[str], storage_options=None, recorder_rule="parent_dir",
                    timezone="UTC") -> pd.DataFrame:
    """Inventory rows for many files (one task's batch), as a DataFrame with INVENTORY_COLUMNS."""
    rows = [inventory_file(p, storage_options=storage_options, recorder_rule=recorder_rule, timezone=timezone)
            for p in paths]
    return _as_frame(rows)


def inventory_part_name(index: int, paths, recorder_rule: str = "parent_dir", timezone: str = "UTC") -> str:
    """The run-folder name of the inventory part of batch ``index`` (``paths``, in listing order, read with
    ``recorder_rule`` and ``timezone``): the batch's number and a hash of its files and of how they are
    read, so that a part made from another listing, or read otherwise, is not reused."""
    digest = hashlib.sha256("\n".join([*paths, f"recorder={recorder_rule}", f"timezone={timezone}"]).encode()
                            ).hexdigest()[:12]
    return f"_inventory/part-{index:09d}-{digest}.parquet"


def inventory_part(paths: list[str], storage_options, recorder_rule: str, timezone: str, location,
                   name: str) -> pd.DataFrame:
    """:func:`inventory_files` for one batch, also written to the run folder as ``name``
    (:func:`inventory_part_name`), so that a run stopped during its inventory does not read these
    headers again (runs on a worker)."""
    frame = inventory_files(paths, storage_options, recorder_rule, timezone)
    location.write_parquet(name, frame)
    return frame


def read_inventory_part(location, name: str) -> pd.DataFrame:
    """An inventory part written by :func:`inventory_part`, with the columns' types it was made with."""
    return _as_frame(location.read_parquet(name))


def _as_frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=INVENTORY_COLUMNS)
    df["start_time_utc"] = pd.to_datetime(df["start_time_utc"], utc=True)
    for col in ("sample_rate", "channels", "frames", "size_bytes", "n_clips"):
        df[col] = df[col].astype("Int64")
    df["duration_s"] = df["duration_s"].astype(float)
    for col in ("file", "recorder", "start_time_source", "status", "error", "warning"):
        df[col] = df[col].astype(object)
    return df


def add_clip_counts_and_warnings(inventory: pd.DataFrame, clips_per_file: pd.Series,
                                 shortest: str = "one clip (see clips.duration and clips.final_clip)") -> pd.DataFrame:
    """The inventory with ``n_clips`` filled, readable files without a clip marked ``no_clips``, and
    repeated start times of one recorder named in ``warning``.

    Parameters
    ----------
    inventory : pandas.DataFrame
        Rows of :func:`inventory_files` (``n_clips`` may be empty).
    clips_per_file : pandas.Series
        Clips of the run per file (:meth:`ClipIndex.clips_per_file`) (index: file); files not in it have none.
    shortest : str
        What a ``no_clips`` file is shorter than, in its message (the run's clip rule).

    Returns
    -------
    pandas.DataFrame
        A new table with the columns of :data:`INVENTORY_COLUMNS`.
    """
    out = inventory.copy()
    for col in INVENTORY_COLUMNS:
        if col not in out.columns:
            out[col] = "none" if col == "start_time_source" else None
    out = out[INVENTORY_COLUMNS]
    readable = out["status"] != "failed"
    counts = out["file"].map(clips_per_file).fillna(0).astype("int64")
    out["n_clips"] = pd.array(counts.where(readable), dtype="Int64")
    # the status is worked out afresh (an update with shorter clips may give a no_clips file clips)
    for i in out.index[(out["status"] == "no_clips") & (counts > 0)]:
        rest = [part for part in str(out.at[i, "error"] or "").split("; ") if part and not part.startswith("NoClips:")]
        out.at[i, "error"] = "; ".join(rest) if rest else None
        out.at[i, "status"] = "truncated" if rest and rest[0].startswith("TruncatedAudio:") else "ok"
    empty = readable & (counts == 0) & (out["status"] != "no_clips")
    for i in out.index[empty]:
        reason = f"NoClips: {out.at[i, 'duration_s']:.6g} s of audio is shorter than {shortest}, so nothing of it is analysed"
        previous = out.at[i, "error"]
        out.at[i, "error"] = f"{reason}; {previous}" if isinstance(previous, str) and previous else reason
        out.at[i, "status"] = "no_clips"
    # the notes made here are made anew each time (a resumed run passes its stored inventory again)
    out["warning"] = [_without_derived_notes(w) for w in out["warning"]]
    timed = out[readable & out["start_time_utc"].notna()]
    repeated = timed[timed.duplicated(["recorder", "start_time_utc"], keep=False)]
    for _, group in repeated.groupby(["recorder", "start_time_utc"], sort=False):
        for i in group.index:
            others = [f for f in group["file"] if f != out.at[i, "file"]]
            note = (f"{_REPEATED_START} {out.at[i, 'recorder']} has {len(others)} other file(s) starting at "
                    f"{out.at[i, 'start_time_utc']:%Y-%m-%d %H:%M:%S} UTC ({posixpath.basename(others[0])}"
                    f"{', ...' if len(others) > 1 else ''}): copies, or a clock that was not set")
            previous = out.at[i, "warning"]
            out.at[i, "warning"] = f"{previous}{_NOTE_SEPARATOR}{note}" if isinstance(previous, str) and previous \
                else note
    return _as_frame(out)


_NOTE_SEPARATOR = " | "
_REPEATED_START = "start time: recorder"
_NAME_VS_COMMENT = "start time: the AudioMoth comment says"


def count_warnings(inventory: pd.DataFrame) -> dict[str, int]:
    """Files per kind of start-time warning (kinds with none left out), for the run's summary."""
    notes = inventory["warning"].dropna().astype(str).str.split(_NOTE_SEPARATOR, regex=False)
    counts = {"files whose name and AudioMoth comment disagree on the start time":
              int(notes.map(lambda ns: any(n.startswith(_NAME_VS_COMMENT) for n in ns)).sum()),
              "files sharing a start time with another file of their recorder":
              int(notes.map(lambda ns: any(n.startswith(_REPEATED_START) for n in ns)).sum())}
    return {k: v for k, v in counts.items() if v}


def _without_derived_notes(warning) -> str | None:
    """``warning`` without the notes :func:`add_clip_counts_and_warnings` adds (None if nothing is left)."""
    if not isinstance(warning, str) or not warning:
        return None
    kept = [note for note in warning.split(_NOTE_SEPARATOR) if not note.startswith(_REPEATED_START)]
    return _NOTE_SEPARATOR.join(kept) or None
