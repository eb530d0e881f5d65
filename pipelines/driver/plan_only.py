"""``opso run --plan-only``: what a run would ask of the driver and the cluster, before it starts one.

It plans the run exactly as the driver does (:class:`~pipelines.driver.clip_plan.ClipIndex`, the stage
kinds' ranges and task descriptions) from the archive's inventory: the one stored in the output
folder when there is one, else one made here, reading every file's header in threads (no audio is
decoded). It prints the files, audio hours, clips and tasks per stage, the size of a task's
description (what goes to the scheduler per task) and the tasks kept in flight, and the time and
peak memory the planning took in this process, so that a user can check a million-hour run on a
laptop before paying for the cluster. It writes nothing and takes no lock.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import pickle
import resource
import sys
import time

import pandas as pd

from pipelines.config import RunConfig
from pipelines.driver.bounded import TASKS_IN_FLIGHT_PER_THREAD, in_flight_limit
from pipelines.driver.context import RunContext
from pipelines.driver.identity import resolve_products
from pipelines.driver.inventory import inventory_files, unlisted_folder_rows
from pipelines.outputs.location import OutputLocation
from pipelines.stages import enabled_kinds

__all__ = ["PlanSummary", "StagePlan", "inventory_here", "peak_memory_mb", "plan_lines", "plan_summary"]

logger = logging.getLogger(__name__)

#: files per header-reading call when the inventory is made here
_BATCH_FILES = 64


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage of the plan: its items (clips, or events), tasks, items per task and the largest
    pickled task description among a sample (bytes)."""

    name: str
    n_items: int
    n_tasks: int
    per_task: int
    task_bytes: int


@dataclasses.dataclass(frozen=True)
class PlanSummary:
    """What :func:`plan_summary` found (see the module docstring)."""

    n_files: int
    n_readable: int
    audio_hours: float
    sample_rate_hz: int
    stages: tuple[StagePlan, ...]
    later: tuple[str, ...]
    plan_s: float
    peak_memory_mb: float

    def lines(self, threads: int | None = None) -> list[str]:
        """The lines ``--plan-only`` prints (``threads``: the cluster's worker threads, when known)."""
        out = [f"plan: {self.n_files:,} files ({self.n_readable:,} readable), {self.audio_hours:,.1f} audio hours "
               f"at {self.sample_rate_hz} Hz"]
        for s in self.stages:
            out.append(f"  {s.name}: {s.n_items:,} clips in {s.n_tasks:,} tasks of up to {s.per_task:,}; a task's "
                       f"description {s.task_bytes:,} bytes")
        for name in self.later:
            out.append(f"  {name}: planned once the detectors have finished (its tasks are the candidate events)")
        n_tasks = sum(s.n_tasks for s in self.stages)
        flight = (f"{in_flight_limit(threads):,} on {threads} worker threads" if threads else
                  f"{TASKS_IN_FLIGHT_PER_THREAD} per worker thread")
        out.append(f"tasks: {n_tasks:,} in all, at most {flight} submitted at a time")
        out.append(f"driver: planned in {self.plan_s:.1f} s, peak memory of this process {self.peak_memory_mb:,.0f} MB")
        return out


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def inventory_here(config: RunConfig, files, unlisted=(), threads: int = 16) -> pd.DataFrame:
    """The archive's inventory made in this process: headers read in ``threads`` threads (I/O bound),
    a log line every 10 s."""
    inp = config.input
    batches = [list(files[i : i + _BATCH_FILES]) for i in range(0, len(files), _BATCH_FILES)]
    frames, last = [], time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for frame in pool.map(lambda b: inventory_files(b, inp.storage_options, inp.recorder, inp.timezone), batches):
            frames.append(frame)
            if time.monotonic() - last >= 10:
                last = time.monotonic()
                logger.info("inventory: %d of %d files", sum(len(f) for f in frames), len(files))
    if unlisted:
        frames.append(unlisted_folder_rows(unlisted, inp.recorder))
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True)


