"""The one place that turns the stage functions into Dask work.

``run_pipeline(config, client)``: inventory -> clip plan -> spectrogram chunks -> RIBBIT and CNN chunks,
writing the output contract (``docs/pipeline.md``) under ``config.output.url``:

    run.json, inventory.parquet, spectrograms.zarr, scores/detector=<detector>/part-*.parquet,
    detections/part-*.parquet, failures.parquet, _progress/<stage>/<range>.json

Before anything is written, :func:`pipelines.preflight.check_run` has checked the configuration,
input, output folder and (from the CLI) the cluster settings; a previous run is cleared only then,
and only of the files a run writes (:mod:`pipelines.run_folder`).

Resume: every task writes its outputs atomically under names derived from its clip range, then a
marker in ``_progress/``. The marker is the truth: a task whose marker exists returns at once, so a
task that Dask recomputes after losing a worker does no work twice. The driver drops each future
as soon as it is done, so finished results are not kept (and not recomputed) on the workers. A rerun
of the same configuration reuses the stored inventory (so the clip plan, and every name, is the
same) and submits only the ranges without a marker.

``run.json`` is never left ``running`` by an error: a run that stops on an error says ``failed``
with the message, one stopped by Ctrl-C or SIGTERM says ``interrupted``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import platform
import re
import time
from importlib.metadata import PackageNotFoundError, version

import pandas as pd
import pyarrow as pa

from opso_core.ribbit import RibbitParams
from opso_core.spectrogram import SpectrogramParams
from pipelines.clip_plan import chunk_ranges, plan_clips
from pipelines.cnn_scores import describe_cnn_detector
from pipelines.config import RunConfig
from pipelines.inventory import inventory_files
from pipelines.outputs import OutputLocation
from pipelines.preflight import Preflight, check_run
from pipelines.progress import StageProgress
from pipelines.results import read_status
from pipelines.ribbit_scores import check_species_bands, detector_name, score_chunk
from pipelines.run_folder import clear_run_outputs
from pipelines.score_tables import (
    DETECTION_SCHEMA,
    FAILURE_COLUMNS,
    FAILURE_SCHEMA,
    empty_detections,
    score_schema,
)
from pipelines.spectrogram_store import STORE_NAME, compute_chunk, create_store
from pipelines.waiting import wait_for_futures

__all__ = ["FAILURE_COLUMNS", "RunSummary", "read_status", "run_pipeline"]

logger = logging.getLogger(__name__)

INVENTORY_BATCH_FILES = 32
_SPEC_PROGRESS = "_progress/spectrograms"
_RIBBIT_PROGRESS = "_progress/ribbit"
_STAGE_ORDER = ["spectrograms", "ribbit", "cnn"]


@dataclasses.dataclass(slots=True)
class RunSummary:
    """What a run did; also stored in ``run.json``."""

    output_url: str
    status: str
    n_files: int
    n_files_ok: int
    n_files_truncated: int
    n_files_failed: int
    audio_hours: float
    n_clips: int
    n_clips_failed: int
    detections: dict[str, int]
    n_failures: int
    wall_s: float
    stage_wall_s: dict[str, float]

    @property
    def audio_hours_per_hour(self) -> float:
        return self.audio_hours / (self.wall_s / 3600) if self.wall_s > 0 else float("nan")

    @property
    def analysed_nothing(self) -> bool:
        """True when no file held readable audio (every clip is missing)."""
        return self.n_clips == 0 or self.n_clips_failed == self.n_clips

    def lines(self) -> list[str]:
        det = ", ".join(f"{k}: {v}" for k, v in self.detections.items()) or "none configured"
        return [
            f"status:      {self.status}",
            f"files:       {self.n_files} ({self.n_files_ok} ok, {self.n_files_truncated} truncated, "
            f"{self.n_files_failed} failed)",
            f"audio:       {self.audio_hours:.3f} hours in {self.n_clips} clips ({self.n_clips_failed} failed)",
            f"detections:  {det}",
            f"failures:    {self.n_failures} (see failures.parquet)",
            f"wall time:   {self.wall_s:.1f} s ({self.audio_hours_per_hour:,.0f} audio-hours per hour); "
            + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_wall_s.items()),
            f"outputs:     {self.output_url}",
        ]


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


# ---- tasks: each returns at once when its marker exists (the marker is the truth)

def _done_marker(location: OutputLocation, marker: str):
    return location.read_json(marker) if location.exists(marker) else None


def _finish(location: OutputLocation, marker: str, record: dict, started: float) -> dict:
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = None
    record.update(task_s=round(time.perf_counter() - started, 4), finished=time.time(), worker=worker)
    location.write_json(marker, record)
    return record


def _spectrogram_task(clip_range, clips, location, params, sample_rate_hz, clip_duration_s, store_name, progress):
    marker = f"{progress}/{clip_range.name}.json"
    if (done := _done_marker(location, marker)) is not None:
        return done["n_ok"]
    started = time.perf_counter()
    result = compute_chunk(clip_range, clips, location=location, params=params, sample_rate_hz=sample_rate_hz,
                           clip_duration_s=clip_duration_s, store_name=store_name)
    _finish(location, marker, {"n_ok": result.n_ok, "n_clips": len(clip_range),
                               "failures": [list(f) for f in result.failures]}, started)
    return result.n_ok


def _ribbit_task(clip_range, clips, location, species, thresholds, _spectrograms_done=None):
    marker = f"{_RIBBIT_PROGRESS}/{clip_range.name}.json"
    if (done := _done_marker(location, marker)) is not None:
        return done["detections"]
    started = time.perf_counter()
    detections = score_chunk(clip_range, clips, location=location, species=species, thresholds=thresholds)
    return _finish(location, marker, {"detections": {detector_name(k): v for k, v in detections.items()}},
                   started)["detections"]


def _cnn_task(clip_range, clips, location, detector, _spectrograms_done=None):
    from pipelines.cnn_scores import infer_chunk

    marker = f"{_cnn_progress(detector)}/{clip_range.name}.json"
    if (done := _done_marker(location, marker)) is not None:
        return done
    started = time.perf_counter()
    result = infer_chunk(clip_range, clips, location=location, detector=detector)
    return _finish(location, marker, {"detections": {detector.detector: result["detections"]},
                                      "device": result["device"],
                                      "model_load_s": result.get("model_load_s", 0.0)}, started)


def _cnn_progress(detector) -> str:
    return f"_progress/{detector.detector.replace(':', '-')}"


@dataclasses.dataclass
class _Store:
    """One spectrogram store, the clip plan it holds and the CNN detectors that read it."""

    name: str
    progress: str
    plan: pd.DataFrame
    params: SpectrogramParams
    sample_rate_hz: int
    clip_duration_s: float
    detectors: list = dataclasses.field(default_factory=list)


# ---- the driver

def run_pipeline(config: RunConfig, client, *, overwrite: bool = False, progress: bool = True,
                 preflight: Preflight | None = None, watch=None) -> RunSummary:
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
        cluster); by default the checks run here.
    watch : callable, optional
        Called every few seconds while tasks run (:meth:`pipelines.cluster.ClusterSession.check`);
        an error it raises stops the run. By default: stop when no worker has been connected for
        ``cluster.no_workers_timeout_s``.

    Raises
    ------
    ConfigError, StorageError, OutputConflictError
        From the checks (nothing written or deleted), or a configuration error that needs the
        archive's sample rate (``run.json`` then says ``failed``).
    ClusterError
        The cluster lost every worker for too long (``run.json``: ``failed``; the run resumes).
    """
    started = time.perf_counter()
    if preflight is None:
        preflight = check_run(config, overwrite=overwrite, check_cluster=False)
    if watch is None:
        from pipelines.cluster import ClusterSession

        watch = ClusterSession(client, "address", config.cluster).check
    location = OutputLocation(config.output.url, config.output.storage_options)
    if preflight.start == "overwrite":
        logger.warning("--overwrite: removing the previous run's outputs from %s (only files opso wrote)",
                       location.url)
        clear_run_outputs(location)
    elif preflight.start == "replace":
        logger.info("replacing the run of another configuration in %s, which finished no task", location.url)
        clear_run_outputs(location)
    run_info = {"status": "running", "fingerprint": config.fingerprint(), "config": config.public_dict(),
                "versions": _versions(), "started": _now()}
    if preflight.start == "resume":
        logger.info("resuming the run in %s", location.url)
        run_info["started"] = preflight.previous.info.get("started", run_info["started"])
        run_info["resumed"] = _now()
    location.write_json("run.json", run_info)
    try:
        return _run_stages(config, client, location, preflight, run_info, progress, watch, started)
    except BaseException as exc:
        _record_stop(location, run_info, exc)
        raise


