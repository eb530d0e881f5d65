"""The run's clips, described per file: never a table of every clip on the driver.

A run of a million audio-hours has about two billion 2 s clips: a table of them would not fit in a
driver's memory, and tasks carrying their rows of it would send gigabytes to the scheduler. So the
driver keeps a :class:`ClipIndex`: per readable file, its number of clips and the global number of
its first clip (a cumulative sum over the files, in archive order). A task gets a
:class:`ClipSpan` (its files, the first clip in each and how many: a few numbers per file, whatever
the clip count) and expands it into its rows on the worker (:meth:`ClipSpan.clips`).

Clips follow :func:`opso_core.utils.generate_clip_times_df` per file, and the rows of a span are
exactly the rows of the full clip table (:func:`plan_clips`, which is the same expansion over every
file), so the outputs do not depend on how the clips are cut into tasks. The index is a pure
function of the inventory and the clip settings: a resumed run rebuilds exactly the same one.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools

import numpy as np
import pandas as pd

from opso_core.utils import generate_clip_times_df

__all__ = ["BIRDNET_WINDOWS", "PLAN_COLUMNS", "READABLE_STATUSES", "ClipIndex", "ClipRange", "ClipSpan", "TaskRanges", "chunk_ranges",
           "plan_clips"]

PLAN_COLUMNS = ["clip", "file", "recorder", "start_time", "end_time", "start_time_utc"]
#: inventory statuses of files whose audio can be read
READABLE_STATUSES = ("ok", "truncated", "no_clips")
_NAT_NS = np.iinfo(np.int64).min  # NaT as int64 nanoseconds
#: ``final_clip`` value of BirdNET's windows (:func:`pipelines.birdnet.windows.window_times`: 3 s windows,
#: the last one kept, zero-padded, when at least 1.5 s of the recording remain)
BIRDNET_WINDOWS = "birdnet"


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


@dataclasses.dataclass(frozen=True)
class TaskRanges(collections.abc.Sequence):
    """Consecutive ranges of ``size`` items covering ``0..n`` (the last one shorter), made on demand:
    a stage of ten million tasks costs the driver two integers, not ten million objects."""

    n: int
    size: int

    def __len__(self) -> int:
        return -(-self.n // self.size) if self.n > 0 else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"range {i} of {len(self)}")
        start = i * self.size
        return ClipRange(start, min(start + self.size, self.n))

    def __iter__(self):
        for start in range(0, self.n, self.size):
            yield ClipRange(start, min(start + self.size, self.n))

    def position(self, name: str) -> int | None:
        """The index of the range named ``name`` (``ClipRange.name``), or None if it is not one of these."""
        try:
            start, stop = (int(part) for part in name.split("-"))
        except ValueError:
            return None
        if start % self.size or start >= self.n or stop != min(start + self.size, self.n):
            return None
        return start // self.size


@functools.lru_cache(maxsize=4096)
def _clip_times(duration_s: float, clip_duration: float, clip_overlap: float,
                final_clip: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(start times, end times) of a file of ``duration_s`` seconds, s (cached: archives hold
    thousands of files of a few lengths)."""
    if final_clip == BIRDNET_WINDOWS:
        from pipelines.birdnet.windows import window_times

        starts, ends = window_times(duration_s, clip_overlap)
        starts.flags.writeable = False
        ends.flags.writeable = False
        return starts, ends
    table = generate_clip_times_df(full_duration=duration_s, clip_duration=clip_duration, clip_overlap=clip_overlap,
                                   final_clip=final_clip)
    starts, ends = table["start_time"].to_numpy(), table["end_time"].to_numpy()
    starts.flags.writeable = False
    ends.flags.writeable = False
    return starts, ends


