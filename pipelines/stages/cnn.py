"""CNN stage: score clips with a trained model, on GPU workers when the cluster has them.

A task reads its clips' audio and computes the spectrograms the model expects (the model's clip
length, ``to_spec`` settings and sample rate) in full precision, so every score is computed on
exactly the model's input, whatever the run keeps in ``spectrograms.zarr``. The spectrograms become
the network's input on the worker's device (:func:`opso_core.ml.spectrogram_tensors.spectrograms_to_tensor`:
bandpass, image scaling, resize, rescale — the non-augmentation steps of the model's
``SpectrogramPreprocessor``); while the network runs one batch, a thread prepares the next. A task
writes

- ``scores/detector=cnn:<name>/part-<range>.parquet``: ``file, recorder, start_time, end_time,
  start_time_utc`` and one column per class;
- ``detections/part-cnn-<name>-<range>.parquet``: long format, classes at or above their threshold;
- with ``embeddings: true``, the clips' embeddings (the input of the model's classifier layer, as a
  forward pre-hook sees it) into ``embeddings.zarr/cnn-<name>`` (:mod:`pipelines.outputs.embedding_store`;
  tasks then own whole chunks of the store).

The model is loaded once per worker process (cached by the file's SHA-256) from opso's safe model
format; pickled models are refused. Scores equal ``CNN.predict(files, activation_layer=...)`` on
the same clips within 1e-4 (the same float64 STFT and OpenSoundscape 0.9.0's image resize, as
matrix products in float32; a colormap can move a few pixels by one colour step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
import threading
import time

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from opso_core.spectrogram import SpectrogramParams
from pipelines.config import CnnModelConfig, RunConfig
from pipelines.driver.clip_plan import ClipRange
from pipelines.driver.tasks import Stage, task_ranges
from pipelines.errors import ConfigError, StorageError
from pipelines.outputs.embedding_store import (
    EMBEDDINGS_FOLDER,
    MAX_EMBEDDING_CHUNK,
    EmbeddingLayout,
    embedding_store_name,
    ensure_embedding_store,
    write_embeddings,
)
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import OutputName
from pipelines.outputs.spectrogram_store import write_clip_coords
from pipelines.outputs.tables import (
    ID_COLUMNS,
    rederive_detections,
    score_part,
    score_schema,
    write_detections,
    write_empty_detector_tables,
)
from pipelines.stages.base import RANGE, ClipSettings, Product, RunContext, StageKind, flat_settings

__all__ = ["KIND", "CnnDetector", "CnnTask", "cached_cnn_detector", "describe_cnn_detector", "infer_clips"]

_PROVISIONAL_SAMPLE_RATE_HZ = 32000  # stands in for a rate not yet known, where only rate-free checks count
_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True, eq=False)
class CnnDetector:
    """Everything a worker needs to score chunks with one model (derived from the model file)."""

    name: str
    url: str
    sha256: str
    storage_options: dict
    classes: tuple[str, ...]
    activation: str | None
    thresholds: tuple[float, ...]
    batch_size: int
    device: str
    clip_duration_s: float
    overlap_s: float
    final_clip: str | None
    sample_rate_hz: int
    params: SpectrogramParams
    tensor_settings: object  # opso_core.ml.spectrogram_tensors.TensorSettings
    clips_per_task: int | None = None
    prepare_threads: int | None = None
    embeddings: bool = False
    precision: str = "float32"
    cuda_graphs: bool = True

    @property
    def detector(self) -> str:
        return f"cnn:{self.name}"


def _read_model_file(url, storage_options) -> bytes:
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise ConfigError(f"cnn model file not found: {url}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"cnn model {url} is a folder; give the file written by CNN.save()") from exc
    except Exception as exc:  # storage backends raise their own types (credentials, endpoint)
        raise StorageError(f"cannot read the cnn model {url}: {type(exc).__name__}: {exc}") from exc


def _inference_spec(data: bytes, cfg: CnnModelConfig):
    """The library's answer to "what input does this model expect" (:func:`opso_core.ml.inference_spec`),
    its errors as configuration errors naming the model."""
    from opso_core.errors import OpsoValueError
    from opso_core.ml import NotBatchableError, inference_spec
    from opso_core.ml.persistence import PickleNotAllowedError

    try:
        return inference_spec(data)
    except PickleNotAllowedError as exc:
        raise ConfigError(f"cnn model {cfg.model}: {exc}; a pickled model is refused (unpickling runs code from "
                          "the file): if you trust it, load it with load_model(path, allow_pickle=True) and save it "
                          "again with model.save(path)") from exc
    except NotBatchableError as exc:
        raise ConfigError(f"cnn.{cfg.name}: the pipeline cannot reproduce this model's input: {exc}") from exc
    except OpsoValueError as exc:
        raise ConfigError(f"cnn model {cfg.model}: {exc}") from exc


def _check_weights(data: bytes, cfg: CnnModelConfig) -> None:
    """The model's weights are whole (:func:`opso_core.ml.persistence.check_weights`), as a configuration
    error naming the model: found before the cluster starts, not by every task."""
    from opso_core.errors import OpsoValueError
    from opso_core.ml.persistence import check_weights

    try:
        check_weights(data)
    except OpsoValueError as exc:
        raise ConfigError(f"cnn model {cfg.model}: {exc}") from exc


def describe_cnn_detector(cfg: CnnModelConfig, run_sample_rate_hz: int | None) -> CnnDetector:
    """Read the model's description, check its weights are whole, and derive the stage's settings.

    ``run_sample_rate_hz`` is the run's ``spectrogram.sample_rate`` (Hz); None before the inventory
    has found the archive's rate: the checks that need it are then left for later.

    Raises
    ------
    ConfigError
        The file is missing or pickled, its preprocessing has no batch form the stage can reproduce
        (:class:`opso_core.ml.NotBatchableError`), its band does not fit the sample rate, or the
        thresholds do not match its classes.
    """
    from opso_core.ml.model_input import SampleRateError

    data = _read_model_file(cfg.model, cfg.storage_options)
    spec = _inference_spec(data, cfg)
    _check_weights(data, cfg)
    sample_rate = spec.sample_rate_hz or run_sample_rate_hz
    if sample_rate is not None:
        try:
            spec.check_sample_rate(int(sample_rate))
        except SampleRateError as exc:
            raise ConfigError(f"cnn.{cfg.name}: {exc}; in a run, spectrogram.sample_rate sets the rate the audio "
                              "is resampled to") from exc
    sample_rate = int(sample_rate or _PROVISIONAL_SAMPLE_RATE_HZ)
    classes = tuple(spec.classes)
    if isinstance(cfg.threshold, dict):
        missing = sorted(set(classes) - set(cfg.threshold))
        if missing:
            raise ConfigError(f"cnn.{cfg.name}.threshold: no threshold for classes {missing}")
        unknown = sorted(set(cfg.threshold) - set(classes))
        if unknown:
            raise ConfigError(f"cnn.{cfg.name}.threshold: the model has no classes {unknown} (it has {list(classes)})")
        thresholds = tuple(float(cfg.threshold[c]) for c in classes)
    else:
        thresholds = (float(cfg.threshold),) * len(classes)
    unknown = sorted(set(cfg.class_thresholds) - set(classes))
    if unknown:
        raise ConfigError(f"cnn.{cfg.name}.class_thresholds: the model has no classes {unknown} (it has {list(classes)})")
    thresholds = tuple(float(cfg.class_thresholds.get(c, t)) for c, t in zip(classes, thresholds, strict=True))
    duration = float(spec.sample_duration_s)
    return CnnDetector(name=cfg.name, url=cfg.model, sha256=hashlib.sha256(data).hexdigest(),
                       storage_options=dict(cfg.storage_options), classes=classes, activation=cfg.activation,
                       thresholds=thresholds, batch_size=cfg.batch_size, device=cfg.device,
                       clip_duration_s=duration, overlap_s=cfg.overlap_fraction * duration,
                       final_clip=cfg.final_clip, sample_rate_hz=sample_rate,
                       params=spec.spectrogram_params(sample_rate), tensor_settings=spec.tensor_settings(sample_rate),
                       clips_per_task=cfg.clips_per_task, prepare_threads=cfg.prepare_threads,
                       embeddings=bool(cfg.embeddings), precision=cfg.precision, cuda_graphs=cfg.cuda_graphs)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load_model(detector: CnnDetector, device):
    """The detector's model file loaded on ``device`` (checked against the hash the run started with)."""
    from opso_core.ml.cnn import load_model

    data = _read_model_file(detector.url, detector.storage_options)
    if hashlib.sha256(data).hexdigest() != detector.sha256:
        raise ConfigError(f"the model file {detector.url} changed while the run was going on")
    fd, tmp = tempfile.mkstemp(suffix=".model")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_model(tmp, device=device)
    finally:
        os.unlink(tmp)