def _record_stop(location: OutputLocation, run_info: dict, exc: BaseException) -> None:
    interrupted = isinstance(exc, KeyboardInterrupt)
    run_info.update(status="interrupted" if interrupted else "failed", finished=_now())
    if not interrupted:
        run_info["error"] = {"type": type(exc).__name__, "message": str(exc)}
    try:
        location.write_json("run.json", run_info)
    except Exception as write_error:  # the storage itself may be what failed; the first error is the news
        logger.error("could not record the run's end in run.json: %s", write_error)


def _run_stages(config: RunConfig, client, location: OutputLocation, preflight: Preflight, run_info: dict,
                progress: bool, watch, started: float) -> RunSummary:
    stage_s = {}
    t0 = time.perf_counter()
    inventory = _inventory(config, location, client, preflight.files, progress, watch)
    stage_s["inventory"] = time.perf_counter() - t0

    sample_rate_hz = _sample_rate(config, inventory)
    params = config.spectrogram.params(sample_rate_hz)
    if config.spectrogram.sample_rate is None and config.ribbit:  # else checked with the configuration
        check_species_bands(config.ribbit, sample_rate_hz, params.step_samples)
    clips_cfg = config.clips
    plan = plan_clips(inventory, clip_duration=clips_cfg.duration, clip_overlap=clips_cfg.overlap,
                      final_clip=clips_cfg.final_clip)
    logger.info("%d clips of %.3g s at %d Hz", len(plan), clips_cfg.duration, sample_rate_hz)
    stores, detectors = _plan_stores(config, location, inventory, plan, params, sample_rate_hz)
    species = [RibbitParams(name=s.name, signal_band=s.signal_band, pulse_rate_range=s.pulse_rate_range,
                            noise_bands=tuple(s.noise_bands), nfft=s.nfft) for s in config.ribbit]
    thresholds = {s.name: s.threshold for s in config.ribbit}

    futures = _submit_tasks(client, location, stores, species, thresholds, config)
    task_failures: list[dict] = []
    stage_s.update(_wait_for_tasks(futures, task_failures, progress, watch))

    # ---- collect what every task recorded, whether it ran now or in an earlier attempt
    failures = _failure_rows_from_inventory(inventory)
    n_clips_ok = 0
    for store in stores:
        for name in location.list(store.progress):
            marker = location.read_json(f"{store.progress}/{name}")
            if store.name == STORE_NAME:
                n_clips_ok += marker["n_ok"]
            failures += [dict(stage="spectrograms" if store.name == STORE_NAME else f"spectrograms:{store.name}",
                              item=item, error_type=et, message=msg) for item, et, msg in marker["failures"]]
    detections = {detector_name(s): 0 for s in thresholds} | {d.detector: 0 for d in detectors}
    for folder in [_RIBBIT_PROGRESS] + [_cnn_progress(d) for d in detectors]:
        for name in location.list(folder):
            for det, n in location.read_json(f"{folder}/{name}")["detections"].items():
                detections[det] = detections.get(det, 0) + n
    _write_empty_tables(location, config, detectors)
    failures += task_failures
    failures_df = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    failures_df = failures_df.sort_values(["stage", "item"], kind="stable").reset_index(drop=True)
    location.write_parquet("failures.parquet", failures_df, schema=FAILURE_SCHEMA)

    readable = inventory[inventory["status"] != "failed"]
    complete = not task_failures
    summary = RunSummary(
        output_url=location.url, status=("complete" if not len(failures_df) else "complete_with_failures")
        if complete else "incomplete",
        n_files=len(inventory), n_files_ok=int((inventory.status == "ok").sum()),
        n_files_truncated=int((inventory.status == "truncated").sum()),
        n_files_failed=int((inventory.status == "failed").sum()),
        audio_hours=float(readable["duration_s"].sum()) / 3600, n_clips=len(plan),
        n_clips_failed=len(plan) - n_clips_ok, detections=detections, n_failures=len(failures_df),
        wall_s=time.perf_counter() - started, stage_wall_s=stage_s)
    run_info.update(status=summary.status, finished=_now(),
                    summary={k: v for k, v in dataclasses.asdict(summary).items() if k != "output_url"},
                    sample_rate_hz=sample_rate_hz, spectrogram_params=params.as_dict())
    location.write_json("run.json", run_info)
    return summary


