"""The one place that turns the stage functions into Dask work.

``run_pipeline(config, client)``: inventory -> clip plan -> spectrogram chunks -> RIBBIT chunks,
writing the output contract of ARCHITECTURE.md under ``config.output.url``:

    run.json, inventory.parquet, spectrograms.zarr, scores/detector=ribbit:<name>/part-*.parquet,
    detections/part-*.parquet, failures.parquet

Resume: every task writes its outputs atomically under names derived from its clip range, then a
marker in ``_progress/``. A rerun of the same configuration reuses the stored inventory (so the clip
plan, and every name, is the same) and submits only the ranges without a marker. A different
configuration in the same output URL is refused unless ``overwrite=True`` starts the run over.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import platform
import time
from importlib.metadata import PackageNotFoundError, version

import pandas as pd

from opso_core.ribbit import RibbitParams
from opso_core.spectrogram import SpectrogramParams
from pipelines.clip_plan import chunk_ranges, plan_clips
from pipelines.cnn_scores import describe_cnn_detector
from pipelines.config import RunConfig
from pipelines.errors import OutputConflictError, StorageError
from pipelines.inventory import inventory_files, list_audio_files
from pipelines.outputs import OutputLocation
from pipelines.ribbit_scores import detector_name, score_chunk
from pipelines.spectrogram_store import STORE_NAME, compute_chunk, create_store

__all__ = ["FAILURE_COLUMNS", "RunSummary", "run_pipeline", "read_status"]

logger = logging.getLogger(__name__)

FAILURE_COLUMNS = ["stage", "item", "error_type", "message"]
INVENTORY_BATCH_FILES = 32
_SPEC_PROGRESS = "_progress/spectrograms"
_RIBBIT_PROGRESS = "_progress/ribbit"


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


def _spectrogram_task(clip_range, clips, location, params, sample_rate_hz, clip_duration_s, store_name, progress):
    started = time.perf_counter()
    result = compute_chunk(clip_range, clips, location=location, params=params, sample_rate_hz=sample_rate_hz,
                           clip_duration_s=clip_duration_s, store_name=store_name)
    location.write_json(f"{progress}/{clip_range.name}.json",
                        {"n_ok": result.n_ok, "n_clips": len(clip_range),
                         "failures": [list(f) for f in result.failures],
                         "task_s": round(time.perf_counter() - started, 4)})
    return result.n_ok


def _ribbit_task(clip_range, clips, location, species, thresholds, _spectrograms_done=None):
    started = time.perf_counter()
    detections = score_chunk(clip_range, clips, location=location, species=species, thresholds=thresholds)
    location.write_json(f"{_RIBBIT_PROGRESS}/{clip_range.name}.json",
                        {"detections": {detector_name(k): v for k, v in detections.items()},
                         "task_s": round(time.perf_counter() - started, 4)})
    return detections


def _cnn_task(clip_range, clips, location, detector, _spectrograms_done=None):
    from pipelines.cnn_scores import infer_chunk

    started = time.perf_counter()
    result = infer_chunk(clip_range, clips, location=location, detector=detector)
    location.write_json(f"{_cnn_progress(detector)}/{clip_range.name}.json",
                        {"detections": {detector.detector: result["detections"]}, "device": result["device"],
                         "worker": result["worker"], "task_s": round(time.perf_counter() - started, 4),
                         "model_load_s": result.get("model_load_s", 0.0)})
    return result


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


def _check_previous_run(location: OutputLocation, fingerprint: str, overwrite: bool) -> None:
    if not location.exists("run.json"):
        if overwrite:
            location.remove_all()
        return
    previous = location.read_json("run.json")
    if overwrite:
        logger.warning("starting over: removing the previous outputs in %s", location.url)
        location.remove_all()
    elif previous.get("fingerprint") != fingerprint:
        raise OutputConflictError(
            f"{location.url} holds a run with a different configuration (fingerprint "
            f"{previous.get('fingerprint')} != {fingerprint}); use another output URL, or start over "
            "with --overwrite (deletes the old outputs)")
    else:
        logger.info("resuming the run in %s", location.url)


def _inventory(config: RunConfig, location: OutputLocation, client, progress: bool) -> pd.DataFrame:
    if location.exists("inventory.parquet"):
        logger.info("reusing the stored inventory")
        return location.read_parquet("inventory.parquet")
    inp = config.input
    files = list_audio_files(inp.url, inp.pattern, inp.storage_options)
    if not files:
        raise StorageError(f"no files match {inp.pattern!r} under {inp.url}")
    logger.info("inventory of %d files", len(files))
    batches = [files[i : i + INVENTORY_BATCH_FILES] for i in range(0, len(files), INVENTORY_BATCH_FILES)]
    futures = client.map(inventory_files, batches, storage_options=inp.storage_options,
                         recorder_rule=inp.recorder, timezone=inp.timezone, pure=False)
    frames = _gather_with_progress(client, futures, "inventory", progress)
    inventory = pd.concat(frames, ignore_index=True)
    location.write_parquet("inventory.parquet", inventory)
    return inventory


def _gather_with_progress(client, futures, desc, progress):
    from distributed import as_completed
    from tqdm.auto import tqdm

    with tqdm(total=len(futures), desc=desc, unit="task", disable=not progress) as bar:
        for _ in as_completed(futures):
            bar.update(1)
    return client.gather(futures)


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


def run_pipeline(config: RunConfig, client, *, overwrite: bool = False, progress: bool = True) -> RunSummary:
    """Run (or resume) every configured stage on ``client``'s cluster; see the module docstring."""
    started = time.perf_counter()
    location = OutputLocation(config.output.url, config.output.storage_options)
    fingerprint = config.fingerprint()
    _check_previous_run(location, fingerprint, overwrite)
    run_info = {"status": "running", "fingerprint": fingerprint, "config": config.public_dict(),
                "versions": _versions(), "started": _now()}
    if location.exists("run.json"):
        run_info["started"] = location.read_json("run.json").get("started", run_info["started"])
        run_info["resumed"] = _now()
    location.write_json("run.json", run_info)
    stage_s = {}

    t0 = time.perf_counter()
    inventory = _inventory(config, location, client, progress)
    stage_s["inventory"] = time.perf_counter() - t0

    clips_cfg = config.clips
    plan = plan_clips(inventory, clip_duration=clips_cfg.duration, clip_overlap=clips_cfg.overlap,
                      final_clip=clips_cfg.final_clip)
    sample_rate_hz = _sample_rate(config, inventory)
    sc = config.spectrogram
    params = SpectrogramParams.resolve(sample_rate_hz, window_type=sc.window_type, window_samples=sc.window_samples,
                                       overlap_fraction=sc.overlap_fraction, fft_size=sc.fft_size,
                                       decibel_limits=tuple(sc.decibel_limits))
    logger.info("%d clips of %.3g s at %d Hz", len(plan), clips_cfg.duration, sample_rate_hz)
    if len(plan) and not location.exists(f"{STORE_NAME}/.zmetadata"):
        create_store(location, plan, params=params, sample_rate_hz=sample_rate_hz,
                     clip_duration_s=clips_cfg.duration, clips_per_chunk=sc.clips_per_chunk)

    main = _Store(STORE_NAME, _SPEC_PROGRESS, plan, params, sample_rate_hz, clips_cfg.duration)
    main_key = (params, sample_rate_hz, clips_cfg.duration, clips_cfg.overlap, clips_cfg.final_clip)
    stores = [main]
    detectors = []
    for model_cfg in config.cnn:
        det = describe_cnn_detector(model_cfg, sample_rate_hz)
        if (det.params, det.sample_rate_hz, det.clip_duration_s, det.overlap_s, det.final_clip) == main_key:
            det = dataclasses.replace(det, store=STORE_NAME)  # same input as the run's store: share it
            main.detectors.append(det)
        else:
            det_plan = plan_clips(inventory, clip_duration=det.clip_duration_s, clip_overlap=det.overlap_s,
                                  final_clip=det.final_clip)
            store = _Store(det.store_name, f"_progress/{det.store_name.removesuffix('.zarr')}", det_plan,
                           det.params, det.sample_rate_hz, det.clip_duration_s, detectors=[det])
            stores.append(store)
            if len(det_plan) and not location.exists(f"{store.name}/.zmetadata"):
                create_store(location, det_plan, params=det.params, sample_rate_hz=det.sample_rate_hz,
                             clip_duration_s=det.clip_duration_s, clips_per_chunk=sc.clips_per_chunk,
                             store_name=store.name)
        detectors.append(det)

    species = [RibbitParams(name=s.name, signal_band=s.signal_band, pulse_rate_range=s.pulse_rate_range,
                            noise_bands=tuple(s.noise_bands), nfft=s.nfft) for s in config.ribbit]
    thresholds = {s.name: s.threshold for s in config.ribbit}
    gpu_workers = [a for a, w in client.scheduler_info()["workers"].items() if "GPU" in (w.get("resources") or {})]
    if detectors:
        logger.info("CNN tasks go to %s", f"{len(gpu_workers)} GPU worker(s)" if gpu_workers else "CPU workers")
    task_failures: list[dict] = []
    futures: dict = {}  # future -> (stage, ClipRange)
    n_chunks = 0
    ribbit_done = {n.removesuffix(".json") for n in location.list(_RIBBIT_PROGRESS)}
    for store in stores:
        done = {n.removesuffix(".json") for n in location.list(store.progress)}
        cnn_done = {d.name: {n.removesuffix(".json") for n in location.list(_cnn_progress(d))}
                    for d in store.detectors}
        for r in chunk_ranges(len(store.plan), sc.clips_per_chunk):
            n_chunks += 1
            chunk = store.plan.iloc[r.start : r.stop]
            dep = None
            if r.name not in done:
                dep = client.submit(_spectrogram_task, r, chunk, location, store.params, store.sample_rate_hz,
                                    store.clip_duration_s, store.name, store.progress,
                                    key=f"spectrograms-{fingerprint}-{store.name}-{r.name}", retries=1)
                futures[dep] = ("spectrograms", r)
            if store is main and species and r.name not in ribbit_done:
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
    stage_s.update(_wait_for_stages(futures, task_failures, progress))

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
    failures += task_failures
    failures_df = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    failures_df = failures_df.sort_values(["stage", "item"], kind="stable").reset_index(drop=True)
    location.write_parquet("failures.parquet", failures_df)

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