def _model(detector: CnnDetector):
    """The detector's network on this worker, in its inference form, loaded once per process."""
    from opso_core.ml.utils import inference_network

    device = _device(detector.device)
    key = (detector.sha256, str(device))
    with _MODELS_LOCK:
        if key not in _MODELS:
            model = _load_model(detector, device)
            classifier = getattr(model.network, "classifier_layer", "fc")
            network = inference_network(model.network, device)  # a copy: the loaded model is not kept
            _hook_classifier_input(network, classifier)
            _MODELS[key] = network
        return _MODELS[key]


#: the input of the classifier layer in the last forward pass of this thread (the clips' embeddings)
_LAST_EMBEDDING = threading.local()


def _hook_classifier_input(network, classifier: str) -> None:
    """Keep the input of ``network``'s classifier layer (dotted path) of each forward pass, per thread (a
    worker's threads share one network)."""
    try:
        layer = network.get_submodule(classifier)
    except AttributeError:
        return  # an architecture without a classifier layer: no embeddings (asked for: an error in the task)

    def keep(module, inputs):
        _LAST_EMBEDDING.value = inputs[0]

    layer.register_forward_pre_hook(keep)


def embedding_size(detector: CnnDetector) -> int:
    """Values per clip in the detector's embeddings: the in-features of its model's classifier layer (the
    model is built here, on the CPU)."""
    import torch

    model = _load_model(detector, torch.device("cpu"))
    classifier = getattr(model.network, "classifier_layer", "fc")
    try:
        layer = model.network.get_submodule(classifier)
    except AttributeError:
        raise ConfigError(f"cnn.{detector.name}.embeddings: the model's network has no classifier layer "
                          f"{classifier!r} to take embeddings from") from None
    size = getattr(layer, "in_features", None)
    if not isinstance(size, int):
        raise ConfigError(f"cnn.{detector.name}.embeddings: the classifier layer {classifier!r} is a "
                          f"{type(layer).__name__}, not a linear layer; its input size is unknown")
    return size


