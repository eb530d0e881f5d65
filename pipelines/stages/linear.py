"""The ``linear`` detector kind: a linear classifier (``opso train-linear``) scores every embedding of a
BirdNET or CNN entry's store (``embeddings: true``), without reading audio.

Phase 2: it runs once the run's detectors (phase 1) have written the embeddings. Its tasks own whole
chunks of the store (``chunks_per_task`` each; the driver plans one row per chunk, never per clip) and
write, per task range,

- ``scores/detector=linear:<name>/part-<range>.parquet``: one row per window with an embedding (the
  store's clip coordinates), one float32 column per class (the sigmoid of the classifier);
- ``detections/part-linear-<name>-<range>.parquet``: classes at or above their threshold.

Ranges are counted in store chunks. The scores depend on the model file (its hash) and on the
embeddings (the store's identity); the detections on the thresholds too: a changed threshold re-derives
them from the stored scores. Windows whose embedding is missing (their audio failed, as
``failures.parquet`` says under the BirdNET stage) get no row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re

import fsspec
import numpy as np
import pandas as pd

from pipelines.config import LinearConfig, RunConfig
from pipelines.driver.clip_plan import ClipRange
from pipelines.driver.tasks import Stage, task_ranges
from pipelines.embeddings.linear import LinearModel
from pipelines.errors import ConfigError, StorageError
from pipelines.outputs.embedding_store import embedding_store_name
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import OutputName
from pipelines.outputs.tables import (
    ID_COLUMNS,
    rederive_detections,
    score_part,
    score_schema,
    write_detections,
    write_empty_detector_tables,
)
from pipelines.stages.base import RANGE, Product, RunContext, StageKind

__all__ = ["KIND", "LinearTask", "describe_linear"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LinearDetector:
    """One ``linear`` entry, resolved: its model and thresholds (picklable: a few kB per class)."""

    name: str
    model: LinearModel
    sha256: str
    thresholds: tuple[float, ...]

    @property
    def detector(self) -> str:
        return f"linear:{self.name}"


_DESCRIBED: dict = {}


def describe_linear(cfg: LinearConfig, config: RunConfig | None = None) -> LinearDetector:
    """Read the entry's model file (once per entry in this process) and check it against the run.

    Raises
    ------
    ConfigError
        No such file, not a linear model, thresholds naming other classes, or (with ``config``) a model
        trained on embeddings this run does not write (another detector, or another model).
    """
    key = cfg.model_dump_json()
    if key not in _DESCRIBED:
        try:
            with fsspec.open(cfg.model, "rb", **(cfg.storage_options or {})) as f:
                data = f.read()
        except FileNotFoundError:
            raise ConfigError(f"linear.{cfg.name}: model file not found: {cfg.model}") from None
        except Exception as exc:  # storage backends raise their own types
            raise StorageError(f"cannot read the linear model {cfg.model}: {type(exc).__name__}: {exc}") from exc
        model = LinearModel.from_bytes(data, f"linear.{cfg.name}'s model {cfg.model}")
        own = dict(cfg.threshold) if isinstance(cfg.threshold, dict) else {}
        unknown = sorted((set(own) | set(cfg.class_thresholds)) - set(model.classes))
        if unknown:
            raise ConfigError(f"linear.{cfg.name}: thresholds name classes the model does not have: {unknown} (it "
                              f"has {list(model.classes)})")
        if isinstance(cfg.threshold, dict):
            missing = sorted(set(model.classes) - set(own) - set(cfg.class_thresholds))
            if missing:
                raise ConfigError(f"linear.{cfg.name}.threshold: no threshold for classes {missing}")
        default = None if isinstance(cfg.threshold, dict) else float(cfg.threshold)
        thresholds = tuple(float(cfg.class_thresholds.get(c, own.get(c, default))) for c in model.classes)
        _DESCRIBED[key] = LinearDetector(cfg.name, model, hashlib.sha256(data).hexdigest(), thresholds)
    det = _DESCRIBED[key]
    if config is not None:
        _check_embeddings(cfg, det, config)
    return det


def _check_embeddings(cfg: LinearConfig, det: LinearDetector, config: RunConfig) -> None:
    kind, _, name = det.model.embedding.partition(":")
    entries = {"birdnet": config.birdnet, "cnn": config.cnn}.get(kind, [])
    entry = next((e for e in entries if e.name == name), None)
    if entry is None or not entry.embeddings:
        offered = [f"{k}:{e.name}" for k, es in (("birdnet", config.birdnet), ("cnn", config.cnn)) for e in es
                   if e.embeddings]
        raise ConfigError(f"linear.{cfg.name}: its model takes the embeddings of {det.model.embedding}, which this run "
                          f"does not write (it writes {offered or 'none'}; set embeddings: true on that {kind or 'detector'} "
                          "entry)")
    if kind == "birdnet":
        from pipelines.stages.birdnet import describe_birdnet

        sha = describe_birdnet(entry).model_sha256
    else:
        from pipelines.stages.cnn import cached_cnn_detector

        sha = cached_cnn_detector(entry, config.spectrogram.sample_rate).sha256
    if det.model.embedding_model and det.model.embedding_model != sha:
        raise ConfigError(f"linear.{cfg.name}: its model was trained on embeddings of another {kind} model "
                          f"({det.model.embedding_model[:12]}, this run's is {sha[:12]}); train it again on this run")


@dataclasses.dataclass(frozen=True)
class LinearTask:
    """Score a range of store chunks and write the range's tables, or only re-derive its detections."""

    detector: LinearDetector
    store: str  # the embedding store, relative to the run folder

    def __call__(self, clip_range: ClipRange, chunks: pd.DataFrame, location: OutputLocation,
                 needed: frozenset | None = None) -> dict:
        det = self.detector
        thresholds = dict(zip(det.model.classes, det.thresholds, strict=True))
        if needed is not None and f"scores:{det.detector}" not in needed:
            if f"detections:{det.detector}" not in needed:
                return {}
            return {"detections": {det.detector: rederive_detections(location, det.detector, clip_range.name,
                                                                      thresholds)}}
        import zarr

        group = zarr.open_group(location.url_of(self.store), mode="r", zarr_format=2,
                                storage_options=location.storage_options or None)
        first, last = int(chunks["start"].min()), int(chunks["stop"].max())
        vectors = np.asarray(group["embedding"][first:last], dtype=np.float32)
        ok = np.isfinite(vectors).all(axis=1)
        utc = np.asarray(group["start_time_utc"][first:last]).astype("datetime64[ns]")
        ids = pd.DataFrame({"file": np.asarray(group["file"][first:last]).astype(object),
                            "recorder": np.asarray(group["recorder"][first:last]).astype(object),
                            "start_time": np.asarray(group["start_time"][first:last], dtype=np.float64),
                            "end_time": np.asarray(group["end_time"][first:last], dtype=np.float64),
                            "start_time_utc": pd.to_datetime(utc).tz_localize("UTC")})[ok].reset_index(drop=True)
        values = det.model.scores(vectors[ok])
        table = pd.concat([ids[ID_COLUMNS], pd.DataFrame(values, columns=list(det.model.classes))], axis=1)
        location.write_parquet(score_part(det.detector, clip_range.name), table,
                               schema=score_schema(det.model.classes))
        n = write_detections(location, table, det.detector, clip_range.name, thresholds)
        return {"n_clips": last - first, "n_ok": int(ok.sum()), "failures": [], "detections": {det.detector: n}}


