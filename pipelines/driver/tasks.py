"""The one shape every stage of the pipeline has: what it plans, what one task does, where its markers live.

A :class:`Stage` is a set of items (the run's clips, as a :class:`~pipelines.driver.clip_plan.ClipIndex`,
or a table of rows such as candidate events) cut into :class:`~pipelines.driver.clip_plan.ClipRange`
tasks, and a task object, ``task(clip_range, clips, location, needed) -> record``, that analyses one
range and writes its outputs. A task is sent a description of its items, not their rows: a
:class:`~pipelines.driver.clip_plan.ClipSpan` (a few numbers per file) that the worker expands, or
its own rows of a table. :func:`run_stage_task` wraps every task the same way: it returns at once
when the range's marker holds its products (so a task Dask recomputes after losing a worker does no
work twice), and writes the marker after the outputs. :func:`run_tasks` keeps a bounded number of
tasks in flight (:mod:`pipelines.driver.bounded`), whatever the number of ranges.

A record (the marker's content) holds ``n_clips``, ``n_ok`` (clips analysed), ``failures``
(``[item, error_type, message]`` lists) and ``detections`` (``{detector: count}``), plus the task's
``task_s``, ``finished`` and ``worker``; the driver adds them up (:mod:`pipelines.driver.records`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time

import numpy as np
import pandas as pd

from pipelines.driver.bounded import Job, run_bounded, succeeded
from pipelines.driver.clip_plan import ClipIndex, ClipRange, ClipSpan, TaskRanges
from pipelines.driver.progress import StageProgress
from pipelines.driver.records import MARKERS_PER_TASK, RecordTally, tally_markers
from pipelines.driver.resources import cpu_only_resources
from pipelines.errors import RunLockLostError, RunStorageError
from pipelines.outputs.location import OutputLocation

logger = logging.getLogger(__name__)

__all__ = ["RANGES_PER_REDERIVE_TASK", "Stage", "run_stage_batch", "run_stage_task", "run_tasks", "task_ranges"]


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
    """A kind of task over clip ranges.

    Attributes
    ----------
    name : str
        ``spectrograms`` or a detector (``cnn:<name>``); the ``stage`` of its rows in ``failures.parquet``.
    plan : ClipIndex or pandas.DataFrame
        What its ranges index: the run's clips (a :class:`~pipelines.driver.clip_plan.ClipIndex`; each
        task is sent a :class:`~pipelines.driver.clip_plan.ClipSpan` and gets the span's rows of the
        clip table) or a table (each task gets its rows, e.g. candidate events).
    ranges : sequence of ClipRange
        One task each (:func:`task_ranges`: made on demand).
    task : callable
        ``task(clip_range, rows, location, needed) -> dict``; picklable (a frozen dataclass), run on workers.
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
    plan: ClipIndex | pd.DataFrame
    ranges: TaskRanges
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

    def work(self, clip_range: ClipRange):
        """What a task of ``clip_range`` is sent: its :class:`~pipelines.driver.clip_plan.ClipSpan`, or its rows."""
        if isinstance(self.plan, ClipIndex):
            return self.plan.span(clip_range)
        return self.plan.iloc[clip_range.start : clip_range.stop]


def task_ranges(n_clips: int, clips_per_task: int, align: int = 1) -> TaskRanges:
    """Consecutive ranges of ``clips_per_task`` clips (rounded up to a multiple of ``align``, so tasks
    own whole Zarr chunks), covering ``0..n_clips``; a sequence of :class:`ClipRange` made on demand."""
    size = max(align, int(math.ceil(clips_per_task / align)) * align)
    return TaskRanges(int(n_clips), size)


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