@dataclasses.dataclass(frozen=True)
class CnnTask:
    """What one CNN task does (picklable): score a range of the detector's clips and write its tables,
    or, when only the detections are needed (a changed threshold), re-derive them from the stored scores."""

    detector: CnnDetector
    input_storage_options: dict
    store: EmbeddingLayout | None = None  # with embeddings

    def __call__(self, clip_range: ClipRange, clips: pd.DataFrame, location: OutputLocation,
                 needed: frozenset | None = None) -> dict:
        det = self.detector
        if needed is not None and f"scores:{det.detector}" not in needed and f"embeddings:{det.detector}" not in needed:
            if f"detections:{det.detector}" not in needed:
                return {}
            n = rederive_detections(location, det.detector, clip_range.name, dict(zip(det.classes, det.thresholds,
                                                                                      strict=True)))
            return {"detections": {det.detector: n}}
        result = infer_clips(clip_range, clips, location=location, detector=det,
                             input_storage_options=self.input_storage_options, store=self.store)
        return {"n_clips": len(clip_range), "n_ok": result["n_ok"], "failures": result["failures"],
                "detections": {det.detector: result["detections"]}, "device": result["device"],
                "model_load_s": result["model_load_s"], "forward_s": result["forward_s"],
                "prepare_threads": result["prepare_threads"], "graph_batches": result["graph_batches"]}


@dataclasses.dataclass(frozen=True)
class _Batch:
    """One batch as the prepare threads leave it: the clips' dB spectrograms (CPU device), or the audio
    of its good clips in pinned memory (GPU: the spectrograms are computed there), the ``ok`` mask and
    failures."""

    values: np.ndarray | None
    samples: object  # torch.Tensor (n_ok, n_samples) or None
    ok: np.ndarray
    failures: tuple


def _prepare(detector: CnnDetector, clips: pd.DataFrame, storage_options, audio_only: bool) -> _Batch:
    from pipelines.outputs.spectrogram_store import (
        clip_audio_batch,
        clip_failures,
        clip_spectrograms,
    )

    if not audio_only:
        spec = clip_spectrograms(clips, params=detector.params, sample_rate_hz=detector.sample_rate_hz,
                                 clip_duration_s=detector.clip_duration_s, storage_options=storage_options)
        return _Batch(spec.values, None, spec.ok, spec.failures)
    import torch

    samples, ok, file_failures = clip_audio_batch(clips, sample_rate_hz=detector.sample_rate_hz,
                                                  clip_duration_s=detector.clip_duration_s,
                                                  storage_options=storage_options)
    # the good clips' audio in page-locked memory, so the copy to the GPU does not block the network
    good = torch.from_numpy(samples[ok])
    return _Batch(None, good.pin_memory() if torch.cuda.is_available() else good, ok,
                  clip_failures(clips, file_failures))


