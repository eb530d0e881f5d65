"""What an opso run writes in its output folder, and the only code that deletes from it.

The output contract: the driver's files and the tasks' markers::

    run.json  inventory.parquet  failures.parquet
    _progress/<stage>/<range>.json
    _inventory/part-<batch>-<hash>.parquet (the inventory's parts while it is made; removed once
                                            inventory.parquet is written)
    _lock/<generation>.json                (the run's lock: pipelines.outputs.run_lock; never deleted here)

and the names each registered stage kind declares (:class:`OutputName`, collected by
:func:`pipelines.stages.output_names`), e.g. ``spectrograms.zarr/``,
``scores/detector=<detector>/part-<range>.parquet``, ``detections/part-<detector>-<range>.parquet``,
``localizations/part-<range>.parquet``.

:func:`clear_run_outputs` (``--overwrite``, or replacing a run that finished no task) deletes those
names and nothing else: a user's ``notes.txt`` beside them, or recordings in the same bucket,
are never touched. ``run.json`` goes last, so an interrupted clean-up is still recognised as an
opso run folder. :func:`remove_outputs` deletes one product's names (a detector removed from the
configuration, or recomputed under another identity). :func:`remove_temporaries` removes the hidden
temporaries (``.<name>.tmp-<hex>``) that a process killed between a write and its rename left beside
those names. A folder that holds contract names but no ``run.json`` is not treated as a run: it is
refused rather than written into."""

from __future__ import annotations

import dataclasses
import logging
import os
import re

from pipelines.errors import OutputConflictError
from pipelines.outputs.location import OutputLocation

__all__ = ["INVENTORY_PARTS", "PROGRESS", "RUN_FILES", "OutputName", "PreviousRun", "clear_run_outputs",
           "has_finished_tasks", "is_run_output", "read_previous_run", "remove_markers", "remove_outputs",
           "remove_temporaries"]

logger = logging.getLogger(__name__)

RUN_JSON = "run.json"
#: files at the top of a run folder, written by the driver
RUN_FILES = (RUN_JSON, "inventory.parquet", "failures.parquet")
#: the tasks' markers: ``_progress/<stage>/<range>.json``
PROGRESS = "_progress"

# leftovers of a local write interrupted before its rename: ".<name>.tmp-<hex>" (and "<name>.tmp-<hex>",
# as opso wrote them before temporaries were hidden)
_TEMPORARY = re.compile(r"^(?:\.(?P<hidden>.+)|(?P<plain>.+))\.tmp-[0-9a-f]{32}$")
_RUN_FILE = re.compile(rf"^(?:{'|'.join(re.escape(f) for f in RUN_FILES)})$")
_MARKER = re.compile(r"^_progress/(?:[^/]+/)*[^/]+\.json$")


@dataclasses.dataclass(frozen=True)
class OutputName:
    """A family of names a stage kind writes in the run folder (the output contract).

    Attributes
    ----------
    folder : str
        The folder the names are in, relative to the run folder (``""``: the top).
    pattern : str
        Regular expression a name matches, relative to ``folder`` (``part-ribbit-gpt-\\d{9}-\\d{9}\\.parquet``),
        or the store's name when ``store``.
    store : bool
        A Zarr store (a folder with ``.zgroup``), deleted whole.
    """

    folder: str
    pattern: str
    store: bool = False

    def matches(self, rel: str) -> bool:
        """True if ``rel`` (relative to the run folder) is one of these names (a store: inside it)."""
        prefix = f"{self.folder}/" if self.folder else ""
        if not rel.startswith(prefix):
            return False
        inner = rel[len(prefix):]
        if self.store:
            top = inner.split("/", 1)[0]
            return re.fullmatch(self.pattern, top) is not None
        return re.fullmatch(self.pattern, inner) is not None

    @property
    def top(self) -> str:
        """The run folder's entry these names are under (a folder, or the store's name pattern)."""
        return self.folder.split("/", 1)[0] if self.folder else self.pattern


