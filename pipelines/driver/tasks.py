"""The one shape every stage of the pipeline has: what it plans, what one task does, where its markers live.

A :class:`Stage` is a clip plan cut into :class:`~pipelines.clip_plan.ClipRange` tasks and a task
object, ``task(clip_range, clips, location) -> record``, that analyses one range and writes its
outputs. :func:`run_stage_task` wraps every task the same way: it returns at once when the range's
marker exists (so a task Dask recomputes after losing a worker does no work twice), and writes the
marker after the outputs. ``pipelines/driver/run.py`` submits, waits for and summarises any list of
stages without knowing what they compute; a new stage is a new module that builds a ``Stage``.

A record (the marker's content) holds ``n_clips``, ``n_ok`` (clips analysed), ``failures``
(``[item, error_type, message]`` lists) and ``detections`` (``{detector: count}``), plus the task's
``task_s``, ``finished`` and ``worker``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
import warnings

import pandas as pd

from pipelines.driver.clip_plan import ClipRange
from pipelines.driver.progress import StageProgress
from pipelines.driver.resources import cpu_only_resources
from pipelines.driver.waiting import wait_for_futures
from pipelines.errors import RunLockLostError
from pipelines.outputs.location import OutputLocation

logger = logging.getLogger(__name__)

__all__ = ["RANGES_PER_REDERIVE_TASK", "Stage", "run_stage_batch", "run_stage_task", "submit_tasks", "task_ranges",
           "wait_for_tasks"]


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
    """A kind of task over clip ranges.

    Attributes
    ----------
    name : str
        ``spectrograms`` or a detector (``cnn:<name>``); the ``stage`` of its rows in ``failures.parquet``.
    plan : pandas.DataFrame
        The clips its ranges index (a clip plan, global clip numbers).
    ranges : tuple of ClipRange
        One task each.
    task : callable
        ``task(clip_range, clips, location) -> dict``; picklable (a frozen dataclass), run on workers.
    resources : dict, optional
        Dask resources each task needs (``{"GPU": 1}``).
    counts_clips : bool
        Its records' ``n_ok`` are the run's analysed clips (the spectrogram stage).
    cpu_only : bool
        Its tasks run only on workers without the ``GPU`` resource (when there are any).
    products : dict
        ``{product name: identity}`` of the outputs its tasks write (set by the driver).
    failures : tuple
        ``(item, error_type, message)`` found while planning (e.g. files too short for a model's clip).
    dropped : dict
        ``{reason: count}`` of items left out while planning (the summary's ``dropped``).
    """

    name: str
    plan: pd.DataFrame
    ranges: tuple[ClipRange, ...]
    task: object
    resources: dict | None = None
    counts_clips: bool = False
    cpu_only: bool = False
    products: dict = dataclasses.field(default_factory=dict)
    failures: tuple = ()
    dropped: dict = dataclasses.field(default_factory=dict)

    @property
    def progress(self) -> str:
        """Folder of the stage's markers."""
        return f"_progress/{self.name.replace(':', '-')}"

    def marker(self, clip_range: ClipRange) -> str:
        return f"{self.progress}/{clip_range.name}.json"


def task_ranges(n_clips: int, clips_per_task: int, align: int = 1) -> tuple[ClipRange, ...]:
    """Consecutive ranges of ``clips_per_task`` clips (rounded up to a multiple of ``align``, so tasks
    own whole Zarr chunks), covering ``0..n_clips``."""
    size = max(align, int(math.ceil(clips_per_task / align)) * align)
    return tuple(ClipRange(i, min(i + size, n_clips)) for i in range(0, n_clips, size))


_ALLOCATOR_TUNED = []


def tune_allocator() -> None:
    """Let glibc keep freed memory for reuse in this (worker) process.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes glibc's
    mmap threshold at 128 kB: every temporary array a task makes (a spectrogram block is 0.5 MB)
    is then mapped, zero-filled and unmapped again, which made spectrogram tasks 2.8x slower
    (measured: 1.69 s instead of 0.60 s for 192 clips). Raising both thresholds gives the memory back to
    the heap for the next block instead. No-op where glibc's ``mallopt`` is missing; once per process.
    """
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED.append(True)
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is not None:
        m_trim_threshold, m_mmap_threshold = -1, -3
        mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest: arrays below 32 MB come from the heap
        mallopt(m_trim_threshold, 256 * 2**20)  # keep up to 256 MB of freed heap for the next task


def run_stage_task(task, clip_range: ClipRange, clips: pd.DataFrame, location: OutputLocation, marker: str,
                   products: dict | None = None, legacy_products: dict | None = None) -> dict:
    """Bring one range's outputs to ``products``' identities; write the marker after the outputs.

    Parameters
    ----------
    products : dict
        ``{product: identity}`` the range must hold.
    legacy_products : dict, optional
        What a marker without ``products`` holds (written by an opso from before per-product identities,
        in a run resumed since: the products the run had then).

    Returns
    -------
    dict
        The range's record (the marker's content).
    """
    products = dict(products or {})
    previous = location.read_json(marker) if location.exists(marker) else None
    held = {}
    if previous is not None:
        held = previous.get("products")
        if held is None:
            held = dict(legacy_products) if legacy_products is not None else dict(products)
    needed = frozenset(p for p, identity in products.items() if held.get(p) != identity)
    if previous is not None and not needed:
        if set(held) == set(products):  # the marker is the truth: done before (a recomputation or a retry)
            return previous
        record = _kept_part(previous, held, products)  # products removed from the run: forget them
        record["products"] = products
        location.write_json(marker, record)
        return record
    tune_allocator()
    started = time.perf_counter()
    new = task(clip_range, clips, location, needed)
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = None
    record = _kept_part(previous, held, products) if previous is not None else {}
    detections = {**record.get("detections", {}), **new.pop("detections", {})}
    record.update(new)
    record.update(products=products, detections=detections, task_s=round(time.perf_counter() - started, 4),
                  finished=time.time(), worker=worker)
    location.write_json(marker, record)
    return record


def _kept_part(previous: dict, held: dict, products: dict) -> dict:
    """The part of an earlier record still true: without the detection counts of detection products
    the run no longer has (``detections:<detector>`` held but not in ``products``); the task's new
    counts replace the others it recomputed."""
    record = dict(previous)
    record["detections"] = {d: n for d, n in (previous.get("detections") or {}).items()
                            if not (f"detections:{d}" in held and f"detections:{d}" not in products)}
    return record


#: most ranges one task re-derives when only cheap products changed (detections from stored scores)
RANGES_PER_REDERIVE_TASK = 64


def run_stage_batch(task, clip_ranges, clips: list, location: OutputLocation, markers: list, products: dict | None = None,
                    legacy_products: dict | None = None) -> list[dict]:
    """:func:`run_stage_task` for consecutive ranges in one task (ranges whose work is a few
    milliseconds: a per-range task would cost more in scheduling than in work)."""
    return [run_stage_task(task, r, c, location, m, products, legacy_products)
            for r, c, m in zip(clip_ranges, clips, markers, strict=True)]


def submit_tasks(client, location: OutputLocation, stages, fingerprint: str, settled: dict[str, bool],
                 legacy_markers: dict, rederive_only: frozenset = frozenset()) -> dict:
    """Submit the tasks of ``stages``, one batch per stage; returns ``{future: (stage, ClipRange)}`` (the
    only references to the futures; a task of several ranges is labelled with the range they span).

    A settled stage gets tasks for its ranges without a marker; another for every range (each task reads
    its marker and computes only the products whose identity changed). In a stage of
    ``rederive_only`` (only products re-derived from stored inputs changed), the ranges with a marker
    go up to :data:`RANGES_PER_REDERIVE_TASK` to a task (fewer when that leaves threads idle)."""
    futures: dict = {}
    for stage in stages:
        todo = list(stage.ranges)
        done = None
        if settled.get(stage.name) or stage.name in rederive_only:
            done = {n.removesuffix(".json") for n in location.list(stage.progress)}
        if settled.get(stage.name):
            todo = [r for r in todo if r.name not in done]
        batches = []
        if stage.name in rederive_only:
            marked = [r for r in todo if r.name in done]
            todo = [r for r in todo if r.name not in done]
            threads = max(1, sum(client.nthreads().values()))  # at least one task per thread
            size = max(1, min(RANGES_PER_REDERIVE_TASK, math.ceil(len(marked) / threads)))
            batches = [marked[i : i + size] for i in range(0, len(marked), size)]
        resources = cpu_only_resources(client) if stage.cpu_only and (todo or batches) else stage.resources
        with warnings.catch_warnings():  # each task carries its rows of the plan: a large graph is expected
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            if todo:
                n = len(todo)
                futs = client.map(run_stage_task, [stage.task] * n, todo,
                                  [stage.plan.iloc[r.start : r.stop] for r in todo], [location] * n,
                                  [stage.marker(r) for r in todo], [stage.products] * n,
                                  [legacy_markers.get(stage.name)] * n,
                                  key=[f"{stage.name}-{fingerprint}-{r.name}" for r in todo], retries=1,
                                  resources=resources, pure=False)
                futures.update({fut: (stage.name, r) for fut, r in zip(futs, todo, strict=True)})
            if batches:
                n = len(batches)
                futs = client.map(run_stage_batch, [stage.task] * n, batches,
                                  [[stage.plan.iloc[r.start : r.stop] for r in b] for b in batches], [location] * n,
                                  [[stage.marker(r) for r in b] for b in batches], [stage.products] * n,
                                  [legacy_markers.get(stage.name)] * n,
                                  key=[f"{stage.name}-{fingerprint}-{b[0].name}-{len(b)}" for b in batches],
                                  retries=1, resources=resources, pure=False)
                futures.update({fut: (stage.name, ClipRange(b[0].start, b[-1].stop))
                                for fut, b in zip(futs, batches, strict=True)})
    n_ranges = sum(len(stage.ranges) for stage in stages)
    logger.info("%d tasks to run (%d ranges in %d stage%s)", len(futures), n_ranges, len(stages),
                "" if len(stages) == 1 else "s")
    return futures


def wait_for_tasks(futures: dict, task_failures: list, progress: bool, watch) -> dict:
    """Wait for the tasks (``futures`` is emptied as they finish); returns each stage's wall time (s)."""
    totals = collections.Counter(stage for stage, _ in futures.values())
    bar = StageProgress(dict(totals), enabled=progress)
    remaining = dict(totals)
    stage_s = {}
    t0 = time.perf_counter()

    def done(fut, label):
        stage, r = label
        if fut.status == "error":
            exc = fut.exception()
            if isinstance(exc, RunLockLostError):  # the folder is no longer this run's: stop at once
                raise exc
            logger.error("%s task for clips %s failed: %s", stage, r.name, exc)
            task_failures.append(dict(stage=stage, item=f"clips {r.start}-{r.stop - 1}",
                                      error_type=type(exc).__name__, message=str(exc)))
        bar.advance(stage)
        remaining[stage] -= 1
        if remaining[stage] == 0:
            stage_s[stage] = time.perf_counter() - t0

    try:
        wait_for_futures(futures, done, watch=watch, tick=bar.tick)
    except BaseException:
        for fut in list(futures):  # stopped (lost lock, cluster, Ctrl-C): no task starts any more
            fut.cancel()
        raise
    finally:
        bar.close()
    return stage_s