def _expand(entries, first_clip: int, clip_duration: float, clip_overlap: float,
            final_clip: str | None) -> pd.DataFrame:
    """The clip table rows of ``entries`` (``(file, recorder, duration_s, start_ns, first, n)``: clips
    ``first..first+n-1`` of each file), numbered from ``first_clip``."""
    entries = [e for e in entries if e[5] > 0]
    if not entries:
        return pd.DataFrame({"clip": pd.Series(dtype=np.int64), "file": pd.Series(dtype=object),
                             "recorder": pd.Series(dtype=object), "start_time": pd.Series(dtype=np.float64),
                             "end_time": pd.Series(dtype=np.float64),
                             "start_time_utc": pd.Series(dtype="datetime64[ns, UTC]")})
    parts = [(_clip_times(float(e[2]), clip_duration, clip_overlap, final_clip), e[4], e[5]) for e in entries]
    starts = np.concatenate([s[a : a + n] for (s, _), a, n in parts])
    ends = np.concatenate([t[a : a + n] for (_, t), a, n in parts])
    counts = np.array([e[5] for e in entries], dtype=np.int64)
    file_start = np.array([e[3] for e in entries], dtype=np.int64).view("datetime64[ns]").repeat(counts)
    n = len(starts)
    plan = pd.DataFrame({
        "clip": np.arange(first_clip, first_clip + n, dtype=np.int64),
        "file": np.array([e[0] for e in entries], dtype=object).repeat(counts),
        "recorder": np.array([e[1] for e in entries], dtype=object).repeat(counts),
        "start_time": starts,
        "end_time": ends,
    }, index=pd.RangeIndex(first_clip, first_clip + n))
    # to the microsecond, the tables' resolution (BirdNET's step of int((3 - overlap) * 48000) samples, or a
    # clip of 1/3 s, is not a whole number of microseconds; Arrow refuses to drop the nanoseconds)
    offsets = (np.rint(starts * 1e6).astype(np.int64) * 1000).view("timedelta64[ns]")
    plan["start_time_utc"] = pd.DatetimeIndex(file_start + offsets).tz_localize("UTC")
    return plan[PLAN_COLUMNS]


@dataclasses.dataclass(frozen=True)
class ClipSpan:
    """What one task is told about its clips: a few numbers per file, never a row per clip.

    Attributes
    ----------
    start : int
        Global number of the span's first clip.
    entries : tuple
        Per file, in order: ``(file, recorder, duration_s, start_ns, first, n)``: the file's
        recording start (UTC, int64 nanoseconds; NaT's value where unknown) and its clips
        ``first..first+n-1`` (numbered within the file).
    clip_duration, clip_overlap : float
        Seconds.
    final_clip : str or None
        As :func:`opso_core.utils.generate_clip_times_df`.
    """

    start: int
    entries: tuple
    clip_duration: float
    clip_overlap: float
    final_clip: str | None

    def __len__(self) -> int:
        return sum(e[5] for e in self.entries)

    def clips(self) -> pd.DataFrame:
        """The span's rows of the clip table (:data:`PLAN_COLUMNS`, index = global clip numbers)."""
        return _expand(self.entries, self.start, self.clip_duration, self.clip_overlap, self.final_clip)


