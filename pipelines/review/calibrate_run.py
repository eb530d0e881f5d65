"""``opso calibrate``: per-class thresholds of a run from its reviews, written to ``calibration.parquet``.

For every detector and class with reviews (``present`` and ``absent``; ``unsure`` is left out; each
reviewer's latest answer counts, and two reviewers of one clip are two observations), the class's
scores over the whole run and the reviews go to :func:`pipelines.review.calibration.calibrate_class`,
each answer weighted by its stratum's size over the answers the stratum has. A BirdNET detector's
long scores hold a class's rows at or above the detector's ``score_floor`` only: its other windows
count as scoring below every threshold, and no threshold is put below the floor.

The thresholds are applied by the run: a detector entry with ``calibrated_thresholds: true`` takes
them from ``calibration.parquet`` when the run starts (:mod:`pipelines.review.thresholds`), so running
it again in the same folder (``opso calibrate CONFIG.yaml ... --apply`` does) re-derives the detections
from the stored scores without reading audio.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.results import read_scores
from pipelines.outputs.tables import ID_COLUMNS
from pipelines.review.calibration import calibrate_class
from pipelines.review.queue import class_table
from pipelines.review.reviews import read_reviews
from pipelines.review.sampling import uses_log_scores

__all__ = ["CALIBRATION_FILE", "SCORE_RTOL", "calibrate_run", "class_scores", "reviews_of_current_scores"]

CALIBRATION_FILE = "calibration.parquet"
#: relative difference up to which a reviewed score is the score the run has now (other clip settings or
#: another detector give other scores; float32 storage, or a GPU instead of a CPU, differ by far less)
SCORE_RTOL = 1e-3
logger = logging.getLogger(__name__)


def class_scores(table: pd.DataFrame, detector: str, class_name: str, n_windows: int | None = None) -> np.ndarray:
    """Every clip's (window's) score of one class, from the detector's score table
    (:func:`pipelines.outputs.results.read_scores`), float64, shape (clips,).

    BirdNET's windows without a row of the class (scored below the floor) are given 0; ``n_windows``
    (the table's windows, counted here when not given) saves counting them again for each class.
    """
    if "class" in table.columns and "score" in table.columns:  # BirdNET's long form
        if n_windows is None:
            n_windows = len(table.drop_duplicates(["file", "start_time"]))
        found = table.loc[table["class"] == class_name, "score"].to_numpy(np.float64)
        return np.concatenate([found, np.zeros(n_windows - len(found))])
    if class_name not in table.columns:
        classes = [c for c in table.columns if c not in ID_COLUMNS]
        raise ConfigError(f"calibrate: detector {detector} has no class {class_name!r} (it has {classes})")
    return table[class_name].to_numpy(np.float64)


def _birdnet_floors(status: dict) -> dict:
    """``{birdnet:<name>: score_floor}`` of the run's configuration (its ``run.json``, ``status``): no
    threshold below what is stored."""
    entries = ((status.get("config") or {}).get("birdnet")) or []
    return {f"birdnet:{e['name']}": float(e.get("score_floor", 0.01)) for e in entries}


def reviews_of_current_scores(reviews: pd.DataFrame, table: pd.DataFrame, class_name: str) -> np.ndarray:
    """True for each review (rows of :func:`~pipelines.review.reviews.read_reviews` of one detector and
    class) whose clip (file, start and end time) is in the detector's score ``table`` now, with the score
    the reviewer saw (within :data:`SCORE_RTOL`: a recompute on another device is the same score): a
    sample of these scores. Answers about clips of earlier
    clip settings, or given when the detector scored otherwise, are not (their strata describe other
    scores). Shape (len(reviews),), bool."""
    keys = ["file", "start_time", "end_time"]
    long = "class" in table.columns and "score" in table.columns
    if not long and class_name not in table.columns:
        return np.zeros(len(reviews), dtype=bool)
    now = class_table(table, class_name)[[*keys, "score"]]  # BirdNET: a window below the floor scores 0, as reviewed
    merged = reviews[keys + ["score"]].reset_index(drop=True).merge(
        now.drop_duplicates(keys), on=keys, how="left", suffixes=("", "_now"))
    return np.isclose(merged["score"].to_numpy(np.float64), merged["score_now"].to_numpy(np.float64),
                      rtol=SCORE_RTOL, atol=1e-7)


def _scores_identities(status: dict) -> dict[str, str]:
    """``{"archive": identity, scores:<detector>: identity}`` of the run's archive and score tables (its
    ``run.json``, ``status``), recorded with each calibration so that a run whose scores are others does
    not apply it (:func:`pipelines.review.thresholds.calibrated_thresholds`)."""
    from pipelines.driver.identity import archive_identity

    found = {name: record["identity"] for name, record in (status.get("outputs") or {}).items()
             if name.startswith("scores:") and "identity" in record}
    if status.get("config"):
        found["archive"] = archive_identity(status["config"])
    return found


def calibrate_run(url: str, target_precision: float, storage_options=None, *, n_boot: int = 300,
                  seed: int = 0) -> pd.DataFrame:
    """Calibrate every reviewed class of the run at ``url`` and write ``calibration.parquet`` there.

    Returns
    -------
    pandas.DataFrame
        One row per detector and class: the fields of :class:`~pipelines.review.calibration.Calibration`
        and ``computed_utc``.

    Raises
    ------
    ConfigError
        The run has no present/absent reviews, or a target outside (0, 1).
    """
    if not 0 < target_precision < 1:
        raise ConfigError(f"calibrate: the target precision must be between 0 and 1, got {target_precision}")
    from pipelines.outputs.results import read_status

    status = read_status(url, storage_options)  # not a run: say so (StorageError), not "no reviews"
    from pipelines.outputs.results import list_detectors

    reviews = read_reviews(url, storage_options)
    reviews = reviews[reviews["label"].isin(["present", "absent"])]
    scored = reviews["detector"].isin(list_detectors(url, storage_options))
    if (~scored).any():  # e.g. answers about search results: not a sample of a detector's scores
        logger.info("calibrate: %d answers about clips of no detector's scores (%s) left out",
                    int((~scored).sum()), ", ".join(sorted(set(reviews.loc[~scored, "detector"]))))
        reviews = reviews[scored]
    if not len(reviews):
        raise ConfigError(f"calibrate: the run at {url} has no present/absent reviews yet; review clips first "
                          f"(opso review {url})")
    floors = _birdnet_floors(status)
    identities = _scores_identities(status)
    tables: dict = {}
    rows = []
    n_stale = 0
    for (detector, class_name), group in reviews.groupby(["detector", "class"], sort=True):
        if detector not in tables:
            table = read_scores(url, detector, storage_options)
            long = "class" in table.columns and "score" in table.columns
            tables[detector] = (table, len(table.drop_duplicates(["file", "start_time"])) if long else None)
        table, n_windows = tables[detector]
        current = reviews_of_current_scores(group, table, class_name)
        n_stale += int((~current).sum())
        group = group[current]
        if not len(group):
            continue
        # a stratum's N_h spread over the answers it has (unsure ones and clips left unreviewed drop out)
        answers = group.groupby("stratum")["stratum"].transform("size").to_numpy(np.float64)
        result = calibrate_class(
            detector, class_name, class_scores(table, detector, class_name, n_windows),
            group["score"].to_numpy(np.float64), (group["label"] == "present").to_numpy(np.float64),
            group["stratum_size"].to_numpy(np.float64) / answers, group["stratum"].to_numpy(),
            target_precision=target_precision, log_scores=uses_log_scores(detector), n_boot=n_boot, seed=seed,
            lowest_threshold=floors.get(detector))
        rows.append({**dataclasses.asdict(result), "scores_identity": identities.get(f"scores:{detector}"),
                     "archive_identity": identities.get("archive")})
    if n_stale:
        logger.warning("calibrate: %d answers are about clips or scores the run no longer has (its clip settings "
                       "or detector changed since they were given): left out; review again (opso review %s)",
                       n_stale, url)
    if not rows:
        raise ConfigError(f"calibrate: none of the run's {len(reviews)} present/absent answers is about a clip and "
                          "score the run has now (its clip settings or detectors changed since): review its current "
                          f"scores first (opso review {url})")
    table = pd.DataFrame(rows)
    table["computed_utc"] = pd.Timestamp(dt.datetime.now(dt.UTC))
    OutputLocation(url, storage_options).write_parquet(CALIBRATION_FILE, table)
    return table