def run_stage_task(task, clip_range: ClipRange, clips, location: OutputLocation, marker: str,
                   products: dict | None = None, legacy_products: dict | None = None) -> dict:
    """Bring one range's outputs to ``products``' identities; write the marker after the outputs.

    Parameters
    ----------
    clips : ClipSpan or pandas.DataFrame
        The range's items (:meth:`Stage.work`); a span is expanded only when the task has work to do.
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
    if isinstance(clips, ClipSpan):  # expanded here, on the worker: the driver never holds a row per clip
        clips = clips.clips()
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



def _done_positions(stage: Stage, names) -> np.ndarray:
    """A mask over ``stage.ranges``: the ranges whose marker is among ``names`` (a listing of the stage's
    marker folder)."""
    done = np.zeros(len(stage.ranges), dtype=bool)
    if isinstance(stage.ranges, TaskRanges):
        position = stage.ranges.position
    else:
        index = {r.name: i for i, r in enumerate(stage.ranges)}
        position = index.get
    for name in names:
        if name.endswith(".json"):
            i = position(name.removesuffix(".json"))
            if i is not None:
                done[i] = True
    return done


def _n_batches(done: np.ndarray, batch_size: int) -> int:
    """Tasks of up to ``batch_size`` consecutive ranges that the ranges marked in ``done`` make."""
    edges = np.diff(np.concatenate([[0], done.astype(np.int8), [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return int((-(-runs // batch_size)).sum())


def _stage_jobs(stage: Stage, location: OutputLocation, run_key: str, legacy, resources, done, batch_size: int,
                tally_template: RecordTally | None):
    """The jobs of one stage, made as they are submitted: a task per range to compute (``done`` False,
    or every range when ``done`` is None), and with ``batch_size`` the ranges with a marker in tasks of
    up to ``batch_size`` ranges; then, with ``tally_template``, tasks reading the markers of the ranges
    skipped (finished in an earlier session)."""
    legacy_products = legacy.get(stage.name)
    batch: list[ClipRange] = []

    def batch_job(ranges):
        return Job(run_stage_batch, (stage.task, ranges, [stage.work(r) for r in ranges], location,
                                     [stage.marker(r) for r in ranges], stage.products, legacy_products),
                   key=f"{stage.name}-{run_key}-{ranges[0].name}-{len(ranges)}",
                   label=(stage.name, ClipRange(ranges[0].start, ranges[-1].stop)), resources=resources)

    for i, r in enumerate(stage.ranges):
        if done is not None and done[i]:
            if batch_size:
                batch.append(r)
                if len(batch) == batch_size:
                    yield batch_job(batch)
                    batch = []
            continue
        if batch:  # a batch holds consecutive ranges only (its label spans them)
            yield batch_job(batch)
            batch = []
        yield Job(run_stage_task, (stage.task, r, stage.work(r), location, stage.marker(r), stage.products,
                                   legacy_products),
                  key=f"{stage.name}-{run_key}-{r.name}", label=(stage.name, r), resources=resources)
    if batch:
        yield batch_job(batch)
    if tally_template is not None and done is not None and not batch_size:
        skipped = np.flatnonzero(done)
        for k in range(0, len(skipped), MARKERS_PER_TASK):
            markers = [stage.marker(stage.ranges[int(i)]) for i in skipped[k : k + MARKERS_PER_TASK]]
            yield Job(tally_markers, (location, markers, tally_template.empty()),
                      key=f"tally-{stage.name}-{run_key}-{k // MARKERS_PER_TASK}", label=("tally", stage.name))


def run_tasks(client, location: OutputLocation, stages, run_key: str, settled: dict[str, bool],
              legacy_markers: dict, rederive_only: frozenset = frozenset(), *, task_failures: list,
              tallies: dict[str, RecordTally], progress: bool = True, watch=None) -> dict[str, float]:
    """Run the tasks of ``stages`` with a bounded number in flight (:func:`pipelines.driver.bounded.run_bounded`);
    returns each stage's wall time (s).

    A settled stage gets tasks for its ranges without a marker (one listing of its marker folder), and
    its other ranges' markers are read by tally tasks on the workers; another stage gets a task for every
    range (each task reads its marker and computes only the products whose identity changed). In a
    stage of ``rederive_only`` (only products re-derived from stored inputs changed), the ranges with a
    marker go up to :data:`RANGES_PER_REDERIVE_TASK` to a task (fewer when that leaves threads idle).

    ``run_key`` is in every task's key and must be unique to this session of this run
    (:func:`pipelines.driver.run.session_key`): the scheduler takes a key it already holds for the same
    task, so two runs on one scheduler (or a rerun while its predecessor's tasks still end) would
    otherwise share tasks, and one of them would write nothing.

    Every finished task's record is added to ``tallies[stage]``; a failed task adds a row to
    ``task_failures`` (a task that lost the run's lock stops the run at once).
    """
    threads = max(1, sum(client.nthreads().values()))
    totals, iterators = {}, []
    for stage in stages:
        n = len(stage.ranges)
        done, batch_size = None, 0
        if settled.get(stage.name) or stage.name in rederive_only:
            done = _done_positions(stage, location.list(stage.progress))
        n_done = int(done.sum()) if done is not None else 0
        if stage.name in rederive_only:
            batch_size = max(1, min(RANGES_PER_REDERIVE_TASK, math.ceil(n_done / threads)))
            totals[stage.name] = n - n_done + _n_batches(done, batch_size)
        else:
            totals[stage.name] = n - n_done
        resources = stage.resources
        if stage.cpu_only and totals[stage.name]:
            resources = cpu_only_resources(client)
        iterators.append(_stage_jobs(stage, location, run_key, legacy_markers, resources, done, batch_size,
                                     tallies[stage.name]))
    n_ranges = sum(len(stage.ranges) for stage in stages)
    logger.info("%d tasks to run (%d ranges in %d stage%s)", sum(totals.values()), n_ranges, len(stages),
                "" if len(stages) == 1 else "s")
    totals = {name: n for name, n in totals.items() if n}
    bar = StageProgress(totals, enabled=progress)
    remaining = dict(totals)
    stage_s: dict[str, float] = {}
    t0 = time.perf_counter()

    def done_batch(batch):
        for fut, label, result in batch:
            ok = succeeded(fut, result)
            if ok and label[0] == "tally":
                tallies[label[1]].merge(result)
            elif ok:
                for record in result if isinstance(result, list) else [result]:
                    tallies[label[0]].add(record)
            else:
                exc = fut.exception() if fut.status == "error" else RuntimeError(f"task {fut.status}")
                if isinstance(exc, RunLockLostError):  # the folder is no longer this run's: stop at once
                    raise exc
                stage, r = label
                if stage == "tally":
                    raise RunStorageError(f"could not read the markers of {r}'s finished ranges: {exc}") from exc
                logger.error("%s task for clips %s failed: %s", stage, r.name, exc)
                task_failures.append(dict(stage=stage, item=f"clips {r.start}-{r.stop - 1}",
                                          error_type=type(exc).__name__, message=str(exc)))
            if label[0] == "tally":
                continue
            bar.advance(label[0])
            remaining[label[0]] -= 1
            if remaining[label[0]] == 0:
                stage_s[label[0]] = time.perf_counter() - t0

    try:
        run_bounded(client, itertools.chain.from_iterable(iterators), done_batch, watch=watch, tick=bar.tick)
    finally:
        bar.close()
    return stage_s
