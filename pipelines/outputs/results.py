"""Reading a run's results: its state (``run.json``), one detector's scores, all detections.

Plain pandas reads them too (``pd.read_parquet(run + "/detections")``); these functions add the
storage options, clear errors, and the one rule to remember: scores are read **one detector at a
time**, because each detector has its own class columns (``scores/detector=<detector>/``).
"""

from __future__ import annotations

import pandas as pd

from pipelines.errors import StorageError
from pipelines.outputs.location import OutputLocation

__all__ = ["list_detectors", "read_detections", "read_lock_holder", "read_scores", "read_status", "status_lines"]


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


def read_lock_holder(url: str, storage_options=None):
    """The run folder's lock (:class:`pipelines.run_lock.LockHolder`: who holds it or last held it,
    their heartbeat), or None for a folder no run has locked."""
    from pipelines.outputs.run_lock import read_holder

    return read_holder(OutputLocation(url, storage_options))


def status_lines(url: str, status: dict, holder=None) -> list[str]:
    """The lines ``opso status`` prints for the ``run.json`` ``status`` of the run at ``url`` and its
    lock ``holder`` (:func:`read_lock_holder`)."""
    from pipelines.driver.summary import RunSummary

    state = status.get("status", "?")
    stale = None if holder is None else holder.stale_reason()
    lines = [f"run at {url}"]
    if not status and holder is not None:  # a lock, but no run.json yet
        state = ("starting: the run holds the folder and is in its checks or starting its cluster" if stale is None
                 else f"never started: a run took the folder and stopped before writing ({stale}); the next run "
                 "takes it over")
    elif state == "running" and stale is not None:
        state = (f"running according to run.json, but no driver holds the run's lock ({stale}): "
                 "the run stopped without recording its end (killed, or its storage failed); run the same "
                 "command again to resume")
    if status.get("clearing"):
        if status.get("status") == "running" and holder is not None and stale is None:
            state += "; removing the previous run's outputs (--overwrite)"
        else:
            state += ("; it stopped while removing the previous run's outputs (--overwrite): the next run in this "
                      "folder removes the rest first")
    lines.append(f"  state:       {state}")
    sessions = status.get("sessions") or []
    started = f"{status.get('started', '?')}"
    if status.get("finished"):
        ended = "finished" if str(state).startswith("complete") else "stopped"
        started += f", {ended} {status['finished']}"
    if len(sessions) > 1:
        started += f" ({len(sessions)} sessions)"
    lines.append(f"  started:     {started}")
    if holder is not None:
        if holder.released is not None:
            lock = f"free (released {holder.released_utc} by host {holder.host}, pid {holder.pid}, user {holder.user})"
        elif stale is not None:
            lock = f"stale: {holder.describe()}; another run may take it over ({stale})"
        elif holder.driver_gone():
            lock = (f"its driver (pid {holder.pid}) has ended; its workers are still ending "
                    f"({holder.describe()}); a rerun waits for them")
        else:
            lock = f"held by {holder.describe()}; lease {holder.lease_s:g} s"
        lines.append(f"  lock:        {lock}")
    if status.get("error"):
        lines.append(f"  error:       {status['error'].get('type')}: {status['error'].get('message')}")
    if status.get("summary"):
        summary = RunSummary.from_json(url, status["summary"])
        lines += [f"  {line}" for line in summary.lines() if not line.startswith(("status:", "outputs:"))]
    return lines


def list_detectors(url: str, storage_options=None) -> list[str]:
    """Names of the detectors with scores in the run at ``url`` (``ribbit:<name>``, ``cnn:<name>``,
    ``birdnet:<name>``)."""
    location = OutputLocation(url, storage_options)
    return [n.split("=", 1)[1] for n in location.list("scores") if n.startswith("detector=")]


def read_scores(url: str, detector: str, storage_options=None) -> pd.DataFrame:
    """One detector's scores: one row per clip (``file, recorder, start_time, end_time,
    start_time_utc``, then one float column per class), sorted by file and start time. A BirdNET
    detector's (``birdnet:<name>``) are long instead: ``file, recorder, start_time, end_time,
    start_time_utc, class, score``, one row per window and class at or above its ``score_floor``
    (best first within a window; ``docs/birdnet.md``).

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
    end_time, start_time_utc, score, common_name`` (``common_name``: BirdNET's English name, null for
    other detectors; zero rows when nothing was detected)."""
    location = OutputLocation(url, storage_options)
    frames = [location.read_parquet(f"detections/{n}") for n in location.list("detections") if n.endswith(".parquet")]
    if not frames:
        raise StorageError(f"the run at {url} has no detections/ folder (is it an opso run that finished?)")
    table = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    return table.sort_values(["detector", "class", "file", "start_time"], kind="stable").reset_index(drop=True)