def _wait_for_stages(futures: dict, task_failures: list, progress: bool) -> dict:
    from distributed import as_completed
    from tqdm.auto import tqdm

    stages = sorted({stage for stage, _ in futures.values()}, key=["spectrograms", "ribbit", "cnn"].index)
    totals = {st: sum(1 for s, _ in futures.values() if s == st) for st in stages}
    bars = {st: tqdm(total=totals[st], desc=st, unit="chunk", disable=not progress) for st in stages}
    remaining = dict(totals)
    stage_s = {}
    t0 = time.perf_counter()
    try:
        for fut in as_completed(list(futures)):
            stage, r = futures[fut]
            if fut.status == "error":
                exc = fut.exception()
                logger.error("%s task for clips %s failed: %s", stage, r.name, exc)
                task_failures.append(dict(stage=stage, item=f"clips {r.start}-{r.stop - 1}",
                                          error_type=type(exc).__name__, message=str(exc)))
            bars[stage].update(1)
            remaining[stage] -= 1
            if remaining[stage] == 0:
                stage_s[stage] = time.perf_counter() - t0
    finally:
        for bar in bars.values():
            bar.close()
    return stage_s


def read_status(url: str, storage_options=None) -> dict:
    """The ``run.json`` of the run at ``url``."""
    location = OutputLocation(url, storage_options)
    if not location.exists("run.json"):
        raise StorageError(f"no opso run at {url} (run.json not found)")
    return location.read_json("run.json")