def infer_clips(clip_range: ClipRange, clips: pd.DataFrame, *, location: OutputLocation, detector: CnnDetector,
                input_storage_options=None, store: EmbeddingLayout | None = None) -> dict:
    """Score a range of clips with the detector's model and write its score and detection tables.

    The next batches of ``batch_size`` clips are prepared in :func:`prepare_threads` threads while the
    network runs: on a CPU device they are read and turned into spectrograms there; on a CUDA device
    the threads only read audio and the spectrograms are computed on the GPU
    (:func:`opso_core.ml.spectrogram_tensors.spectrograms_on_device`, the same numbers to ~1e-5 dB).

    Returns
    -------
    dict
        ``detections`` (count), ``failures`` (``[item, error_type, message]``), ``device``,
        ``model_load_s`` and ``forward_s`` (seconds in the network).
    """
    import torch

    from opso_core.ml.utils import apply_activation_layer, prefetched
    from pipelines.stages.cnn_batch import BatchScorer

    started = time.perf_counter()
    network = _model(detector)
    model_load_s = time.perf_counter() - started
    device = next(network.parameters()).device
    scores = np.full((len(clips), len(detector.classes)), np.nan, dtype=np.float32)
    valid = np.zeros(len(clips), dtype=bool)
    failures: dict[str, list] = {}
    starts = range(0, len(clips), detector.batch_size)
    threads = prepare_threads(detector.prepare_threads, device)
    on_device = device.type == "cuda"  # spectrograms where the network runs: the CPU threads only read audio
    scorer = BatchScorer(network, detector, device, cuda_graphs=detector.cuda_graphs, keep_embeddings=store is not None)
    if on_device:  # before the prepare threads start: a graph's capture must not overlap their CUDA calls
        from pipelines.outputs.spectrogram_store import clip_samples

        scorer.prepare(clip_samples(detector.clip_duration_s, detector.sample_rate_hz))
    prepared = iter(prefetched(lambda start: _prepare(detector, clips.iloc[start : start + detector.batch_size],
                                                      input_storage_options, audio_only=on_device),
                               starts, threads=threads, name="opso-cnn-prepare"))
    outputs = []  # (rows, scores on the device): copied back once, so the GPU is never waited for per batch
    embedded = []  # (rows, embeddings on the device), with embeddings
    wait_s = 0.0
    loop_started = time.perf_counter()
    with torch.no_grad():
        for start in starts:
            t0 = time.perf_counter()
            batch = next(prepared)
            wait_s += time.perf_counter() - t0
            for item, error_type, message in batch.failures:
                failures.setdefault(item.split(" clips ")[0], [error_type, message, []])[2].append(item)
            rows = start + np.flatnonzero(batch.ok)
            if not len(rows):
                continue
            if on_device:
                logits = scorer.from_audio(batch.samples)
            else:
                logits = scorer.from_spectrograms(batch.values[batch.ok])
            outputs.append((rows, apply_activation_layer(logits, detector.activation)))
            if store is not None:
                embedded.append((rows, _LAST_EMBEDDING.value.detach().float().flatten(1)))
        for rows, batch_scores in outputs:
            scores[rows] = batch_scores.cpu().numpy()
            valid[rows] = True
    forward_s = time.perf_counter() - loop_started - wait_s
    ids = clips[ID_COLUMNS].reset_index(drop=True)
    table = pd.concat([ids, pd.DataFrame(scores, columns=list(detector.classes))], axis=1)[valid].reset_index(drop=True)
    n_detections = write_detections(location, table, detector.detector, clip_range.name,
                                    dict(zip(detector.classes, detector.thresholds, strict=True)))
    location.write_parquet(score_part(detector.detector, clip_range.name), table,
                           schema=score_schema(detector.classes, pa.float32()))
    if store is not None:  # NaN where a clip failed
        values = np.full((len(clips), store.n_features), np.nan, dtype=np.float32)
        for rows, batch in embedded:
            values[rows] = batch.cpu().numpy()
        name = embedding_store_name(detector.detector)
        write_embeddings(location, detector.detector, clip_range, values, clips_per_chunk=store.chunk)
        write_clip_coords(location, clip_range, clips, clips_per_chunk=store.chunk, n_clips=store.n_clips,
                          index_chunk=store.index_chunk, store_name=name)
    file_failures = [[_merge_items(file, items), error_type, message]
                     for file, (error_type, message, items) in failures.items()]
    return {"detections": n_detections, "n_ok": int(valid.sum()), "failures": file_failures, "device": str(device),
            "model_load_s": model_load_s, "forward_s": round(forward_s, 4), "prepare_threads": threads,
            "graph_batches": scorer.replays}


