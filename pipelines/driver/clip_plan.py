"""Clip plan: every clip of every readable file, with a global clip index and absolute UTC times.

Clips follow :func:`opso_core.utils.generate_clip_times_df` per file. The plan is a pure function of
the inventory and the clip settings, so a resumed run rebuilds exactly the same plan.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from opso_core.utils import generate_clip_times_df

__all__ = ["PLAN_COLUMNS", "READABLE_STATUSES", "ClipRange", "chunk_ranges", "plan_clips"]

PLAN_COLUMNS = ["clip", "file", "recorder", "start_time", "end_time", "start_time_utc"]
#: inventory statuses of files whose audio can be read
READABLE_STATUSES = ("ok", "truncated", "no_clips")


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class ClipRange:
    """Clips ``start`` (inclusive) to ``stop`` (exclusive) of the global index; one task's work."""

    start: int
    stop: int

    @property
    def name(self) -> str:
        """Deterministic name for this range's outputs, e.g. ``000000064-000000128``."""
        return f"{self.start:09d}-{self.stop:09d}"

    def __len__(self) -> int:
        return self.stop - self.start


def plan_clips(inventory: pd.DataFrame, *, clip_duration: float, clip_overlap: float = 0.0,
               final_clip: str | None = None) -> pd.DataFrame:
    """The clip table of all readable files (status ``ok``, ``truncated`` or ``no_clips``: a file without
    a clip of the run's length may hold clips of another length, e.g. a CNN's).

    Parameters
    ----------
    inventory : pandas.DataFrame
        Rows from :func:`pipelines.inventory.inventory_files`, in archive order.
    clip_duration, clip_overlap : float
        Seconds.
    final_clip : {None, "extend", "full"}

    Returns
    -------
    pandas.DataFrame
        Columns ``clip`` (0..n-1), ``file``, ``recorder``, ``start_time``, ``end_time`` (s from the file
        start), ``start_time_utc`` (NaT where the file's start is unknown).
    """
    readable = inventory[inventory["status"].isin(READABLE_STATUSES)]
    # archives hold thousands of files of a few lengths: one clip table per length, repeated per file
    tables = {d: generate_clip_times_df(full_duration=d, clip_duration=clip_duration, clip_overlap=clip_overlap,
                                        final_clip=final_clip)
              for d in readable["duration_s"].astype(float).unique()}
    counts = np.array([len(tables[d]) for d in readable["duration_s"].astype(float)], dtype=np.int64)
    if not counts.sum():
        return pd.DataFrame({"clip": pd.Series(dtype=np.int64), "file": pd.Series(dtype=object),
                             "recorder": pd.Series(dtype=object), "start_time": pd.Series(dtype=np.float64),
                             "end_time": pd.Series(dtype=np.float64),
                             "start_time_utc": pd.Series(dtype="datetime64[ns, UTC]")})
    durations = readable["duration_s"].astype(float).to_numpy()
    starts = np.concatenate([tables[d]["start_time"].to_numpy() for d in durations])
    ends = np.concatenate([tables[d]["end_time"].to_numpy() for d in durations])
    file_start = (pd.to_datetime(readable["start_time_utc"], utc=True).dt.tz_localize(None)
                  .to_numpy(dtype="datetime64[ns]").repeat(counts))
    plan = pd.DataFrame({
        "clip": np.arange(len(starts), dtype=np.int64),
        "file": readable["file"].to_numpy(dtype=object).repeat(counts),
        "recorder": readable["recorder"].to_numpy(dtype=object).repeat(counts),
        "start_time": starts,
        "end_time": ends,
    })
    offsets = pd.to_timedelta(starts, unit="s").to_numpy(dtype="timedelta64[ns]")
    plan["start_time_utc"] = pd.to_datetime(file_start + offsets).tz_localize("UTC")
    return plan[PLAN_COLUMNS]


def chunk_ranges(n_clips: int, clips_per_chunk: int) -> list[ClipRange]:
    """Chunk-aligned ranges covering ``0..n_clips``: no two ranges touch the same Zarr chunk."""
    return [ClipRange(i, min(i + clips_per_chunk, n_clips)) for i in range(0, n_clips, clips_per_chunk)]