def _inventory(config: RunConfig, location: OutputLocation, client, files, progress: bool, watch) -> pd.DataFrame:
    if location.exists("inventory.parquet"):
        logger.info("reusing the stored inventory")
        return location.read_parquet("inventory.parquet")
    inp = config.input
    logger.info("inventory of %d files", len(files))
    batches = [list(files[i : i + INVENTORY_BATCH_FILES]) for i in range(0, len(files), INVENTORY_BATCH_FILES)]
    futures = client.map(inventory_files, batches, storage_options=inp.storage_options,
                         recorder_rule=inp.recorder, timezone=inp.timezone, pure=False)
    frames = [None] * len(futures)
    bar = StageProgress({"inventory": len(futures)}, enabled=progress)

    def done(fut, index):
        frames[index] = fut.result()
        bar.advance("inventory")

    try:
        wait_for_futures({fut: i for i, fut in enumerate(futures)}, done, watch=watch, tick=bar.tick)
    finally:
        bar.close()
    del futures
    inventory = pd.concat(frames, ignore_index=True)
    location.write_parquet("inventory.parquet", inventory)
    return inventory


def _sample_rate(config: RunConfig, inventory: pd.DataFrame) -> int:
    if config.spectrogram.sample_rate:
        return int(config.spectrogram.sample_rate)
    rates = inventory.loc[inventory["status"] != "failed", "sample_rate"].dropna()
    if rates.empty:
        return 32000
    return int(rates.mode().min())