def plan_summary(config: RunConfig, inventory: pd.DataFrame, *, sample_rate_hz: int | None = None,
                 gpu_layout: bool = False, sample_tasks: int = 5) -> PlanSummary:
    """Plan the run of ``config`` over ``inventory`` as the driver would (no cluster, nothing written).

    Parameters
    ----------
    inventory : pandas.DataFrame
        Rows of :func:`pipelines.driver.inventory.inventory_files` (or ``inventory.parquet``).
    sample_rate_hz : int, optional
        The run's rate; by default ``spectrogram.sample_rate`` or the inventory's commonest.
    gpu_layout : bool
        Size tasks for GPU workers.
    sample_tasks : int
        Task descriptions pickled per stage (the first, the last and some between) to measure their size.
    """
    from pipelines.driver.run import run_clip_index, run_sample_rate

    started = time.perf_counter()
    rate = int(sample_rate_hz or run_sample_rate(config, inventory))
    params = config.spectrogram.params(rate)
    kinds = enabled_kinds(config)
    clip_settings, _, index, inventory = run_clip_index(config, kinds, inventory)
    ctx = RunContext(config, None, inventory, index, clip_settings, rate, params, gpu_layout, gpu_layout=gpu_layout)
    resolved = resolve_products([p for kind in kinds for p in kind.products(ctx)])
    location = OutputLocation(config.output.url, config.output.storage_options)
    stages, later = [], []
    first_phase = min(kind.phase for kind in kinds)
    for kind in kinds:
        if kind.phase != first_phase:
            later.append(kind.name)
            continue
        for stage in kind.plan(ctx, resolved):
            n = len(stage.ranges)
            picks = sorted({round(i * (n - 1) / max(1, sample_tasks - 1)) for i in range(sample_tasks)}) if n else []
            sizes = [len(pickle.dumps((stage.task, stage.ranges[i], stage.work(stage.ranges[i]), location,
                                       stage.marker(stage.ranges[i]), stage.products))) for i in picks]
            per_task = stage.ranges[0].stop - stage.ranges[0].start if n else 0
            stages.append(StagePlan(stage.name, len(stage.plan), n, per_task, max(sizes, default=0)))
    files = inventory[~inventory["file"].str.endswith("/")]
    readable = files[files["status"] != "failed"]
    return PlanSummary(n_files=len(files), n_readable=len(readable),
                       audio_hours=float(readable["duration_s"].sum()) / 3600, sample_rate_hz=rate,
                       stages=tuple(stages), later=tuple(later), plan_s=time.perf_counter() - started,
                       peak_memory_mb=peak_memory_mb())


def plan_lines(config: RunConfig, *, overwrite: bool = False) -> list[str]:
    """The lines ``opso run --plan-only`` prints: ``--dry-run``'s, then the plan (:meth:`PlanSummary.lines`)
    over the stored inventory (a resumed or updated run) or one made here.

    Raises
    ------
    ConfigError, StorageError, OutputConflictError
        As ``--dry-run``.
    """
    from pipelines.driver.dry_run import dry_run

    started = time.perf_counter()
    found = dry_run(config, overwrite=overwrite)
    config = found.config
    location = OutputLocation(config.output.url, config.output.storage_options)
    lines = [found.lines[0].replace("--dry-run", "--plan-only", 1), *found.lines[1:]]
    if found.start in ("resume", "update") and location.exists("inventory.parquet"):
        inventory = location.read_parquet("inventory.parquet")
        lines.append("inventory: the run folder's (the run keeps it)")
    else:
        t0 = time.perf_counter()
        inventory = inventory_here(config, found.listing.files, found.listing.unlisted)
        lines.append(f"inventory: {len(found.listing.files):,} headers read here in {time.perf_counter() - t0:.1f} s "
                     "(the run reads them again, on its workers)")
    rate = config.spectrogram.sample_rate or found.info.get("sample_rate_hz")
    gpu_layout = bool(found.info.get("gpu_layout"))
    summary = plan_summary(config, inventory, sample_rate_hz=rate, gpu_layout=gpu_layout)
    lines += summary.lines()
    if config.cnn and not gpu_layout:
        lines.insert(-2, "  (tasks sized for CPU workers: on a cluster with GPU workers, CNN tasks are larger and fewer)")
    lines[-1] += f" ({time.perf_counter() - started:.1f} s in all)"
    return lines