class LinearKind(StageKind):
    """Phase 2: the ``linear`` entries score the stored embeddings (see the module docstring)."""

    name = "linear"
    phase = 2
    output_names = (
        OutputName("scores", rf"detector=linear:[^/]+/part-{RANGE}\.parquet"),
        OutputName("detections", rf"part-linear-[A-Za-z0-9_.-]+-{RANGE}\.parquet"),
    )

    def enabled(self, config: RunConfig) -> bool:
        return bool(config.linear)

    def check(self, config: RunConfig) -> None:
        for cfg in config.linear:
            describe_linear(cfg, config)

    def products(self, ctx: RunContext) -> list[Product]:
        products = []
        for cfg in ctx.config.linear:
            det = describe_linear(cfg)
            name = det.detector
            products.append(Product(f"scores:{name}", name, {
                f"linear[{cfg.name}].model_sha256": det.sha256, f"linear[{cfg.name}].chunks_per_task": cfg.chunks_per_task},
                inputs=(f"embeddings:{det.model.embedding}",),
                outputs=(OutputName(f"scores/detector={name}", rf"part-{RANGE}\.parquet"),)))
            products.append(Product(f"detections:{name}", name, {
                f"linear[{cfg.name}].thresholds": dict(zip(det.model.classes, det.thresholds, strict=True))},
                inputs=(f"scores:{name}",), detector=name, rederivable=True, outputs=(
                OutputName("detections", rf"part-linear-{re.escape(cfg.name)}-{RANGE}\.parquet"),)))
        return products

    def plan(self, ctx: RunContext, products: dict) -> list[Stage]:
        import zarr

        stages = []
        for cfg in ctx.config.linear:
            det = describe_linear(cfg)
            store = embedding_store_name(det.model.embedding)
            group = zarr.open_group(ctx.location.url_of(store), mode="r", zarr_format=2,
                                    storage_options=ctx.location.storage_options or None)
            n_clips, size = group["embedding"].shape[0], group["embedding"].chunks[0]
            starts = np.arange(0, n_clips, size, dtype=np.int64)
            chunks = pd.DataFrame({"start": starts, "stop": np.minimum(starts + size, n_clips)})
            stages.append(Stage(det.detector, chunks, task_ranges(len(chunks), cfg.chunks_per_task),
                                LinearTask(det, store), cpu_only=True))
        return stages

    def counters(self, config: RunConfig) -> dict[str, int]:
        return {f"linear:{cfg.name}": 0 for cfg in config.linear}

    def write_empty(self, ctx: RunContext) -> None:
        for cfg in ctx.config.linear:
            det = describe_linear(cfg)
            write_empty_detector_tables(ctx.location, det.detector, det.model.classes)


KIND = LinearKind()