def _failure_rows_from_inventory(inventory: pd.DataFrame) -> list[dict]:
    rows = []
    for r in inventory[inventory["status"] != "ok"].itertuples(index=False):
        error_type, _, message = (r.error or "Error: unknown").partition(": ")
        rows.append(dict(stage="inventory", item=r.file, error_type=error_type, message=message))
    return rows


def _plan_stores(config, location, inventory, plan, params, sample_rate_hz):
    """The spectrogram stores of the run (created here when new) and its CNN detectors."""
    clips_cfg, sc = config.clips, config.spectrogram
    main = _Store(STORE_NAME, _SPEC_PROGRESS, plan, params, sample_rate_hz, clips_cfg.duration)
    main_key = (params, sample_rate_hz, clips_cfg.duration, clips_cfg.overlap, clips_cfg.final_clip)
    stores, detectors = [main], []
    for model_cfg in config.cnn:
        det = describe_cnn_detector(model_cfg, sample_rate_hz)
        if (det.params, det.sample_rate_hz, det.clip_duration_s, det.overlap_s, det.final_clip) == main_key:
            det = dataclasses.replace(det, store=STORE_NAME)  # same input as the run's store: share it
            main.detectors.append(det)
        else:
            det_plan = plan_clips(inventory, clip_duration=det.clip_duration_s, clip_overlap=det.overlap_s,
                                  final_clip=det.final_clip)
            stores.append(_Store(det.store_name, f"_progress/{det.store_name.removesuffix('.zarr')}", det_plan,
                                 det.params, det.sample_rate_hz, det.clip_duration_s, detectors=[det]))
        detectors.append(det)
    for store in stores:
        if not location.exists(f"{store.name}/.zmetadata"):
            create_store(location, store.plan, params=store.params, sample_rate_hz=store.sample_rate_hz,
                         clip_duration_s=store.clip_duration_s, clips_per_chunk=sc.clips_per_chunk,
                         store_name=store.name)
    return stores, detectors


