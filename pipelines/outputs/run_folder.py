"""What an opso run writes in its output folder, and the only code that deletes from it.

The output contract names every file a run writes::

    run.json  inventory.parquet  failures.parquet
    spectrograms.zarr/  spectrograms-<detector>.zarr/
    scores/detector=<detector>/part-<range>.parquet
    detections/part-<detector>-<range>.parquet
    localizations/part-<...>.parquet
    _progress/<stage>/<range>.json
    _lock/<generation>.json                (the run's lock: pipelines.outputs.run_lock; never deleted here)

:func:`clear_run_outputs` (``--overwrite``, or replacing a run that finished no task) deletes those
names and nothing else: a user's ``notes.txt`` beside them, or recordings in the same bucket,
are never touched. ``run.json`` goes last, so an interrupted clean-up is still recognised as an
opso run folder. :func:`remove_temporaries` removes the hidden temporaries (``.<name>.tmp-<hex>``)
that a process killed between a write and its rename left beside those names. A folder that holds contract names but no ``run.json`` is not treated as a run:
it is refused rather than written into.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

from pipelines.errors import OutputConflictError
from pipelines.outputs.location import OutputLocation

__all__ = ["RUN_FILES", "RUN_FOLDERS", "PreviousRun", "clear_run_outputs", "decide_start", "has_finished_tasks",
           "is_run_output", "read_previous_run", "remove_temporaries"]

logger = logging.getLogger(__name__)

RUN_JSON = "run.json"
#: files at the top of a run folder
RUN_FILES = (RUN_JSON, "inventory.parquet", "failures.parquet")
#: folders a run fills with files named as below
RUN_FOLDERS = ("scores", "detections", "localizations", "_progress")
PROGRESS = "_progress"

# leftovers of a local write interrupted before its rename: ".<name>.tmp-<hex>" (and "<name>.tmp-<hex>",
# as opso wrote them before temporaries were hidden)
_TEMPORARY = re.compile(r"^(?:\.(?P<hidden>.+)|(?P<plain>.+))\.tmp-[0-9a-f]{32}$")
_RUN_FILE = re.compile(rf"^(?:{'|'.join(re.escape(f) for f in RUN_FILES)})$")
_FOLDER_FILE = re.compile(
    r"^(?:scores/detector=[^/]+/part-[^/]+\.parquet"
    r"|detections/part-[^/]+\.parquet"
    r"|localizations/part-[^/]+\.parquet"
    r"|_progress/(?:[^/]+/)*[^/]+\.json)$")
_STORE = re.compile(r"^spectrograms(?:-[A-Za-z0-9_.-]+)?\.zarr$")


def _temporary_target(rel: str) -> str | None:
    """The path a temporary file ``rel`` was being written for, or None if it is no temporary."""
    folder, _, name = rel.rpartition("/")
    m = _TEMPORARY.match(name)
    if m is None:
        return None
    target = m["hidden"] or m["plain"]
    return f"{folder}/{target}" if folder else target


def _is_output_name(rel: str) -> bool:
    return bool(_RUN_FILE.match(rel) or _FOLDER_FILE.match(rel))


def is_run_output(rel: str) -> bool:
    """True if ``rel`` (a path relative to the run folder) is a file name a run writes, or the
    temporary of one."""
    target = _temporary_target(rel)
    return _is_output_name(rel) or (target is not None and _is_output_name(target))


@dataclasses.dataclass(frozen=True)
class PreviousRun:
    """The ``run.json`` found in an output folder."""

    status: str | None
    fingerprint: str | None
    info: dict


def read_previous_run(location: OutputLocation) -> PreviousRun | None:
    """The run already in ``location``, or None for a folder that holds no opso output.

    Raises
    ------
    OutputConflictError
        The folder holds output names (``scores/``, ``spectrograms.zarr``, ...) but no ``run.json``:
        it is not an opso run folder, and a run would mix its files with those.
    """
    if location.exists(RUN_JSON):
        info = location.read_json(RUN_JSON)
        return PreviousRun(info.get("status"), info.get("fingerprint"), info)
    present = [name for name in location.list("") if name in RUN_FILES or name in RUN_FOLDERS or _STORE.match(name)]
    if present:
        raise OutputConflictError(
            f"{location.url} holds {', '.join(present)} but no run.json, so it is not an opso run folder; "
            "choose an empty or new output URL (opso does not delete files it did not write)")
    return None


def has_finished_tasks(location: OutputLocation) -> bool:
    """True if any task of the run in ``location`` left its marker (stops at the first found)."""
    return any(location.list(f"{PROGRESS}/{stage}") for stage in location.list(PROGRESS))


def decide_start(location: OutputLocation, previous: PreviousRun | None, fingerprint: str, overwrite: bool) -> str:
    """How a run with ``fingerprint`` starts in ``location``.

    Returns
    -------
    str
        ``"new"`` (nothing there), ``"resume"`` (the same configuration: finish what is missing),
        ``"overwrite"`` (``overwrite=True``: clear the previous run's outputs first) or ``"replace"``
        (another configuration whose run finished no task, e.g. one that stopped at a configuration
        error: its outputs are cleared, as nothing of value is lost).

    Raises
    ------
    OutputConflictError
        Another configuration's run finished tasks there and ``overwrite`` is False.
    """
    if previous is None:
        return "new"
    if overwrite:
        return "overwrite"
    if previous.fingerprint == fingerprint:
        return "resume"
    if not has_finished_tasks(location):
        return "replace"
    raise OutputConflictError(
        f"{location.url} holds a run with a different configuration (fingerprint {previous.fingerprint} != "
        f"{fingerprint}, status {previous.status}); use another output URL, or start over with --overwrite "
        "(deletes that run's outputs, nothing else)")


def clear_run_outputs(location: OutputLocation) -> int:
    """Delete the files a run writes (the contract's names) from ``location``; ``run.json`` last.

    Returns
    -------
    int
        Number of files and stores deleted.
    """
    n = 0
    for folder in RUN_FOLDERS:
        own = [rel for rel in location.find(folder) if is_run_output(rel)]
        location.remove_files(own)
        n += len(own)
    for name in location.list(""):
        if _STORE.match(name) and location.exists(f"{name}/.zgroup"):
            location.remove_tree(name)
            n += 1
    own = [name for name in location.list("") if is_run_output(name) and name != RUN_JSON]
    location.remove_files(own)
    n += len(own)
    if location.is_local:
        _remove_empty_folders(location)
    if location.exists(RUN_JSON):
        location.remove_files([RUN_JSON])
        n += 1
    logger.info("removed %d outputs of the previous run from %s", n, location.url)
    return n


def remove_temporaries(location: OutputLocation) -> int:
    """Delete the temporaries of interrupted local writes (``.<name>.tmp-<hex>``) of the run's files,
    inside its spectrogram stores too; object storage has none (a write is one PUT).

    Returns
    -------
    int
        Number of files removed.
    """
    if not location.is_local:
        return 0
    found = [rel for rel in location.list("") if _temporary_target(rel) is not None and is_run_output(rel)]
    for folder in RUN_FOLDERS:
        found += [rel for rel in location.find(folder) if _temporary_target(rel) is not None and is_run_output(rel)]
    for name in location.list(""):
        if _STORE.match(name):
            found += [rel for rel in location.find(name) if _temporary_target(rel) is not None]
    location.remove_files(found)
    if found:
        logger.info("removed %d temporary files of interrupted writes from %s", len(found), location.url)
    return len(found)


def _remove_empty_folders(location: OutputLocation) -> None:
    for folder in RUN_FOLDERS:
        top = location.path(folder)
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            if not os.listdir(dirpath):
                os.rmdir(dirpath)