#: the inventory's parts, written by its tasks so that an inventory cut short resumes; removed once
#: ``inventory.parquet`` is written (:func:`pipelines.driver.inventory.inventory_part_name`)
INVENTORY_PARTS = OutputName("_inventory", r"part-\d{9}-[0-9a-f]{12}\.parquet")
#: names the driver writes beside the stages': the zero-row detection table of a run without detectors,
#: the inventory's parts
DRIVER_NAMES = (OutputName("detections", r"part-none-\d{9}-\d{9}\.parquet"), INVENTORY_PARTS)


def _temporary_target(rel: str) -> str | None:
    """The path a temporary file ``rel`` was being written for, or None if it is no temporary."""
    folder, _, name = rel.rpartition("/")
    m = _TEMPORARY.match(name)
    if m is None:
        return None
    target = m["hidden"] or m["plain"]
    return f"{folder}/{target}" if folder else target


def _is_output_name(rel: str, names) -> bool:
    return bool(_RUN_FILE.match(rel) or _MARKER.match(rel)) or any(
        n.matches(rel) for n in (*names, *DRIVER_NAMES) if not n.store)


def is_run_output(rel: str, names) -> bool:
    """True if ``rel`` (a path relative to the run folder) is a file name a run writes (the driver's
    files, the markers, or one of ``names``: :func:`pipelines.stages.output_names`), or the temporary of one."""
    target = _temporary_target(rel)
    return _is_output_name(rel, names) or (target is not None and _is_output_name(target, names))


@dataclasses.dataclass(frozen=True)
class PreviousRun:
    """The ``run.json`` found in an output folder."""

    status: str | None
    fingerprint: str | None
    info: dict


def read_previous_run(location: OutputLocation, names) -> PreviousRun | None:
    """The run already in ``location``, or None for a folder that holds no opso output.

    ``names``: the stage kinds' output names (:func:`pipelines.stages.output_names`).

    Raises
    ------
    OutputConflictError
        The folder holds output names (``scores/``, ``spectrograms.zarr``, ...) but no ``run.json``:
        it is not an opso run folder, and a run would mix its files with those.
    """
    if location.exists(RUN_JSON):
        info = location.read_json(RUN_JSON)
        return PreviousRun(info.get("status"), info.get("fingerprint"), info)
    tops = {n.top for n in names if not n.store or n.folder}
    stores = [n.pattern for n in names if n.store]
    present = [name for name in location.list("") if name in RUN_FILES or name == PROGRESS or name in tops
               or any(re.fullmatch(p, name) for p in stores)]
    if present:
        raise OutputConflictError(
            f"{location.url} holds {', '.join(present)} but no run.json, so it is not an opso run folder; "
            "choose an empty or new output URL (opso does not delete files it did not write)")
    return None


def has_finished_tasks(location: OutputLocation) -> bool:
    """True if any task of the run in ``location`` left its marker (stops at the first found)."""
    return any(location.list(f"{PROGRESS}/{stage}") for stage in location.list(PROGRESS))


def _folders(names) -> list[str]:
    return sorted({n.folder for n in names if not n.store and n.folder})


def remove_outputs(location: OutputLocation, names, *, within=None) -> int:
    """Delete the files (and Zarr stores) matching ``names`` from ``location``, and nothing else.

    Parameters
    ----------
    names : sequence of OutputName
        E.g. one product's names (a detector's detection parts), or every kind's.
    within : sequence of OutputName, optional
        Delete only what also matches one of these (the registered kinds' names), e.g. when ``names``
        were read from a ``run.json``.

    Returns
    -------
    int
        Number of files and stores deleted.
    """
    def allowed(rel: str) -> bool:
        return within is None or any(a.matches(rel) for a in within)

    n = 0
    for folder in _folders(names):
        own = [rel for rel in location.find(folder)
               if (any(name.matches(rel) for name in names if not name.store) and allowed(rel))
               or ((target := _temporary_target(rel)) is not None and
                   any(name.matches(target) for name in names) and allowed(target))]
        location.remove_files(own)
        n += len(own)
    own = [rel for rel in location.list("") if any(name.matches(rel) for name in names if not name.store and
                                                  not name.folder) and allowed(rel)]
    location.remove_files(own)
    n += len(own)
    for rel in _stores(location, [name for name in names if name.store]):
        if allowed(rel):
            location.remove_tree(rel)
            n += 1
    if location.is_local:
        _remove_empty_folders(location, [*_folders(names), *(n.folder for n in names if n.store and n.folder)])
    return n