#: most threads that read audio for a GPU's batches by default (on an H200, 1, 4 and 8 gave the same
#: throughput once spectrograms moved to the GPU; benchmarks/README.md)
MAX_DEFAULT_PREPARE_THREADS = 4


def prepare_threads(configured: int | None, device) -> int:
    """Threads that read audio and compute spectrograms for the next batches while the network runs.

    ``configured`` (the ``cnn`` entry's ``prepare_threads``) wins; by default one on a CPU device
    (the worker's threads are its cores, and the network uses them), and on a GPU the cores this
    process may use, less the one that drives the GPU, up to :data:`MAX_DEFAULT_PREPARE_THREADS`.
    """
    if configured:
        return int(configured)
    if getattr(device, "type", str(device)) == "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_PREPARE_THREADS, cores - 1))


def _merge_items(file: str, items: list[str]) -> str:
    """``<file> clips a-b`` covering every batch's clip numbers of ``file``."""
    numbers = [int(n) for item in items for n in item.rsplit(" clips ", 1)[1].split("-")]
    return f"{file} clips {min(numbers)}-{max(numbers)}"


#: a GPU worker's task covers this many times ``spectrogram.task_audio_s`` of audio (H200, ResNet18,
#: 224x224: 16x gave 0.3 s of GPU work per task; benchmarks/README.md)
GPU_TASK_FACTOR = 64