@dataclasses.dataclass(frozen=True, eq=False)
class ClipIndex:
    """The clips of every readable file as per-file counts (see the module docstring).

    Attributes
    ----------
    files, recorders : numpy.ndarray of object, shape (n_files,)
        The readable files (status ``ok``, ``truncated`` or ``no_clips``), in inventory order.
    durations_s : numpy.ndarray of float, shape (n_files,)
    start_ns : numpy.ndarray of int64, shape (n_files,)
        Recording starts, UTC nanoseconds (NaT's value where unknown).
    counts : numpy.ndarray of int64, shape (n_files,)
        Clips per file (0: shorter than one clip).
    first : numpy.ndarray of int64, shape (n_files,)
        Global number of each file's first clip (``cumsum(counts) - counts``).
    clip_duration, clip_overlap : float
    final_clip : str or None
    """

    files: np.ndarray
    recorders: np.ndarray
    durations_s: np.ndarray
    start_ns: np.ndarray
    counts: np.ndarray
    first: np.ndarray
    clip_duration: float
    clip_overlap: float
    final_clip: str | None

    @classmethod
    def from_inventory(cls, inventory: pd.DataFrame, *, clip_duration: float, clip_overlap: float = 0.0,
                       final_clip: str | None = None) -> ClipIndex:
        """The index of an inventory's readable files (rows of :func:`pipelines.inventory.inventory_files`,
        in archive order). Time and memory grow with the files (and their distinct durations), not the clips."""
        readable = inventory[inventory["status"].isin(READABLE_STATUSES)]
        durations = readable["duration_s"].to_numpy(dtype=np.float64)
        unique, which = np.unique(durations, return_inverse=True)
        per_duration = np.array([len(_clip_times(float(d), float(clip_duration), float(clip_overlap), final_clip)[0])
                                 for d in unique], dtype=np.int64)
        counts = per_duration[which] if len(durations) else np.zeros(0, dtype=np.int64)
        starts = (pd.to_datetime(readable["start_time_utc"], utc=True).dt.tz_localize(None)
                  .to_numpy(dtype="datetime64[ns]").view(np.int64))
        return cls(files=readable["file"].to_numpy(dtype=object), recorders=readable["recorder"].to_numpy(dtype=object),
                   durations_s=durations, start_ns=starts, counts=counts, first=np.cumsum(counts) - counts,
                   clip_duration=float(clip_duration), clip_overlap=float(clip_overlap), final_clip=final_clip)

    @property
    def n_clips(self) -> int:
        """Clips of the whole run."""
        return int(self.counts.sum())

    def __len__(self) -> int:
        return self.n_clips

    def clips_per_file(self) -> pd.Series:
        """Clips per readable file (index: file)."""
        return pd.Series(self.counts, index=pd.Index(self.files, dtype=object), dtype=np.int64)

    def span(self, clip_range: ClipRange) -> ClipSpan:
        """The task description of the clips of ``clip_range``: O(files it touches), not O(clips)."""
        ends = self.first + self.counts
        lo = int(np.searchsorted(ends, clip_range.start, side="right"))
        hi = int(np.searchsorted(self.first, clip_range.stop, side="left"))
        entries = []
        for i in range(lo, hi):
            a = max(clip_range.start, int(self.first[i]))
            b = min(clip_range.stop, int(ends[i]))
            if b > a:
                entries.append((self.files[i], self.recorders[i], float(self.durations_s[i]), int(self.start_ns[i]),
                                a - int(self.first[i]), b - a))
        return ClipSpan(clip_range.start, tuple(entries), self.clip_duration, self.clip_overlap, self.final_clip)

    def clips(self, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """Rows ``start..stop`` of the clip table (the whole table by default: for tests and small runs)."""
        stop = self.n_clips if stop is None else stop
        return self.span(ClipRange(start, stop)).clips()


def plan_clips(inventory: pd.DataFrame, *, clip_duration: float, clip_overlap: float = 0.0,
               final_clip: str | None = None) -> pd.DataFrame:
    """The clip table of all readable files (status ``ok``, ``truncated`` or ``no_clips``: a file without
    a clip of the run's length may hold clips of another length, e.g. a CNN's).

    The pipeline never builds it (:class:`ClipIndex` describes the same clips per file); it is the
    reference its spans are equal to, and handy for small archives.

    Parameters
    ----------
    inventory : pandas.DataFrame
        Rows from :func:`pipelines.inventory.inventory_files`, in archive order.
    clip_duration, clip_overlap : float
        Seconds.
    final_clip : {None, "extend", "full", "birdnet"}
        ``"birdnet"``: BirdNET's windows (:data:`BIRDNET_WINDOWS`; ``clip_duration`` must be 3).

    Returns
    -------
    pandas.DataFrame
        Columns ``clip`` (0..n-1), ``file``, ``recorder``, ``start_time``, ``end_time`` (s from the file
        start), ``start_time_utc`` (NaT where the file's start is unknown).
    """
    index = ClipIndex.from_inventory(inventory, clip_duration=clip_duration, clip_overlap=clip_overlap,
                                     final_clip=final_clip)
    return index.clips().reset_index(drop=True)


def chunk_ranges(n_clips: int, clips_per_chunk: int) -> list[ClipRange]:
    """Chunk-aligned ranges covering ``0..n_clips``: no two ranges touch the same Zarr chunk."""
    return list(TaskRanges(n_clips, clips_per_chunk))
