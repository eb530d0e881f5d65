"""The one place that turns the stages into Dask work.

``run_pipeline(config, client)``: inventory -> clip index -> the stages (:mod:`pipelines.driver.tasks`):
spectrograms (with RIBBIT) and one per CNN, writing the output contract (``docs/pipeline.md``)
under ``config.output.url``:

    run.json, inventory.parquet, spectrograms.zarr, scores/detector=<detector>/part-*.parquet,
    detections/part-*.parquet, failures.parquet, _progress/<stage>/<range>.json

Before anything is written, :func:`pipelines.preflight.check_run` has checked the configuration,
input, output folder and (from the CLI) the cluster settings, and taken the output folder's lock
(:mod:`pipelines.outputs.run_lock`); every write of the run, the driver's and the tasks', goes through a
location carrying that lease, so a run that lost the folder writes nothing more. A previous run
is cleared only then, and only of the files a run writes (:mod:`pipelines.outputs.run_folder`).

Resume: every task writes its outputs atomically under names derived from its clip range, then a
marker in ``_progress/``. The marker is the truth: a task whose marker exists returns at once. The
driver drops each future as soon as it is done, so finished results are not kept (and not
recomputed) on the workers. A rerun of the same configuration reuses the stored inventory (so the
clip index, and every name, is the same) and submits only the ranges without a marker.

``run.json`` is never left ``running`` by an error: a run that stops on an error says ``failed``
with the message (a storage failure too, where the storage takes the write within a few retries),
one stopped by Ctrl-C or SIGTERM says ``interrupted``. A run killed outright says ``running``, but
its lock shows no live holder (``opso status``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import logging
import platform
import threading
import time
import uuid
from importlib.metadata import PackageNotFoundError, version

import pandas as pd

from pipelines.config import RunConfig, check_sizes
from pipelines.driver.bounded import Job, run_bounded, succeeded
from pipelines.driver.clip_plan import BIRDNET_WINDOWS, ClipIndex
from pipelines.driver.context import RunContext
from pipelines.driver.identity import compare_outputs, flatten_config, resolve_products
from pipelines.driver.inventory import (
    add_clip_counts_and_warnings,
    archive_changes,
    count_warnings,
    describe_archive_changes,
    inventory_part,
    inventory_part_name,
    read_inventory_part,
    unlisted_folder_rows,
)
from pipelines.driver.preflight import Preflight, check_run
from pipelines.driver.progress import StageProgress
from pipelines.driver.records import RecordTally
from pipelines.driver.resources import retagging, workers_by_kind
from pipelines.driver.summary import RunSummary, elide
from pipelines.driver.tasks import run_tasks
from pipelines.errors import ConfigError, RunLockLostError, RunStorageError, StorageError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.results import read_status
from pipelines.outputs.run_folder import (
    INVENTORY_PARTS,
    OutputName,
    clear_run_outputs,
    remove_markers,
    remove_outputs,
    remove_temporaries,
)
from pipelines.outputs.run_lock import local_worker_processes
from pipelines.outputs.tables import (
    DETECTION_SCHEMA,
    FAILURE_COLUMNS,
    FAILURE_SCHEMA,
    empty_detections,
)
from pipelines.stages import enabled_kinds, output_names

__all__ = ["FAILURE_COLUMNS", "RunSummary", "elide", "read_status", "run_clip_index", "run_pipeline",
           "run_sample_rate"]

logger = logging.getLogger(__name__)

INVENTORY_BATCH_FILES = 32


@functools.cache
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("opso", "numpy", "scipy", "pandas", "soundfile", "dask", "distributed", "xarray", "zarr",
                "pyarrow", "fsspec"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ---- the driver

def run_pipeline(config: RunConfig, client, *, overwrite: bool = False, progress: bool = True,
                 preflight: Preflight | None = None, watch=None, steal_lock: bool = False) -> RunSummary:
    """Run (or resume) every configured stage on ``client``'s cluster; see the module docstring.

    Parameters
    ----------
    config : RunConfig
    client : distributed.Client
    overwrite : bool
        Clear a previous run's outputs (only the files a run writes) and start over.
    progress : bool
        Progress bars on a terminal, or a log line every 10 s elsewhere.
    preflight : Preflight, optional
        The result of :func:`pipelines.preflight.check_run` (the CLI runs it before starting the
        cluster), holding the output folder's lock, which the caller releases; by default the checks
        run here and the lock is taken and released here.
    watch : callable, optional
        Called every few seconds while tasks run (:meth:`pipelines.cluster.ClusterSession.check`);
        an error it raises stops the run. By default: stop when no worker has been connected for
        ``cluster.no_workers_timeout_s``.
    steal_lock : bool
        With no ``preflight``: take the output folder even from a live holder (``--steal-lock``).

    Raises
    ------
    ConfigError, StorageError, OutputConflictError
        From the checks (nothing written or deleted), or a configuration error that needs the
        archive's sample rate (``run.json`` then says ``failed``). ``RunLockHeldError`` when another
        run holds the folder.
    RunStorageError
        The storage failed during the run (``run.json``: ``failed`` where it could be written; resumable).
    RunLockLostError
        The run lost the folder's lock; it wrote nothing after that.
    ClusterError
        The cluster lost every worker for too long (``run.json``: ``failed``; the run resumes).
    """
    started = time.perf_counter()
    own_preflight = preflight is None
    if own_preflight:
        preflight = check_run(config, overwrite=overwrite, check_cluster=False, steal_lock=steal_lock)
    if preflight.config is not None:  # with the thresholds calibrated in the folder (calibrated_thresholds)
        config = preflight.config
    try:
        return _run_locked(config, client, preflight, progress, watch, started)
    finally:
        if own_preflight:
            preflight.release()


def _run_locked(config: RunConfig, client, preflight: Preflight, progress: bool, watch, started: float) -> RunSummary:
    if watch is None:
        from pipelines.driver.cluster import ClusterSession

        watch = ClusterSession(client, "address", config.cluster).check
    lock = preflight.lock
    if lock is not None:
        watch = _watching_lock(watch, lock, client)
        lock.wait_until_quiet()  # tasks of a run this one took the folder from may still be writing
        lock.mark_used()
    location = OutputLocation(config.output.url, config.output.storage_options, lease=preflight.lease)
    session = {"started": _now(), "host": platform.node(), "wall_s": None}
    run_info = {"status": "running", "fingerprint": config.fingerprint(), "config": config.public_dict(),
                "versions": dict(_versions()), "started": session["started"], "sessions": [session]}
    if preflight.start in ("resume", "update"):
        logger.info("%s the run in %s", "resuming" if preflight.start == "resume" else "updating", location.url)
        previous = preflight.previous.info
        run_info["started"] = previous.get("started", run_info["started"])
        run_info["sessions"] = [*_previous_sessions(previous), session]
        run_info["resumed"] = session["started"]
        for key in ("outputs", "stages", "legacy_markers", "epoch", "pending_removals", "gpu_layout"):  # until this
            # run has worked out its own
            if key in previous:
                run_info[key] = previous[key]
    recorded = threading.Event()  # set once this run's run.json is in the folder (for a clearing start: at its clear)
    try:
        if lock is not None:  # before any task: a rerun on this host can then tell when all have ended
            workers = local_worker_processes(client, attempts=5)
            if workers is None and _local_scheduler(client):
                logger.warning("the local workers did not say which processes they are: if this run is killed, "
                               "a rerun can take its folder only after its lease (%g s)", lock.lease_s)
            lock.set_workers(workers, strict=True)
        finished_cleanly = preflight.start in ("resume", "update") and \
            str(preflight.previous.info.get("status", "")).startswith("complete")
        if not finished_cleanly:  # temporaries are left only by a process killed between a write and its rename
            remove_temporaries(location, output_names())
        if preflight.start not in CLEARING_STARTS:  # else the previous run's run.json stays until its clear
            location.write_json("run.json", run_info)
            recorded.set()
        summary = _run_stages(config, client, location, preflight, run_info, progress, watch, started, recorded)
    except BaseException as exc:
        if not recorded.is_set():
            raise _unrecorded(exc) from None  # stopped before the clear: the previous run is left as it was
        raise _record_stop(location, run_info, exc, started, lock) from None
    if lock is not None:
        lock.mark_quiesced()  # every task has finished: a later run need not wait for any
    return summary


#: starts that delete the previous run's outputs (:func:`pipelines.driver.identity.decide_start`): only once the
#: inventory and every check that needs it have passed (:func:`_clear_previous_run`)
CLEARING_STARTS = ("overwrite", "replace")


def _clear_previous_run(location: OutputLocation, preflight: Preflight, run_info: dict, recorded) -> None:
    """Delete the previous run's outputs (``--overwrite``, or replacing a run that finished no task).

    ``run.json`` first says ``clearing`` (this run's configuration): a clear cut short (a storage error,
    a kill) is finished by the next run in the folder, whatever its options, and never read as a run
    whose markers still hold (:func:`pipelines.driver.identity.decide_start`). The markers go before
    the outputs they vouch for."""
    if preflight.start == "overwrite":
        logger.warning("--overwrite: removing the previous run's outputs from %s (only files opso wrote)",
                       location.url)
    else:
        logger.info("replacing the run of another configuration in %s, which finished no task", location.url)
    run_info["clearing"] = True
    recorded.set()  # from here on a stop is recorded in run.json (with clearing until the clear is done)
    location.write_json("run.json", run_info)
    clear_run_outputs(location, output_names(), keep_run_json=True)
    del run_info["clearing"]
    location.write_json("run.json", run_info)


def _unrecorded(exc: BaseException) -> BaseException:
    """The exception to raise for a run that stopped before it wrote anything of its own (``run.json`` is
    still the previous run's): a storage failure becomes :class:`RunStorageError`, exit code 4."""
    if isinstance(exc, StorageError) and not isinstance(exc, (RunStorageError, RunLockLostError)):
        return RunStorageError(f"the storage failed: {exc}; the previous run's outputs are untouched; run the "
                               "same command again once it works")
    return exc


def session_key(config: RunConfig) -> str:
    """The part of this session's task keys that no other run, nor another session of this one, has: the
    configuration's fingerprint (for the dashboard) and a random token (the same configuration may run
    into two folders on one scheduler)."""
    return f"{config.fingerprint()[:12]}-{uuid.uuid4().hex[:12]}"


def _previous_sessions(info: dict) -> list[dict]:
    """The sessions recorded in an earlier ``run.json`` (one made before sessions were recorded
    counts as one session of its summary's wall time)."""
    if "sessions" in info:
        return list(info["sessions"])
    wall = (info.get("summary") or {}).get("wall_s")
    return [{"started": info.get("started"), "host": None, "wall_s": wall}]


def _local_scheduler(client) -> bool:
    """True when the client's scheduler listens on this machine (a local cluster)."""
    address = str(getattr(client.scheduler, "address", "") or "")
    return address.startswith(("inproc://", "tcp://127.", "tcp://localhost", "tcp://[::1]"))


def _watching_lock(watch, lock, client):
    """``watch``, a stop as soon as the folder's lock is lost, and the lock's record of the local worker
    processes kept current (workers restart, or join)."""
    last = [time.monotonic()]

    def check():
        lock.check()
        watch()
        if lock.workers is not None and time.monotonic() - last[0] >= lock.lease_s / 8:  # local clusters only
            last[0] = time.monotonic()
            found = local_worker_processes(client)
            if found is not None:  # None: the workers did not answer in time (load, a restart): keep the record,
                lock.set_workers(found)  # else a killed run would look alive until its lease ran out

    return check


def _record_stop(location: OutputLocation, run_info: dict, exc: BaseException, started: float,
                 lock=None) -> BaseException:
    """Record how the run stopped in ``run.json``; returns the exception to raise (a storage failure
    during the run becomes :class:`RunStorageError`, exit code 4)."""
    if isinstance(exc, RunLockLostError):
        return exc  # the folder may be another run's now: write nothing
    if lock is not None and lock.lost:  # the same, found by the heartbeat: say why (exit code 5, or 4)
        if isinstance(exc, RunStorageError):
            return exc
        try:
            lock.check()
        except (RunLockLostError, RunStorageError) as lost:
            return lost
    if isinstance(exc, StorageError) and not isinstance(exc, RunStorageError):
        exc = RunStorageError(f"the storage failed during the run: {exc}; run the same command again to resume "
                              "once it works")
    interrupted = isinstance(exc, KeyboardInterrupt)
    run_info.update(status="interrupted" if interrupted else "failed", finished=_now())
    run_info["sessions"][-1]["wall_s"] = round(time.perf_counter() - started, 3)
    if not interrupted:
        run_info["error"] = {"type": type(exc).__name__, "message": elide(str(exc))}
    attempts = 5 if isinstance(exc, StorageError) else 1  # the storage may be back in a few seconds
    for attempt in range(attempts):
        try:
            location.write_json("run.json", run_info, in_place_when_full=True)
            break
        except RunLockLostError:
            break
        except Exception as write_error:  # the storage itself may be what failed; the first error is the news
            if attempt == attempts - 1:
                logger.error("could not record the run's end in run.json: %s", write_error)
            else:
                time.sleep(2 ** attempt)
    return exc


def _run_stages(config: RunConfig, client, location: OutputLocation, preflight: Preflight, run_info: dict,
                progress: bool, watch, started: float, recorded: threading.Event) -> RunSummary:
    stage_s = {}
    t0 = time.perf_counter()
    run_key = session_key(config)
    found, stored = _inventory(config, location, client, preflight, progress, watch,
                               reuse=preflight.start not in CLEARING_STARTS, run_key=run_key)
    stage_s["inventory"] = time.perf_counter() - t0

    sample_rate_hz = run_sample_rate(config, found)
    params = config.spectrogram.params(sample_rate_hz)
    kinds = enabled_kinds(config)
    if config.spectrogram.sample_rate is None:  # else checked with the configuration
        try:
            for kind in kinds:
                kind.check_at_sample_rate(config, sample_rate_hz, params)
            check_sizes(config.clips, config.spectrogram, sample_rate_hz, config.output)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (spectrogram.sample_rate is null, so the run is at the archive's commonest "
                              f"sample rate, {sample_rate_hz} Hz: set spectrogram.sample_rate to choose one)") from exc
    clip_settings, counting_stage, clip_index, inventory = run_clip_index(config, kinds, found)
    for kind in kinds:
        kind.check_inventory(config, inventory)
    if preflight.start in CLEARING_STARTS:  # every check has passed: the previous run's outputs go now
        _clear_previous_run(location, preflight, run_info, recorded)  # this run's inventory is written below
    if clip_settings.final_clip == BIRDNET_WINDOWS:
        logger.info("%d BirdNET windows of 3 s (audio resampled to 48 kHz)", clip_index.n_clips)
    else:
        logger.info("%d clips at %d Hz", clip_index.n_clips, sample_rate_hz)
    if not stored or not _same_table(inventory, found):  # a stored inventory is rewritten only if it lacks these
        location.write_parquet("inventory.parquet", inventory)
    remove_outputs(location, [INVENTORY_PARTS])  # inventory.parquet holds them now (also after a run stopped
    # right after writing it)
    readable = inventory[inventory["status"] != "failed"]

    gpu_workers, _ = workers_by_kind(client)
    # the task layout follows the first session's workers: a resume whose GPU workers have not joined yet
    # must not see other ranges (and recompute everything)
    gpu_layout = bool(run_info.get("gpu_layout", bool(gpu_workers))) if preflight.start in ("resume", "update") \
        else bool(gpu_workers)
    ctx = RunContext(config, location, inventory, clip_index, clip_settings, sample_rate_hz, params,
                     bool(gpu_workers), gpu_layout=gpu_layout)
    resolved = resolve_products([p for kind in kinds for p in kind.products(ctx)])
    run_info.update(sample_rate_hz=sample_rate_hz, gpu_layout=gpu_layout)
    settled, tokens, rederive_only = _apply_changes(location, preflight, run_info, resolved)
    location.write_json("run.json", run_info)
    if gpu_workers:
        logger.info("tasks that can use a GPU go to %d GPU worker(s)", len(gpu_workers))

    if preflight.lock is not None:
        preflight.lock.mark_tasks_started()
    task_failures: list[dict] = []
    stages = []
    tallies: dict[str, RecordTally] = {}
    windows = _killed_session_windows(run_info["sessions"])
    for phase in sorted({kind.phase for kind in kinds}):
        if phase > 1 and task_failures:
            logger.warning("the stages that read every detection (%s) wait for a complete run: %d tasks failed; "
                           "run again to finish them", ", ".join(k.name for k in kinds if k.phase == phase),
                           len(task_failures))
            break
        t0 = time.perf_counter()
        planned = []
        for kind in (k for k in kinds if k.phase == phase):
            for stage in kind.plan(ctx, resolved):
                own = {n: tokens[n] for n, r in resolved.items() if r.stage == stage.name}
                planned.append(dataclasses.replace(stage, products=own, counts_clips=stage.name == counting_stage))
        for stage in planned:
            tallies[stage.name] = RecordTally(stage.products, stage.counts_clips, windows)
        before = len(task_failures)
        times = run_tasks(client, location, planned, run_key, settled, run_info.get("legacy_markers") or {},
                          rederive_only, task_failures=task_failures, tallies=tallies, progress=progress,
                          watch=watch if phase == 1 else retagging(watch, client))
        stage_s.update(times if phase == 1 else {s.name: time.perf_counter() - t0 for s in planned})
        failed = {f["stage"] for f in task_failures[before:]}
        for stage in planned:
            settled[stage.name] = stage.name not in failed
        stages += planned
        for kind in (k for k in kinds if k.phase == phase):  # the next phase reads complete table folders
            kind.write_empty(ctx)
    run_info["stages"] = {name: {"settled": ok} for name, ok in settled.items()}

    # ---- what every task recorded, whether it ran now (its result) or in an earlier session (its
    # marker, read by tally tasks on the workers)
    failures = _failure_rows_from_inventory(inventory)
    n_clips_ok = 0
    detections: dict[str, int] = {}
    for kind in kinds:
        detections.update(kind.counters(config))
    dropped: dict[str, dict[str, int]] = {}
    last_finished: dict[int, float] = {}
    for stage in stages:
        tally = tallies[stage.name]
        failures += [dict(stage=stage.name, item=item, error_type=et, message=msg) for item, et, msg in stage.failures]
        failures += [dict(stage=stage.name, item=item, error_type=et, message=msg) for item, et, msg in tally.failures]
        for why, n in [*stage.dropped.items(), *tally.dropped.items()]:
            counts = dropped.setdefault(stage.name, {})
            counts[why] = counts.get(why, 0) + n
        n_clips_ok += tally.n_ok
        for det, n in tally.detections.items():
            if det in detections:
                detections[det] += n
        for i, t in tally.last_finished.items():
            last_finished[i] = max(last_finished.get(i, 0.0), t)
    for kind in kinds:  # the kinds of a phase that did not run too
        kind.write_empty(ctx)
    if not location.list("detections"):  # a run without detectors still has a readable detections/ folder
        location.write_parquet("detections/part-none-000000000-000000000.parquet", empty_detections(),
                               schema=DETECTION_SCHEMA)
    failures += task_failures
    failures_df = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    failures_df["message"] = failures_df["message"].map(lambda m: elide(m) if isinstance(m, str) else m)
    failures_df = failures_df.sort_values(["stage", "item"], kind="stable").reset_index(drop=True)
    if not (location.exists("failures.parquet") and _same_table(location.read_parquet("failures.parquet"), failures_df)):
        location.write_parquet("failures.parquet", failures_df, schema=FAILURE_SCHEMA)

    files = inventory[~inventory["file"].str.endswith("/")]
    complete = not task_failures and all(settled.get(s, False) for s in {r.stage for r in resolved.values()})
    wall_s = time.perf_counter() - started
    sessions = run_info["sessions"]
    sessions[-1]["wall_s"] = round(wall_s, 3)
    summary = RunSummary(
        output_url=location.url, status=("complete" if not len(failures_df) else "complete_with_failures")
        if complete else "incomplete",
        n_files=len(files), n_files_ok=int((files.status == "ok").sum()),
        n_files_truncated=int((files.status == "truncated").sum()),
        n_files_failed=int((files.status == "failed").sum()),
        audio_hours=float(readable["duration_s"].sum()) / 3600, n_clips=clip_index.n_clips,
        n_clips_failed=clip_index.n_clips - n_clips_ok, detections=detections, n_failures=len(failures_df),
        wall_s=wall_s, stage_wall_s=stage_s, n_files_no_clips=int((files.status == "no_clips").sum()),
        n_folders_unlisted=len(inventory) - len(files), warnings=count_warnings(inventory),
        dropped=dropped, total_wall_s=_total_wall_s(sessions, windows, last_finished), n_sessions=len(sessions),
        failure_overview=_failure_overview(failures_df),
        task_failures=dict(collections.Counter(f["error_type"] for f in task_failures)))
    run_info.update(status=summary.status, finished=_now(),
                    summary={k: v for k, v in dataclasses.asdict(summary).items() if k != "output_url"},
                    sample_rate_hz=sample_rate_hz, spectrogram_params=params.as_dict())
    location.write_json("run.json", run_info)
    return summary


def _apply_changes(location: OutputLocation, preflight: Preflight, run_info: dict,
                   resolved: dict) -> tuple[dict[str, bool], dict[str, str]]:
    """Compare this run's products with the previous run's (:func:`pipelines.driver.identity.compare_outputs`),
    record them in ``run_info`` (and ``run.json``) *before* deleting the outputs of the changed and removed
    ones (and the markers of stages none of whose products is kept), and log what happens.

    Each product's marker token is its identity and an epoch, a number renewed whenever its outputs are
    deleted: a range whose marker still holds an earlier token (a change interrupted half-way, then
    undone) is recomputed, never trusted. Deletions are listed in ``run.json`` (``pending_removals``)
    before they start and done again by the next run if this one stops half-way.

    Returns
    -------
    (dict, dict, frozenset)
        ``{stage: settled}`` (True where every range already holds this run's tokens, so only ranges
        without a marker need a task), ``{product: marker token}``, and the stages where only
        re-derivable products changed (their ranges are batched).
    """
    names_allowed = output_names()
    _remove_pending(location, run_info, names_allowed)  # a previous run stopped while deleting
    stages = {r.stage for r in resolved.values()}
    previous_outputs = run_info.get("outputs")
    if previous_outputs is None and preflight.start == "resume":
        # a run begun by an opso without per-product identities, resumed with the same configuration:
        # its markers (which have no ``products``) hold the products the run has now
        tokens = {name: f"{r.identity}.0" for name, r in resolved.items()}
        legacy: dict[str, dict] = {}
        for name, r in resolved.items():
            legacy.setdefault(r.stage, {})[name] = tokens[name]
        run_info.update(legacy_markers=legacy, epoch=0,
                        outputs={n: {**r.record(), "epoch": 0} for n, r in resolved.items()},
                        stages={stage: {"settled": True} for stage in stages})
        return dict.fromkeys(stages, True), tokens, frozenset()
    previous_stages = run_info.get("stages") or {}
    changes = compare_outputs(previous_outputs, resolved, flatten_config(run_info.get("config") or {}))
    epoch = int(run_info.get("epoch", 0))
    records, pending, by_stage = {}, [], {}
    for change in changes:
        by_stage.setdefault(change.stage, []).append(change)
        if change.action == "changed":
            logger.info("%s: recompute (changed: %s)", change.name, "; ".join(change.keys))
        elif change.action == "removed":
            logger.info("%s: %s; removing its outputs", change.name,
                        f"changed: {'; '.join(change.keys)}" if change.keys else "no longer configured")
        elif change.action == "new" and previous_outputs:
            logger.info("%s: new; computing it", change.name)
        if change.action == "kept":
            records[change.name] = {**resolved[change.name].record(), "epoch": int(change.record.get("epoch", 0))}
        elif change.name in resolved:
            epoch += 1
            records[change.name] = {**resolved[change.name].record(), "epoch": epoch}
        if change.action in ("changed", "removed"):
            recorded = (change.record or {}).get("outputs")
            names = recorded if recorded is not None else [[n.folder, n.pattern, n.store] for n in
                                                            resolved[change.name].product.outputs]
            pending += [["outputs", *n] for n in names]
    settled, rederive_only = {}, set()
    kept_names = {c.name for c in changes if c.action == "kept"}
    for stage, items in by_stage.items():
        kept = [c for c in items if c.action == "kept"]
        if not kept:  # nothing of the stage stays: its ranges may be others now
            pending.append(["markers", stage.replace(":", "-")])
        if stage in stages:
            settled[stage] = len(kept) == len(items) and previous_stages.get(stage, {}).get("settled", False)
            redo = [resolved[c.name].product for c in items if c.action in ("new", "changed")]
            if kept and not settled[stage] and previous_stages.get(stage, {}).get("settled", False) and all(
                    p.rederivable and set(p.inputs) <= kept_names for p in redo):
                rederive_only.add(stage)  # e.g. a threshold: milliseconds per range, many ranges per task
    tokens = {name: f"{record['identity']}.{record['epoch']}" for name, record in records.items()}
    run_info.update(outputs=records, stages={name: {"settled": ok} for name, ok in settled.items()}, epoch=epoch,
                    pending_removals=pending)
    location.write_json("run.json", run_info)  # what is about to be deleted, before it is
    _remove_pending(location, run_info, names_allowed)
    return settled, tokens, frozenset(rederive_only)


def _remove_pending(location: OutputLocation, run_info: dict, names_allowed) -> None:
    """Do the deletions ``run_info['pending_removals']`` lists (only names a registered kind may write),
    then forget them (the caller writes ``run.json`` before any task starts)."""
    for item in run_info.get("pending_removals") or []:
        if item[0] == "markers":
            remove_markers(location, item[1])
            continue
        name = OutputName(*item[1:])
        remove_outputs(location, [name], within=names_allowed)
    run_info.pop("pending_removals", None)


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """The same values, columns and order (string columns read back from Parquet may differ in dtype only)."""
    try:
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    except AssertionError:
        return False
    return True


def _killed_session_windows(sessions: list[dict]) -> tuple[tuple[float, float], ...]:
    """(begin, end) in Unix seconds of each earlier session that was killed outright (no wall time
    recorded): from its start to the next session's; the latest task finished in it ends it."""
    windows = []
    for i, session in enumerate(sessions[:-1]):
        if session.get("wall_s") is not None:
            continue
        try:
            begin = datetime.datetime.fromisoformat(session["started"]).timestamp()
            end = datetime.datetime.fromisoformat(sessions[i + 1]["started"]).timestamp()
        except (KeyError, TypeError, ValueError):
            begin = end = float("nan")  # never matches a time
        windows.append((begin, end))
    return tuple(windows)


def _total_wall_s(sessions: list[dict], windows, last_finished: dict[int, float]) -> float:
    """Seconds over every session; a session killed outright (no recorded wall time) counts until its
    last task finished (``last_finished[i]`` for ``windows[i]``)."""
    total = sum(float(s["wall_s"]) for s in sessions if s.get("wall_s") is not None)
    for i, (begin, _) in enumerate(windows):
        if i in last_finished:
            total += last_finished[i] - begin
    return total


def _failure_overview(failures: pd.DataFrame, most: int = 4) -> list[str]:
    """The commonest failures, one line per stage and error type: ``inventory: 2 AudioFormatError (e.g. ...)``."""
    lines = []
    if failures.empty:
        return lines
    groups = failures.groupby(["stage", "error_type"], sort=False)
    for (stage, error_type), group in sorted(groups, key=lambda kv: -len(kv[1]))[:most]:
        example = elide(str(group["message"].iloc[0]), 160)
        lines.append(f"{stage}: {len(group)} {error_type} (e.g. {example})")
    if groups.ngroups > most:
        lines.append(f"... and {groups.ngroups - most} more kinds (see failures.parquet)")
    return lines


def _inventory(config: RunConfig, location: OutputLocation, client, preflight: Preflight, progress: bool,
               watch, *, reuse: bool = True, run_key: str) -> tuple[pd.DataFrame, bool]:
    """(the inventory, whether it came from the run folder): a resumed run reuses the stored one, so
    its clip index and every output name are the same. ``reuse=False`` (the previous run is to be
    cleared): neither its inventory nor its inventory's parts are read."""
    if reuse and location.exists("inventory.parquet"):
        logger.info("reusing the stored inventory")
        stored = location.read_parquet("inventory.parquet")
        for line in describe_archive_changes(*archive_changes(preflight.files, stored["file"])):
            logger.warning("%s", line)
        return stored, True
    inp = config.input
    files = preflight.files
    n_batches = -(-len(files) // INVENTORY_BATCH_FILES)
    # a run stopped during its inventory: its finished batches
    parts = set(location.list("_inventory")) if reuse else set()

    def jobs():
        for k in range(n_batches):
            paths = list(files[k * INVENTORY_BATCH_FILES : (k + 1) * INVENTORY_BATCH_FILES])
            name = inventory_part_name(k, paths, inp.recorder, inp.timezone)
            if name.rsplit("/", 1)[1] in parts:
                yield Job(read_inventory_part, (location, name), key=f"inventory-{run_key}-{k}", label=k, retries=0)
            else:
                yield Job(inventory_part, (paths, inp.storage_options, inp.recorder, inp.timezone, location, name),
                          key=f"inventory-{run_key}-{k}", label=k, retries=0)

    logger.info("inventory of %d files%s", len(files), f" ({len(parts)} of {n_batches} batches done before)"
                if parts else "")
    frames = [None] * n_batches
    bar = StageProgress({"inventory": n_batches}, enabled=progress)

    def done(batch):
        failed = [fut for fut, _, result in batch if not succeeded(fut, result)]
        if failed:  # inventory_files turns every bad file into a row: this is the cluster or the code
            raise failed[0].exception() if failed[0].status == "error" else RuntimeError("an inventory task was "
                                                                                         f"{failed[0].status}")
        for _, index, frame in batch:
            frames[index] = frame
        bar.advance("inventory", len(batch))

    try:
        run_bounded(client, jobs(), done, watch=watch, tick=bar.tick)
    finally:
        bar.close()
    if preflight.unlisted:
        frames.append(unlisted_folder_rows(preflight.unlisted, inp.recorder))
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True), False


def run_clip_index(config: RunConfig, kinds, inventory: pd.DataFrame):
    """The run's clips: ``(clip settings, the stage whose analysed clips the summary counts, ClipIndex,
    the inventory with n_clips, no_clips statuses and warnings)``; ``kinds``: the enabled stage kinds
    (the first that offers clip settings decides)."""
    clip_settings, counting_stage = next(c for c in (kind.run_clips(config) for kind in kinds) if c is not None)
    clip_index = ClipIndex.from_inventory(inventory, clip_duration=clip_settings.duration_s,
                                          clip_overlap=clip_settings.overlap_s, final_clip=clip_settings.final_clip)
    shortest = {"shortest": "BirdNET's shortest window (1.5 s)"} if clip_settings.final_clip == BIRDNET_WINDOWS else {}
    return clip_settings, counting_stage, clip_index, add_clip_counts_and_warnings(
        inventory, clip_index.clips_per_file(), **shortest)


def run_sample_rate(config: RunConfig, inventory: pd.DataFrame) -> int:
    """The run's sample rate (Hz): ``spectrogram.sample_rate``, else the commonest of the readable files (the
    lowest of equally common ones), else 32 kHz."""
    if config.spectrogram.sample_rate:
        return int(config.spectrogram.sample_rate)
    rates = inventory.loc[inventory["status"] != "failed", "sample_rate"].dropna()
    if rates.empty:
        return 32000
    return int(rates.mode().min())


def _failure_rows_from_inventory(inventory: pd.DataFrame) -> list[dict]:
    """A row per file the inventory could not fully use: failed, truncated, or without a clip."""
    rows = []
    for r in inventory[inventory["status"] != "ok"].itertuples(index=False):
        error_type, _, message = (r.error or "Error: unknown").partition(": ")
        rows.append(dict(stage="inventory", item=r.file, error_type=error_type, message=message))
    return rows