def _embedding_chunk(detector: CnnDetector, per_task: int) -> int:
    """Clips per chunk of the detector's store: whole batches, at most a task's and :data:`MAX_EMBEDDING_CHUNK`."""
    batches = max(1, min(per_task, MAX_EMBEDDING_CHUNK) // detector.batch_size)
    return batches * detector.batch_size


def _per_task(detector: CnnDetector, task_audio_s: float, gpu_workers: bool) -> int:
    """Clips per task: the ``cnn`` entry's ``clips_per_task``, or by default ``task_audio_s`` seconds of
    audio on CPU workers and :data:`GPU_TASK_FACTOR` times that on GPU workers (about ten thousand 2 s
    clips: more than a second of GPU work for a ResNet18 on an H200, so per-task overhead stays small)."""
    step_s = detector.clip_duration_s - detector.overlap_s
    return detector.clips_per_task or max(1, round(task_audio_s / step_s)) * (GPU_TASK_FACTOR if gpu_workers else 1)


_DESCRIBED: dict = {}


def cached_cnn_detector(cfg: CnnModelConfig, sample_rate_hz: int | None) -> CnnDetector:
    """:func:`describe_cnn_detector`, read (and its weights checked) once per model file and rate in this
    process (the driver asks for the products, the plan and the checks, and the linear and localization
    stages for the model's hash and classes; a model file may be hundreds of megabytes)."""
    key = (cfg.model_dump_json(), sample_rate_hz)
    if key not in _DESCRIBED:
        if len(_DESCRIBED) > 64:
            _DESCRIBED.clear()
        _DESCRIBED[key] = describe_cnn_detector(cfg, sample_rate_hz)
    return _DESCRIBED[key]


class CnnKind(StageKind):
    """One stage per ``cnn`` entry: the model's scores and detections over its own clips."""

    name = "cnn"
    phase = 1
    output_names = (
        OutputName("scores", rf"detector=cnn:[^/]+/part-{RANGE}\.parquet"),
        OutputName("detections", rf"part-cnn-[A-Za-z0-9_.-]+-{RANGE}\.parquet"),
        OutputName(EMBEDDINGS_FOLDER, r"cnn-[A-Za-z0-9_.-]+", store=True),
    )

    def enabled(self, config: RunConfig) -> bool:
        return bool(config.cnn)

    def check(self, config: RunConfig) -> None:
        for model in config.cnn:
            cached_cnn_detector(model, config.spectrogram.sample_rate)

    def check_at_sample_rate(self, config: RunConfig, sample_rate_hz: int, params) -> None:
        for model in config.cnn:
            cached_cnn_detector(model, sample_rate_hz)

    def run_clips(self, config: RunConfig):
        if not config.cnn:
            return None
        det = cached_cnn_detector(config.cnn[0], config.spectrogram.sample_rate)
        return ClipSettings(det.clip_duration_s, det.overlap_s, det.final_clip), det.detector

    def products(self, ctx: RunContext) -> list[Product]:
        products = []
        for model in ctx.config.cnn:
            det = cached_cnn_detector(model, ctx.sample_rate_hz)
            own = flat_settings(f"cnn[{model.name}]", model.model_dump(mode="json"), drop=(
                "name", "model", "storage_options", "threshold", "class_thresholds", "calibrated_thresholds", "device",
                "prepare_threads", "clips_per_task", "cuda_graphs", "precision"))
            if model.precision != "float32":  # only then: runs made before the key existed keep their scores
                own[f"cnn[{model.name}].precision"] = model.precision
            own.update({f"cnn[{model.name}].model_sha256": det.sha256,
                        f"cnn[{model.name}].sample_rate_hz": det.sample_rate_hz,
                        f"cnn[{model.name}].clips_per_task": _per_task(det, ctx.config.spectrogram.task_audio_s,
                                                                         ctx.gpu_layout)})
            products.append(Product(f"scores:{det.detector}", det.detector, own, outputs=(
                OutputName(f"scores/detector={det.detector}", rf"part-{RANGE}\.parquet"),)))
            if model.embeddings:
                products.append(Product(f"embeddings:{det.detector}", det.detector, own, outputs=(
                    OutputName(EMBEDDINGS_FOLDER, re.escape(f"cnn-{model.name}"), store=True),)))
            products.append(Product(f"detections:{det.detector}", det.detector,
                                    {f"cnn[{model.name}].threshold": model.threshold,
                                     **({f"cnn[{model.name}].class_thresholds": model.class_thresholds}
                                        if model.class_thresholds else {})},
                                    inputs=(f"scores:{det.detector}",), detector=det.detector, rederivable=True, outputs=(
                OutputName("detections", rf"part-cnn-{re.escape(model.name)}-{RANGE}\.parquet"),)))
        return products

    def plan(self, ctx: RunContext, products: dict) -> list[Stage]:
        from pipelines.driver.clip_plan import ClipIndex

        config, inventory = ctx.config, ctx.inventory
        stages = []
        for model in config.cnn:
            det = cached_cnn_detector(model, ctx.sample_rate_hz)
            settings = ClipSettings(det.clip_duration_s, det.overlap_s, det.final_clip)
            clip_index = ctx.clip_index if settings == ctx.clip_settings else ClipIndex.from_inventory(
                inventory, clip_duration=det.clip_duration_s, clip_overlap=det.overlap_s, final_clip=det.final_clip)
            failures = ()
            if clip_index is not ctx.clip_index:  # files with clips for the run but none of this model's length
                run_counts = ctx.clip_index.counts
                missing = clip_index.files[(clip_index.counts == 0) & (run_counts > 0)]
                failures = tuple((f, "NoClips", f"shorter than one clip of the model ({det.clip_duration_s:g} s); "
                                  f"not scored by {det.detector}") for f in sorted(missing))
            per_task = _per_task(det, config.spectrogram.task_audio_s, ctx.gpu_layout)
            align, store = det.batch_size, None
            if det.embeddings and ctx.location is not None:  # no location: planned only (opso run --dry-run)
                align = _embedding_chunk(det, per_task)  # tasks own whole chunks of the store
                store = ensure_embedding_store(ctx.location, det.detector, clip_index.n_clips,
                                               n_features=lambda det=det: embedding_size(det), clips_per_chunk=align,
                                               attrs={"model": det.url, "model_sha256": det.sha256,
                                                      "clip_duration_s": det.clip_duration_s,
                                                      "overlap_s": det.overlap_s, "sample_rate_hz": det.sample_rate_hz})
            ranges = task_ranges(clip_index.n_clips, per_task, align=align)
            stages.append(Stage(det.detector, clip_index, ranges, CnnTask(det, dict(config.input.storage_options), store),
                                resources={"GPU": 1} if ctx.gpu_workers else None, failures=failures))
        return stages

    def counters(self, config: RunConfig) -> dict[str, int]:
        return {f"cnn:{m.name}": 0 for m in config.cnn}

    def write_empty(self, ctx: RunContext) -> None:
        for model in ctx.config.cnn:
            det = cached_cnn_detector(model, ctx.sample_rate_hz)
            write_empty_detector_tables(ctx.location, det.detector, det.classes, pa.float32())


KIND = CnnKind()
