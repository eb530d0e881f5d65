"""The clips offered for review: a stratified sample of every reviewed detector and class of a run.

The sample is reproducible: for the same scores, ``n_bins``, ``per_bin`` and ``seed``, every start of
``opso review`` (and every reviewer) gets the same clips in the same order, so a restart continues
where each reviewer stopped. Each class draws with its own seed (derived from ``seed``, the detector
and the class), so adding a class does not change the others' samples.

Which classes: every class of a RIBBIT or CNN detector; a BirdNET detector's classes with at least one
detection (its 6,522 labels would be mostly empty), plus any named with ``classes``.

Each item has an ``id``, its position in :func:`review_items`'s table: the review page names clips by
it, never by a path. ``clip`` numbers the detector's clips (BirdNET: windows) in file and time order.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError
from pipelines.outputs.location import parquet_frame
from pipelines.outputs.results import list_detectors, read_detections, read_scores
from pipelines.outputs.tables import ID_COLUMNS
from pipelines.review.sampling import stratified_sample, uses_log_scores

__all__ = ["ITEM_COLUMNS", "SEARCH_DETECTOR", "class_table", "review_items", "table_items"]

logger = logging.getLogger(__name__)

#: the detector named in reviews of a table of clips (search results): no score table of the run is theirs
SEARCH_DETECTOR = "search"
#: columns of :func:`review_items`
ITEM_COLUMNS = ["id", "detector", "class", "clip", *ID_COLUMNS, "score", "stratum", "stratum_size", "stratum_sampled"]


def _class_seed(seed: int, detector: str, class_name: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{detector}\0{class_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def class_table(scores: pd.DataFrame, class_name: str, windows: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per clip of a detector's score table (:func:`~pipelines.outputs.results.read_scores`,
    sorted by file and start time) with ``clip`` (its position) and ``score`` (this class's).

    A BirdNET long table gives one row per window; windows with no row of the class scored below the
    floor and get 0. ``windows``: the table's windows (its id columns, one row each), when already
    found for another class.
    """
    if "class" in scores.columns and "score" in scores.columns:
        if windows is None:
            windows = scores[ID_COLUMNS].drop_duplicates(["file", "start_time"]).reset_index(drop=True)
        found = scores.loc[scores["class"] == class_name, ["file", "start_time", "score"]]
        out = windows.merge(found, on=["file", "start_time"], how="left")
        out["score"] = out["score"].fillna(0.0).astype(np.float64)
    else:
        if class_name not in scores.columns:
            raise ConfigError(f"review: no class {class_name!r} in these scores (they have "
                              f"{[c for c in scores.columns if c not in ID_COLUMNS]})")
        out = scores[ID_COLUMNS].assign(score=scores[class_name].to_numpy(np.float64))
    return out.assign(clip=np.arange(len(out), dtype=np.int64))


def _classes(scores: pd.DataFrame, detector: str, detections: pd.DataFrame, wanted) -> list[str]:
    if "class" in scores.columns and "score" in scores.columns:  # BirdNET: its detected classes
        if wanted is not None:
            return sorted(set(wanted))
        return sorted(set(detections.loc[detections["detector"] == detector, "class"]))
    classes = [c for c in scores.columns if c not in ID_COLUMNS]
    return classes if wanted is None else [c for c in classes if c in set(wanted)]