def _submit_tasks(client, location, stores, species, thresholds, config) -> dict:
    """Submit every task without a marker; returns ``{future: (stage, ClipRange)}`` (the only references)."""
    fingerprint = config.fingerprint()
    clips_per_chunk = config.spectrogram.clips_per_chunk
    gpu_workers = [a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
                   if "GPU" in (w.get("resources") or {})]
    if any(store.detectors for store in stores):
        logger.info("CNN tasks go to %s", f"{len(gpu_workers)} GPU worker(s)" if gpu_workers else "CPU workers")
    futures: dict = {}
    n_chunks = 0
    ribbit_done = {n.removesuffix(".json") for n in location.list(_RIBBIT_PROGRESS)}
    for store in stores:
        done = {n.removesuffix(".json") for n in location.list(store.progress)}
        cnn_done = {d.name: {n.removesuffix(".json") for n in location.list(_cnn_progress(d))}
                    for d in store.detectors}
        for r in chunk_ranges(len(store.plan), clips_per_chunk):
            n_chunks += 1
            chunk = store.plan.iloc[r.start : r.stop]
            dep = None
            if r.name not in done:
                dep = client.submit(_spectrogram_task, r, chunk, location, store.params, store.sample_rate_hz,
                                    store.clip_duration_s, store.name, store.progress,
                                    key=f"spectrograms-{fingerprint}-{store.name}-{r.name}", retries=1)
                futures[dep] = ("spectrograms", r)
            if store.name == STORE_NAME and species and r.name not in ribbit_done:
                fut = client.submit(_ribbit_task, r, chunk, location, species, thresholds, dep,
                                    key=f"ribbit-{fingerprint}-{r.name}", retries=1)
                futures[fut] = ("ribbit", r)
            for det in store.detectors:
                if r.name in cnn_done[det.name]:
                    continue
                fut = client.submit(_cnn_task, r, chunk, location, det, dep,
                                    key=f"{det.detector}-{fingerprint}-{r.name}", retries=1,
                                    resources={"GPU": 1} if gpu_workers else None)
                futures[fut] = ("cnn", r)
    logger.info("%d tasks to run (%d chunks in %d stores)", len(futures), n_chunks, len(stores))
    return futures


def _wait_for_tasks(futures: dict, task_failures: list, progress: bool, watch) -> dict:
    """Wait for the tasks (``futures`` is emptied as they finish); returns each stage's wall time (s)."""
    totals = collections.Counter(stage for stage, _ in futures.values())
    stages = sorted(totals, key=_STAGE_ORDER.index)
    bar = StageProgress({st: totals[st] for st in stages}, enabled=progress)
    remaining = dict(totals)
    stage_s = {}
    t0 = time.perf_counter()

    def done(fut, label):
        stage, r = label
        if fut.status == "error":
            exc = fut.exception()
            logger.error("%s task for clips %s failed: %s", stage, r.name, exc)
            task_failures.append(dict(stage=stage, item=f"clips {r.start}-{r.stop - 1}",
                                      error_type=type(exc).__name__, message=str(exc)))
        bar.advance(stage)
        remaining[stage] -= 1
        if remaining[stage] == 0:
            stage_s[stage] = time.perf_counter() - t0

    try:
        wait_for_futures(futures, done, watch=watch, tick=bar.tick)
    finally:
        bar.close()
    return stage_s


def _write_empty_tables(location: OutputLocation, config: RunConfig, detectors) -> None:
    """Give every configured detector a readable (possibly zero-row) score table, and the run a
    readable ``detections/`` folder, also when no clip could be analysed."""
    tables = [(detector_name(s.name), [s.name], f"ribbit-{s.name}", pa.float64()) for s in config.ribbit]
    tables += [(d.detector, list(d.classes), f"cnn-{d.name}", pa.float32()) for d in detectors]
    empty_range = "000000000-000000000"
    written = location.list("detections")
    for detector, classes, part, value_type in tables:
        if not location.list(f"scores/detector={detector}"):
            schema = score_schema(classes, value_type)
            location.write_parquet(f"scores/detector={detector}/part-{empty_range}.parquet",
                                   schema.empty_table().to_pandas(), schema=schema)
        own = re.compile(rf"^part-{re.escape(part)}-\d{{9}}-\d{{9}}\.parquet$")
        if not any(own.match(n) for n in written):
            location.write_parquet(f"detections/part-{part}-{empty_range}.parquet", empty_detections(),
                                   schema=DETECTION_SCHEMA)
    if not location.list("detections"):
        location.write_parquet(f"detections/part-none-{empty_range}.parquet", empty_detections(),
                               schema=DETECTION_SCHEMA)
