"""Reading a run's results: its state (``run.json``), one detector's scores, all detections.

Plain pandas reads them too (``pd.read_parquet(run + "/detections")``); these functions add the
storage options, clear errors, and the one rule to remember: scores are read **one detector at a
time**, because each detector has its own class columns (``scores/detector=<detector>/``).
"""

from __future__ import annotations

import pandas as pd

from pipelines.errors import StorageError
from pipelines.outputs import OutputLocation

__all__ = ["list_detectors", "read_detections", "read_scores", "read_status"]


def read_status(url: str, storage_options=None) -> dict:
    """The ``run.json`` of the run at ``url`` (status, configuration, summary, error if it failed).

    Raises
    ------
    StorageError
        ``url`` holds no opso run, or cannot be read.
    """
    location = OutputLocation(url, storage_options)
    if not location.exists("run.json"):
        raise StorageError(f"no opso run at {url} (run.json not found)")
    return location.read_json("run.json")


def list_detectors(url: str, storage_options=None) -> list[str]:
    """Names of the detectors with scores in the run at ``url`` (``ribbit:<name>``, ``cnn:<name>``)."""
    location = OutputLocation(url, storage_options)
    return [n.split("=", 1)[1] for n in location.list("scores") if n.startswith("detector=")]


def read_scores(url: str, detector: str, storage_options=None) -> pd.DataFrame:
    """One detector's scores: one row per clip (``file, recorder, start_time, end_time,
    start_time_utc``, then one float column per class), sorted by file and start time.

    Raises
    ------
    StorageError
        The run has no scores for ``detector`` (the message lists those it has).
    """
    location = OutputLocation(url, storage_options)
    folder = f"scores/detector={detector}"
    if not location.list(folder):
        known = list_detectors(url, storage_options)
        raise StorageError(f"the run at {url} has no scores of detector {detector!r}; it has {known}")
    frames = [location.read_parquet(f"{folder}/{name}") for name in location.list(folder) if name.endswith(".parquet")]
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return table.sort_values(["file", "start_time"], kind="stable").reset_index(drop=True)


def read_detections(url: str, storage_options=None) -> pd.DataFrame:
    """Every detection of the run, long format: ``detector, class, file, recorder, start_time,
    end_time, start_time_utc, score`` (zero rows when nothing was detected)."""
    location = OutputLocation(url, storage_options)
    frames = [location.read_parquet(f"detections/{n}") for n in location.list("detections") if n.endswith(".parquet")]
    if not frames:
        raise StorageError(f"the run at {url} has no detections/ folder (is it an opso run that finished?)")
    table = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    return table.sort_values(["detector", "class", "file", "start_time"], kind="stable").reset_index(drop=True)