def _stores(location: OutputLocation, stores, *, zarr_only: bool = True) -> list[str]:
    """The Zarr stores in ``location`` (paths relative to it) that match one of ``stores`` (store names,
    at the top of the run folder or in their folder: ``embeddings.zarr/cnn-birds``); with ``zarr_only``,
    only those with Zarr metadata (a folder of that name without is not deleted whole)."""
    found = []
    for folder in sorted({s.folder for s in stores}):
        for entry in location.list(folder):
            rel = f"{folder}/{entry}" if folder else entry
            if any(s.matches(rel) for s in stores) and (not zarr_only or location.exists(f"{rel}/.zgroup") or
                                                        location.exists(f"{rel}/zarr.json")):
                found.append(rel)
    return found


def remove_markers(location: OutputLocation, stage_folder: str) -> int:
    """Delete the markers of one stage (``_progress/<stage>/*.json``); returns how many.

    Raises
    ------
    ValueError
        ``stage_folder`` is not one folder name (``cnn-birds``).
    """
    if not re.fullmatch(r"[A-Za-z0-9_.=-]+", stage_folder) or stage_folder in (".", ".."):
        raise ValueError(f"not a stage's marker folder: {stage_folder!r}")
    prefix = f"{PROGRESS}/{stage_folder}/"
    own = [rel for rel in location.find(prefix.rstrip("/")) if rel.startswith(prefix) and is_run_output(rel, ())]
    location.remove_files(own)
    if location.is_local:
        _remove_empty_folders(location, [f"{PROGRESS}/{stage_folder}"])
    return len(own)


def clear_run_outputs(location: OutputLocation, names, *, keep_run_json: bool = False) -> int:
    """Delete the files a run writes (the driver's files, the markers, and ``names``: every stage kind's,
    :func:`pipelines.stages.output_names`) from ``location``: the markers first (a clear cut short never
    leaves a marker whose outputs are gone), ``run.json`` last (unless ``keep_run_json``: the caller
    rewrites it).

    Returns
    -------
    int
        Number of files and stores deleted.
    """
    markers = [rel for rel in location.find(PROGRESS) if is_run_output(rel, names)]
    location.remove_files(markers)
    n = len(markers)
    if location.is_local:
        _remove_empty_folders(location, [PROGRESS])
    n += remove_outputs(location, (*names, *DRIVER_NAMES))
    own = [name for name in location.list("") if is_run_output(name, names) and name != RUN_JSON]
    location.remove_files(own)
    n += len(own)
    if not keep_run_json and location.exists(RUN_JSON):
        location.remove_files([RUN_JSON])
        n += 1
    logger.info("removed %d outputs of the previous run from %s", n, location.url)
    return n


def remove_temporaries(location: OutputLocation, names) -> int:
    """Delete the temporaries of interrupted local writes (``.<name>.tmp-<hex>``) of the run's files,
    inside its Zarr stores too; object storage has none (a write is one PUT).

    Returns
    -------
    int
        Number of files removed.
    """
    if not location.is_local:
        return 0
    found = [rel for rel in location.list("") if _temporary_target(rel) is not None and is_run_output(rel, names)]
    for folder in [PROGRESS, *_folders((*names, *DRIVER_NAMES))]:
        found += [rel for rel in location.find(folder) if _temporary_target(rel) is not None and
                  is_run_output(rel, names)]
    for store in _stores(location, [name for name in names if name.store], zarr_only=False):
        found += [rel for rel in location.find(store) if _temporary_target(rel) is not None]
    found = sorted(set(found))
    location.remove_files(found)
    if found:
        logger.info("removed %d temporary files of interrupted writes from %s", len(found), location.url)
    return len(found)


def _remove_empty_folders(location: OutputLocation, folders) -> None:
    """Remove the empty folders left under each of ``folders``' first component (``scores`` for
    ``scores/detector=x``), that component too when empty."""
    for folder in sorted({f.split("/", 1)[0] for f in folders}):
        top = location.path(folder)
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            if not os.listdir(dirpath):
                os.rmdir(dirpath)