def review_items(url: str, storage_options=None, *, detectors=None, classes=None, n_bins: int = 10,
                 per_bin: int = 5, seed: int = 0) -> pd.DataFrame:
    """The clips to review in the run at ``url``: :func:`~pipelines.review.sampling.stratified_sample`
    of every detector and class (see the module docstring), one table.

    Parameters
    ----------
    detectors, classes : list of str, optional
        Only these detectors (``ribbit:frog``) and classes (a BirdNET class named here is offered even
        without a detection).
    n_bins, per_bin : int
        Score bins per class and clips drawn per bin.
    seed : int

    Returns
    -------
    pandas.DataFrame
        :data:`ITEM_COLUMNS`: classes in detector and class order, each class's clips in random order.

    Raises
    ------
    ConfigError
        A detector or class named that the run does not have, or nothing to review.
    """
    known = list_detectors(url, storage_options)
    if detectors:
        unknown = sorted(set(detectors) - set(known))
        if unknown:
            raise ConfigError(f"review: the run has no detector {unknown[0]!r}; it has {known}")
    chosen = [d for d in known if not detectors or d in detectors]
    try:
        detections = read_detections(url, storage_options)
    except Exception:  # a run stopped before its first detection table: sample the scores anyway
        detections = pd.DataFrame(columns=["detector", "class"])
    parts = []
    offered = set()
    for detector in chosen:
        scores = read_scores(url, detector, storage_options)
        windows = None  # a long table's windows, found once for all its classes
        if "class" in scores.columns and "score" in scores.columns:
            windows = scores[ID_COLUMNS].drop_duplicates(["file", "start_time"]).reset_index(drop=True)
        for class_name in _classes(scores, detector, detections, classes):
            table = class_table(scores, class_name, windows)
            sample = stratified_sample(table, "score", n_bins=n_bins, per_bin=per_bin,
                                       log=uses_log_scores(detector), seed=_class_seed(seed, detector, class_name))
            offered.add(class_name)
            parts.append(sample.assign(detector=detector, **{"class": class_name}))
            logger.info("review: %s / %s: %d clips sampled of %d", detector, class_name, len(sample), len(table))
    if classes:
        missing = sorted(set(classes) - offered)
        if missing:
            raise ConfigError(f"review: no detector of the run has class {missing[0]!r}")
    if not parts:
        if not chosen:
            raise ConfigError(f"review: nothing to review in {url}: the run has no scores yet")
        raise ConfigError(f"review: nothing to review in {url}: {', '.join(chosen)} offer no class (a BirdNET "
                          "detector offers the species it detected; name others with --class)")
    items = pd.concat(parts, ignore_index=True)
    items["id"] = np.arange(len(items), dtype=np.int64)
    return items[ITEM_COLUMNS]


def table_items(source, class_name: str, storage_options=None) -> pd.DataFrame:
    """Review items from a table of clips, e.g. ``opso search``'s results (CSV or Parquet, local or a
    URL): ``file, start_time, end_time`` and, where present, ``recorder, start_time_utc``, ``clip`` and
    ``similarity`` (shown as the score), in the table's order. The answers name the detector
    :data:`SEARCH_DETECTOR` and ``class_name``; they train linear classifiers (``opso train-linear``)
    and are left out of calibration (the clips are not a sample of a detector's scores).

    Raises
    ------
    ConfigError
        No such table, or one without ``file, start_time, end_time``.
    """
    import fsspec

    if not class_name:
        raise ConfigError("review --clips: name the class you are looking for with --class")
    try:
        with fsspec.open(source, "rb", **(storage_options or {})) as f:
            table = parquet_frame(f.read()) if str(source).endswith(".parquet") else pd.read_csv(f)
    except FileNotFoundError:
        raise ConfigError(f"review --clips: no table at {source}") from None
    missing = sorted({"file", "start_time", "end_time"} - set(table.columns))
    if missing:
        raise ConfigError(f"review --clips: the table needs columns file, start_time, end_time (missing {missing})")
    n = len(table)
    if not n:
        raise ConfigError(f"review --clips: the table at {source} has no rows")
    utc = pd.to_datetime(table["start_time_utc"], utc=True) if "start_time_utc" in table else pd.NaT
    items = pd.DataFrame({
        "id": np.arange(n, dtype=np.int64), "detector": SEARCH_DETECTOR, "class": class_name,
        "clip": table["clip"].astype(np.int64) if "clip" in table else np.arange(n, dtype=np.int64),
        "file": table["file"].astype(str), "recorder": table.get("recorder", pd.Series([""] * n)).astype(str),
        "start_time": table["start_time"].astype(np.float64), "end_time": table["end_time"].astype(np.float64),
        "start_time_utc": utc,
        "score": table["similarity"].astype(np.float64) if "similarity" in table else np.zeros(n),
        "stratum": np.zeros(n, dtype=np.int64), "stratum_size": np.full(n, n, dtype=np.int64),
        "stratum_sampled": np.full(n, n, dtype=np.int64)})
    return items[ITEM_COLUMNS]
