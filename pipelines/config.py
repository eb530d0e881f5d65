"""The run configuration: a YAML file validated before any work starts.

Unknown keys, repeated keys and bad values raise :class:`~pipelines.errors.ConfigError` naming the
key, e.g. ``clips.duraton: unknown key``. Environment variables ``OPSO__SECTION__KEY=value`` override
the file (``OPSO__OUTPUT__URL=s3://bucket/run``; values are parsed as YAML). Storage options
(credentials) are never written to outputs or logs: :meth:`RunConfig.public_dict` leaves them out.
Every key, its type, default and meaning: ``docs/configuration.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import ConfigError

__all__ = ["BirdnetConfig", "BirdnetLocation", "ClipConfig", "ClusterConfig", "CnnModelConfig", "InputConfig", "OutputConfig", "RibbitSpecies", "RunConfig",
           "SpectrogramConfig", "check_sizes", "check_species_bands", "load_config"]

logger = logging.getLogger(__name__)

_ENV_PREFIX = "OPSO__"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: highest sample rate accepted (Hz): ultrasonic recorders reach 768 kHz
MAX_SAMPLE_RATE_HZ = 1_000_000
#: largest configuration file read (bytes); configurations are a few kilobytes
MAX_CONFIG_BYTES = 1_000_000
#: most values (mappings, lists and scalars) a configuration may hold once its YAML aliases are written out
MAX_CONFIG_VALUES = 100_000
#: largest Zarr chunk of spectrograms (bytes) and largest task (bytes of audio and spectrograms in memory)
MAX_CHUNK_BYTES = 1 << 30
MAX_TASK_BYTES = 8 << 30
#: shortest lease on object storage (s): its writes get lease_s / 4 to land
MIN_REMOTE_LEASE_S = 30.0
#: slowest upload a chunk must fit in lease_s / 4 on object storage (bytes/s)
MIN_WRITE_RATE_BPS = 8 * 2**20


def _check_increasing(pair, form: str):
    if not pair[0] < pair[1]:
        raise ValueError(f"must be {form} with the first value smaller")
    return pair


#: longest detector name (it becomes part of file names)
MAX_NAME_CHARS = 64


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("use letters, digits, '_', '.' or '-' only")
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"at most {MAX_NAME_CHARS} characters (the name is part of the output's file names); "
                         f"this one has {len(value):,}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _storage_defaults(data, url_key: str = "url"):
    """Before validation: opso's time limits and fresh listings added to ``storage_options`` for the
    section's ``url`` (:func:`pipelines.storage_options.with_storage_defaults`; the user's values win)."""
    if isinstance(data, dict) and isinstance(data.get(url_key), str) and \
            isinstance(data.get("storage_options", {}), dict):
        from pipelines.outputs.storage_options import with_storage_defaults

        options = with_storage_defaults(data[url_key], data.get("storage_options"))
        if options:
            data = {**data, "storage_options": options}
    return data


class _WithStorage(_Strict):
    """A section with ``url`` and ``storage_options``."""

    _storage_defaults = model_validator(mode="before")(classmethod(lambda cls, data: _storage_defaults(data)))


class InputConfig(_WithStorage):
    """Where the recordings are and how to read recorder ids and start times from them."""

    url: str = Field(description="folder or fsspec URL (s3://bucket/prefix/) holding the recordings")
    pattern: str = Field("**/*.[wW][aA][vV]", description="glob under url")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    recorder: str = Field("parent_dir", description="'parent_dir' or a regex with a (?P<recorder>...) group")
    timezone: str = Field("UTC", description="time zone of file-name timestamps that carry none")
    recorders_table: str | None = None

    @field_validator("recorder")
    @classmethod
    def _recorder_rule(cls, v):
        if v != "parent_dir":
            try:
                rx = re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
            if "recorder" not in rx.groupindex:
                raise ValueError("a recorder regex needs a named group (?P<recorder>...)")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v):
        from opso_core.aru import resolve_timezone

        resolve_timezone(v)
        return v


class OutputConfig(_WithStorage):
    url: str = Field(description="folder or fsspec URL for the run's outputs")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    lease_s: float = Field(120.0, ge=2, le=86400, description="seconds without a heartbeat from a run's driver "
                           "after which another run may take its output folder over")

    @model_validator(mode="after")
    def _lease_for_object_storage(self):
        from pipelines.outputs.run_lock import write_deadline_s
        from pipelines.outputs.storage_options import protocol_of

        if protocol_of(self.url) != "file" and self.lease_s < MIN_REMOTE_LEASE_S:
            raise ValueError(f"output.lease_s must be at least {MIN_REMOTE_LEASE_S:g} s on object storage: a write "
                             f"there has lease_s / 4 to land, with its retries ({self.lease_s:g} s gives "
                             f"{write_deadline_s(self.lease_s):g} s)")
        return self


class ClipConfig(_Strict):
    """Clip settings, with ``generate_clip_times_df`` semantics."""

    duration: float = Field(2.0, ge=0.01, le=3600, description="seconds")
    overlap: float = Field(0.0, ge=-86400, description="seconds shared by consecutive clips (negative: gaps)")
    final_clip: Literal["extend", "full"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_remainder(cls, data):
        if isinstance(data, dict) and data.get("final_clip") == "remainder":
            raise ValueError("final_clip 'remainder' makes clips of different lengths, which one "
                             "spectrogram store cannot hold; use null, 'full' or 'extend'")
        return data

    @model_validator(mode="after")
    def _overlap(self):
        if not self.overlap < self.duration:
            raise ValueError(f"overlap ({self.overlap}) must be less than duration ({self.duration})")
        return self


class SpectrogramConfig(_Strict):
    """``Spectrogram.from_audio`` settings, what the run keeps of the spectrograms, and task sizes."""

    sample_rate: int | None = Field(None, gt=0, le=MAX_SAMPLE_RATE_HZ,
                                    description="Hz; null: the most common rate in the archive")
    window_samples: int = Field(512, gt=1, le=2**20)
    overlap_fraction: float = Field(0.5, ge=0, lt=1)
    window_type: str = "hann"
    fft_size: int | None = Field(None, gt=1, le=2**22)
    decibel_limits: tuple[float, float] = (-100.0, -20.0)
    store: Literal["compact", "full", "none"] = Field(
        "compact", description="spectrograms.zarr: dB in steps of compact_step_db (1 byte a value), float32 "
                               "dB, or no store")
    compact_step_db: float = Field(0.625, gt=0, description="dB between the levels of a compact store")
    clips_per_chunk: int = Field(64, gt=0, le=100_000, description="clips per Zarr chunk")
    task_audio_s: float = Field(300.0, gt=0, le=7 * 86400, description="seconds of audio per task (whole chunks)")

    _limits = field_validator("decibel_limits")(classmethod(lambda cls, v: _check_increasing(v, "[min, max]")))

    @model_validator(mode="after")
    def _compact_levels(self):
        levels = (self.decibel_limits[1] - self.decibel_limits[0]) / self.compact_step_db
        if self.store == "compact" and levels > 254:
            raise ValueError(f"compact_step_db {self.compact_step_db} makes {levels:.0f} levels over decibel_limits "
                             f"{list(self.decibel_limits)}; a compact store holds at most 254 (use a larger step, "
                             "or store: full)")
        return self

    @model_validator(mode="after")
    def _resolvable(self):
        self.params(self.sample_rate or 1)  # window name, fft_size >= window_samples, ...
        return self

    def params(self, sample_rate_hz: int):
        """The resolved :class:`~opso_core.spectrogram.SpectrogramParams` for audio at ``sample_rate_hz``."""
        from opso_core.errors import OpsoError
        from opso_core.spectrogram import SpectrogramParams

        try:
            return SpectrogramParams.resolve(sample_rate_hz, window_type=self.window_type,
                                             window_samples=self.window_samples,
                                             overlap_fraction=self.overlap_fraction, fft_size=self.fft_size,
                                             decibel_limits=tuple(self.decibel_limits))
        except OpsoError as exc:
            raise ValueError(str(exc)) from None


class RibbitSpecies(_Strict):
    """One species for RIBBIT; its scores go to ``scores/detector=ribbit:<name>/``."""

    name: str
    signal_band: tuple[float, float]
    pulse_rate_range: tuple[float, float]
    noise_bands: list[tuple[float, float]] = Field(default_factory=list)
    threshold: float = Field(ge=0, description="clips scoring at or above this are detections (RIBBIT scores, the "
                             "peak of a power spectral density, are at least 0)")
    calibrated_thresholds: bool = Field(False, description="use the threshold of calibration.parquet in the output "
                                        "folder (opso calibrate) where the species' calibration is ok; threshold "
                                        "otherwise")
    nfft: int = Field(1024, gt=1, le=2**20)

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))

    _band = field_validator("signal_band", "pulse_rate_range")(
        classmethod(lambda cls, v: _check_increasing(v, "[low, high]")))

    @field_validator("noise_bands")
    @classmethod
    def _noise_bands(cls, bands):
        for i, band in enumerate(bands):
            if not band[0] < band[1]:
                raise ValueError(f"entry {i} ({list(band)}) must be [low, high] with low < high")
        return bands


class CnnModelConfig(_Strict):
    """One CNN for the inference stage; its scores go to ``scores/detector=cnn:<name>/``.

    The model file is opso's safe format (``CNN.save``); clip length, spectrogram settings and
    image shape come from its preprocessor.
    """

    _storage_defaults = model_validator(mode="before")(classmethod(lambda cls, data: _storage_defaults(data, "model")))

    name: str
    model: str = Field(description="path or URL of a model saved with CNN.save()")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    activation: Literal["sigmoid", "softmax", "softmax_and_logit"] | None = None
    threshold: float | dict[str, float] = Field(description="score at or above which a class is detected; "
                                                "one number or one per class")
    class_thresholds: dict[str, float] = Field(default_factory=dict, description="thresholds of single classes, "
                                               "in place of threshold's")
    calibrated_thresholds: bool = Field(False, description="use calibration.parquet's thresholds (opso calibrate) "
                                        "for the classes whose calibration is ok, in place of threshold's and "
                                        "class_thresholds'")
    batch_size: int = Field(64, gt=0, le=65536)
    overlap_fraction: float = Field(0.0, ge=0, lt=1, description="clip overlap as a fraction of the clip length")
    final_clip: Literal["extend", "full"] | None = None
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="'auto' (CUDA if the worker has it), 'cpu', 'cuda', 'cuda:1', ..., 'mps'")
    clips_per_task: int | None = Field(None, gt=0, le=10**8, description="clips per task; null: spectrogram.task_audio_s of "
                                       "audio on CPU workers, 64x that on GPU workers")
    embeddings: bool = Field(False, description="also keep every clip's embedding (the input of the model's "
                             "classifier layer, float16) in embeddings.zarr/cnn-<name>")
    prepare_threads: int | None = Field(None, gt=0, le=256, description="threads that read and transform the next batches "
                                        "while the network runs; null: 1 on a CPU device, on a GPU the worker's "
                                        "usable cores less one, at most 4")
    cuda_graphs: bool = Field(True, description="on a CUDA device, run each full batch (spectrograms, network input, "
                              "network) as one recorded CUDA graph, checked against the eager computation once per "
                              "worker; false: every batch eagerly")
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the network's arithmetic: float32 (scores equal CNN.predict's), or bfloat16/float16 "
        "autocast (faster on GPUs with tensor cores; the score differences each causes are in docs/pipeline.md)")

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))


class BirdnetLocation(_Strict):
    """Where and when the recordings were made: BirdNET's range model keeps the species expected there."""

    lat: float = Field(ge=-90, le=90, description="latitude, degrees")
    lon: float = Field(ge=-180, le=180, description="longitude, degrees")
    week: Literal["auto"] | int | None = Field(None, description="week of the year (1-48, BirdNET's weeks); 'auto': "
                                               "each file's week from its recording start; null: the whole year")
    min_occurrence: float = Field(0.03, gt=0, lt=1, description="keep species whose occurrence at the place and "
                                  "week is at least this (BirdNET-Analyzer's location filter threshold)")

    @field_validator("week")
    @classmethod
    def _week(cls, v):
        if isinstance(v, int) and not 1 <= v <= 48:
            raise ValueError(f"BirdNET's weeks are 1 to 48 (four per month); got {v}")
        return v


class BirdnetConfig(_Strict):
    """One BirdNET detector (GLOBAL 6K V2.4); its scores go to ``scores/detector=birdnet:<name>/``.

    Defaults are BirdNET-Analyzer's (and ``birdnetlib``'s): ``min_conf`` 0.1, overlap 0 s,
    sensitivity 1.0, no species filter.
    """

    # storage defaults for a species list URL (a location mapping is left as it is)
    _storage_defaults = model_validator(mode="before")(classmethod(lambda cls, data: _storage_defaults(data, "species")))

    name: str
    threshold: float = Field(0.1, ge=0.01, le=0.99, description="confidence at or above which a species is "
                             "detected in a window (BirdNET's min_conf)")
    class_thresholds: dict[str, float] = Field(default_factory=dict, description="thresholds of single species "
                                               "(scientific names), in place of threshold; none below score_floor")
    calibrated_thresholds: bool = Field(False, description="use calibration.parquet's thresholds (opso calibrate) "
                                        "for the species whose calibration is ok, in place of threshold and "
                                        "class_thresholds")
    overlap_s: float = Field(0.0, ge=0, le=2.9, description="overlap of consecutive 3 s windows, s")
    sensitivity: float = Field(1.0, ge=0.5, le=1.5, description="BirdNET's detection sensitivity: the sigmoid's "
                               "slope is 2 - sensitivity, so a higher one raises confidences below 0.5 and lowers "
                               "those above")
    species: BirdnetLocation | str | None = Field(None, description="species the detections may name: a location "
                                                  "(lat, lon, week, min_occurrence), a path or URL of a species list "
                                                  "(one 'Scientific name_Common name' or scientific name per line), "
                                                  "or null: every class of the model")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for a species "
                                            "list URL (e.g. s3:// credentials or endpoint)")
    embeddings: bool = Field(False, description="also store every window's 1,024-value embedding "
                             "(embeddings.zarr/birdnet-<name>)")
    score_floor: float = Field(0.01, ge=0.0001, le=0.99, description="scores at or above this are stored (with each "
                               "window's best class): the lowest threshold the run can be re-derived at")
    batch_size: int = Field(8, gt=0, le=512, description="windows per call of the model (memory grows about 19 MB "
                            "per window of batch; throughput does not)")
    windows_per_task: int = Field(256, gt=0, le=65536, description="windows per task (256: 12.8 min of audio; "
                                  "65,536: 54.6 h)")

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))

    @model_validator(mode="after")
    def _floor_below_threshold(self):
        if self.score_floor > self.threshold:
            raise ValueError(f"score_floor ({self.score_floor}) must not exceed threshold ({self.threshold}): the "
                             "stored scores are what detections are derived from")
        low = {k: v for k, v in self.class_thresholds.items() if not self.score_floor <= v <= 1}
        if low:
            raise ValueError(f"class_thresholds {low} must be between score_floor ({self.score_floor}) and 1: the "
                             "stored scores are what detections are derived from")
        return self


class LinearConfig(_Strict):
    """A linear classifier over a BirdNET entry's embeddings (``opso train-linear``); its scores go to
    ``scores/detector=linear:<name>/``, computed from the stored embeddings without reading audio."""

    _storage_defaults = model_validator(mode="before")(classmethod(lambda cls, data: _storage_defaults(data, "model")))

    name: str
    model: str = Field(description="path or URL of a model written by opso train-linear (.opso-linear)")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    threshold: float | dict[str, float] = Field(0.5, description="score at or above which a class is detected; "
                                                "one number or one per class")
    class_thresholds: dict[str, float] = Field(default_factory=dict, description="thresholds of single classes, "
                                               "in place of threshold's")
    calibrated_thresholds: bool = Field(False, description="use calibration.parquet's thresholds (opso calibrate) "
                                        "for the classes whose calibration is ok")
    chunks_per_task: int = Field(16, gt=0, le=100_000, description="embedding store chunks scored per task")

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))


class LocalizationConfig(_Strict):
    """The localization stage: detections of one detector's class on nearby synchronized recorders,
    grouped by absolute time, delays by cross correlation of the raw audio, positions solved; rows
    go to ``localizations/``. Needs ``input.recorders_table``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    detector: str = Field(description="a detector of this run: 'ribbit:<name>' or 'cnn:<name>'")
    class_name: str = Field(alias="class", description="the detector's class to localize (RIBBIT: the species name)")
    max_receiver_dist: float = Field(gt=0, le=1e6, description="metres: recorders this close to a detecting one "
                                     "take part")
    min_n_receivers: int = Field(3, ge=3, le=10_000, description="fewest recorders (with usable delays) for an event")
    algorithm: Literal["least_squares", "gillette", "soundfinder"] = "least_squares"
    cc_filter: Literal["phat", "cc", "roth", "scot", "ht"] = "cc"
    cc_threshold: float | None = Field(None, description="drop delays whose correlation maximum is below this")
    bandpass: tuple[float, float] | None = Field(None, description="Hz before cross correlation; null: a RIBBIT "
                                                 "species' signal_band, none for a CNN")
    max_delay_s: float | None = Field(None, gt=0, le=3600, description="largest delay searched; null: max_receiver_dist / "
                                      "speed_of_sound")
    residual_threshold_m: float | None = Field(1.0, gt=0, description="drop events whose RMS distance residual "
                                               "exceeds this; null: keep all")
    speed_of_sound: float = Field(343.0, gt=0, le=1e5, description="m/s")
    events_per_task: int = Field(64, gt=0, le=10**6)

    _band = field_validator("bandpass")(classmethod(lambda cls, v: v if v is None else _check_increasing(v, "[low, high]")))

    @field_validator("detector")
    @classmethod
    def _detector_name(cls, v):
        kind, sep, name = v.partition(":")
        if sep and name and kind in ("birdnet", "linear"):
            raise ValueError(f"{v!r}: localization takes a RIBBIT or CNN detector ('ribbit:<species name>' or "
                             f"'cnn:<model name>'); {kind} detections are not localized")
        if not sep or kind not in ("ribbit", "cnn") or not name:
            raise ValueError(f"{v!r} is not a detector name; use 'ribbit:<species name>' or 'cnn:<model name>'")
        return v


#: schemes of Dask scheduler addresses (``tcp://host:8786``)
SCHEDULER_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")
#: cluster kinds started through dask-jobqueue
JOBQUEUE_KINDS = ("slurm", "pbs")


def check_cluster_kind(kind: str) -> str:
    """``kind`` if it is ``local``, a dask-jobqueue kind or a scheduler address; else ValueError."""
    if kind == "local" or kind in JOBQUEUE_KINDS:
        return kind
    scheme, sep, rest = kind.partition("://")
    if sep and scheme in SCHEDULER_SCHEMES and rest:
        return kind
    if sep:
        raise ValueError(f"{kind!r} is not a Dask scheduler address (known schemes: "
                         f"{', '.join(SCHEDULER_SCHEMES)}; e.g. tcp://host:8786)")
    raise ValueError(f"unknown cluster kind {kind!r}; use local, {', '.join(JOBQUEUE_KINDS)} or a scheduler "
                     "address such as tcp://host:8786")


class ClusterConfig(_Strict):
    """Where the work runs. ``kind``: local, slurm, pbs, or a scheduler address (tcp://host:8786).

    One worker has ``threads_per_worker`` threads and ``memory_limit`` memory; on slurm/pbs each
    worker is one batch job (``cores = threads_per_worker``, ``memory = memory_limit``) and
    ``n_workers`` jobs are kept running: a job that ends early (walltime, ``scancel``) is replaced,
    up to ``max_job_replacements`` times.
    """

    kind: str = "local"
    n_workers: int | None = Field(None, gt=0, le=100_000, description="local: workers (null: one per core / threads_per_worker); "
                                  "slurm/pbs: jobs, required")
    threads_per_worker: int = Field(1, gt=0, le=4096)
    memory_limit: str | None = Field(None, description="per worker, e.g. '4GiB'; null: Dask's default (local) or "
                                     "dask-jobqueue's configured memory (slurm/pbs)")
    processes: bool = Field(True, description="local only: workers in processes (true) or threads of the driver")
    gpus: Literal["auto"] | int = Field("auto", description="local: one more worker per GPU (its CUDA_VISIBLE_DEVICES "
                                        "that GPU, Dask resource GPU=1, where CNN tasks go); 'auto': the NVIDIA GPUs "
                                        "this machine shows (CUDA_VISIBLE_DEVICES honoured), 0: none. slurm: GPUs per "
                                        "job, 0 or 1 ('auto': 0): each job asks for one (--gres=gpu:1) and its worker "
                                        "has the GPU resource")
    jobqueue: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for dask-jobqueue "
                                     "(queue, walltime, account, job_extra_directives, ...)")
    no_workers_timeout_s: float | None = Field(None, gt=0, le=30 * 86400, description="stop the run (exit code 3) when no worker "
                                               "has been connected for this long; null: 120 s local, 600 s for "
                                               "a scheduler address, 3600 s slurm/pbs")
    max_job_replacements: int = Field(10, ge=0, le=10**6, description="slurm/pbs: jobs submitted to replace ended ones")
    connect_timeout_s: float = Field(30.0, gt=0, le=86400, description="seconds to wait for a scheduler address to answer")
    dashboard_address: str | None = Field(None, description="where the dashboard of a cluster opso starts listens; "
                                          "null: this machine only (127.0.0.1, a free port locally, 8787 on "
                                          "slurm/pbs); ':8787' opens it to the network")

    _kind = field_validator("kind")(classmethod(lambda cls, v: check_cluster_kind(v)))

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v):
        if v != "auto" and not 0 <= v <= 64:
            raise ValueError(f"gpus must be 'auto' or a number of GPUs from 0 to 64, got {v}")
        return v

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v):
        if v is not None and v != "auto":
            from dask.utils import parse_bytes

            try:
                parse_bytes(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an amount of memory; write e.g. '4GiB' or '8GB'") from None
        return v

    @field_validator("jobqueue")
    @classmethod
    def _jobqueue(cls, v):
        mapped = {"cores": "threads_per_worker", "memory": "memory_limit", "processes": "(one worker per job)",
                  "n_workers": "n_workers"}
        clash = sorted(set(v) & set(mapped))
        if clash:
            raise ValueError(f"set {', '.join(f'cluster.{mapped[k]}' for k in clash)} instead of jobqueue."
                             f"{'/'.join(clash)} (opso maps them onto dask-jobqueue)")
        return v

    def default_no_workers_timeout_s(self, kind: str | None = None) -> float:
        """``no_workers_timeout_s``, or the default for ``kind`` (seconds)."""
        if self.no_workers_timeout_s is not None:
            return float(self.no_workers_timeout_s)
        kind = kind or self.kind
        return 120.0 if kind == "local" else 3600.0 if kind in JOBQUEUE_KINDS else 600.0


class RunConfig(_Strict):
    """The whole run configuration (every key: ``docs/configuration.md``)."""

    input: InputConfig
    output: OutputConfig
    clips: ClipConfig = Field(default_factory=ClipConfig)
    spectrogram: SpectrogramConfig = Field(default_factory=SpectrogramConfig)
    ribbit: list[RibbitSpecies] = Field(default_factory=list)
    cnn: list[CnnModelConfig] = Field(default_factory=list)
    birdnet: list[BirdnetConfig] = Field(default_factory=list)
    linear: list[LinearConfig] = Field(default_factory=list)
    localization: LocalizationConfig | None = None
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @property
    def gpu_work(self) -> bool:
        """Whether the run has work for GPU workers: a ``cnn`` entry whose ``device`` is not the CPU
        (``cluster.gpus: auto`` starts GPU workers only then)."""
        return any(not m.device.startswith("cpu") for m in self.cnn)

    @model_validator(mode="after")
    def _localization_inputs(self):
        loc = self.localization
        if loc is None:
            return self
        if not self.input.recorders_table:
            raise ValueError("localization needs input.recorders_table (a CSV: recorder, x, y[, z] in metres)")
        kind, _, name = loc.detector.partition(":")
        names = [s.name for s in self.ribbit] if kind == "ribbit" else [m.name for m in self.cnn]
        if name not in names:
            raise ValueError(f"localization.detector {loc.detector!r} is not a detector of this run; it has "
                             f"{[f'ribbit:{s.name}' for s in self.ribbit] + [f'cnn:{m.name}' for m in self.cnn]}")
        if kind == "ribbit" and loc.class_name != name:
            raise ValueError(f"localization.class: RIBBIT detector {loc.detector!r} has the one class {name!r}")
        return self

    @model_validator(mode="after")
    def _something_to_do(self):
        from pipelines.stages import enabled_kinds

        if not any(kind.phase == 1 for kind in enabled_kinds(self)):
            raise ValueError("nothing to compute: add ribbit species, a cnn model or a birdnet detector, or keep spectrograms "
                             "(spectrogram.store: compact or full)")
        return self

    @model_validator(mode="after")
    def _unique_names(self):
        for kind, names in (("ribbit species", [s.name for s in self.ribbit]), ("cnn model", [m.name for m in self.cnn]),
                            ("birdnet detector", [b.name for b in self.birdnet]),
                            ("linear classifier", [m.name for m in self.linear])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique; repeated: {dupes}")
        return self

    @model_validator(mode="after")
    def _checks_at_the_sample_rate(self):
        rate = self.spectrogram.sample_rate
        if rate:
            params = self.spectrogram.params(rate)
            if self.ribbit:
                check_species_bands(self.ribbit, rate, params.step_samples)
            check_sizes(self.clips, self.spectrogram, rate, self.output)
        return self

    def public_dict(self) -> dict:
        """The configuration without credentials (storage options) or cluster settings."""
        data = self.model_dump(mode="json", by_alias=True)
        data.pop("cluster", None)
        return _without_storage_options(data)

    def fingerprint(self) -> str:
        """Hash of everything that changes outputs (not credentials, not the cluster, not the lock)."""
        public = self.public_dict()
        public["output"].pop("url", None)
        public["output"].pop("lease_s", None)
        return hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()[:16]


def _without_storage_options(value):
    """``value`` without any ``storage_options`` key, at any depth (credentials never reach outputs)."""
    if isinstance(value, dict):
        return {k: _without_storage_options(v) for k, v in value.items() if k != "storage_options"}
    if isinstance(value, list):
        return [_without_storage_options(v) for v in value]
    return value


def _expanded_size(node, memo: dict, open_nodes: set) -> int:
    """Values in ``node`` with every alias written out (shared nodes counted each time they are used)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_nodes:
        raise yaml.constructor.ConstructorError(None, None, "an alias refers to a value that contains it",
                                                node.start_mark)
    open_nodes.add(key)
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, open_nodes) + _expanded_size(v, memo, open_nodes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo, open_nodes) for v in node.value)
    else:
        size = 1
    open_nodes.discard(key)
    memo[key] = size
    return size


class _TooLargeError(yaml.constructor.ConstructorError):
    """A valid YAML document that expands to too many values."""


def _parse_yaml(text: str, where: str | None = None):
    """``text`` parsed with :class:`_UniqueKeyLoader`; every problem a :class:`ConfigError` (``where``: an
    environment variable's name)."""
    prefix = f"{where}: " if where else "configuration "
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _TooLargeError as exc:
        raise ConfigError(f"{prefix}refused: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        at = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" \
            if exc.problem_mark and not where else ""
        raise ConfigError(f"{prefix}is not valid YAML: {exc.problem}{at}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{prefix}is not valid YAML: {exc}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        what = "an integer of more than 4,300 digits" if "integer string conversion" in str(exc) else str(exc)
        raise ConfigError(f"{prefix}holds a value that cannot be read: {what}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping (plain YAML keeps the last silently)
    and a document whose aliases (``*name``) expand to more than :data:`MAX_CONFIG_VALUES` values: a
    few hundred bytes of nested aliases expand to gigabytes in whatever walks the values."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_CONFIG_VALUES:
            raise _TooLargeError(
                None, None, f"with its aliases (*name) written out, the configuration holds {size:,} values (at most "
                f"{MAX_CONFIG_VALUES:,}); write the values out instead of nesting aliases", node.start_mark)
        return self.construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is repeated; keep one",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_text(source) -> str:
    if isinstance(source, str) and "\n" in source:
        text = source  # YAML text itself
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(f"the configuration is {len(text):,} characters long; opso configurations are a few "
                              f"kB (at most {MAX_CONFIG_BYTES:,} bytes)")
        return text
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"{source} is a folder; give the path of a YAML configuration file")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"the configuration file {source} is {size:,} bytes; opso configurations are a few kB "
                              f"(at most {MAX_CONFIG_BYTES:,} bytes)")
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration file {source}: {exc}") from None


def check_species_bands(species, sample_rate_hz: float, step_samples: int) -> None:
    """Refuse species that cannot be measured at this sample rate and window step.

    A ``signal_band`` or noise band entirely above the Nyquist frequency (``sample_rate_hz / 2``),
    or a ``pulse_rate_range`` entirely above the Nyquist rate of the amplitude series (one value
    per window step: ``sample_rate_hz / step_samples / 2``), would score every clip 0; a range
    that only reaches past those limits is measured up to them, with a warning.

    Parameters
    ----------
    species : sequence of objects with ``name``, ``signal_band``, ``noise_bands``, ``pulse_rate_range``
    sample_rate_hz : float
        Sample rate of the clips (Hz).
    step_samples : int
        Samples between consecutive spectrogram windows.

    Raises
    ------
    ConfigError
        Naming the species' key, e.g. ``ribbit.0.signal_band``.
    """
    nyquist_hz = sample_rate_hz / 2
    frame_nyquist_hz = sample_rate_hz / step_samples / 2
    for i, sp in enumerate(species):
        bands = [("signal_band", sp.signal_band, nyquist_hz, f"the Nyquist frequency ({nyquist_hz:g} Hz) of "
                  f"sample_rate {sample_rate_hz:g}")]
        bands += [(f"noise_bands.{j}", band, nyquist_hz, f"the Nyquist frequency ({nyquist_hz:g} Hz) of "
                   f"sample_rate {sample_rate_hz:g}") for j, band in enumerate(sp.noise_bands)]
        bands.append(("pulse_rate_range", sp.pulse_rate_range, frame_nyquist_hz,
                      f"the highest pulse rate ({frame_nyquist_hz:g} Hz) that windows every {step_samples} "
                      f"samples at {sample_rate_hz:g} Hz can measure"))
        for key, (low, high), limit, what in bands:
            if low >= limit:
                raise ConfigError(f"ribbit.{i}.{key}: [{low:g}, {high:g}] lies entirely above {what}; "
                                  f"species {sp.name!r} would score 0 on every clip")
            if high > limit:
                logger.warning("ribbit.%d.%s: [%g, %g] reaches above %s; species %r is measured up to %g only",
                               i, key, low, high, what, sp.name, limit)


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**27 else f"{n_bytes / 2**20:,.1f} MiB"


def check_sizes(clips: ClipConfig, spectrogram: SpectrogramConfig, sample_rate_hz: int,
                output: OutputConfig | None = None) -> None:
    """Refuse clip, chunk and task sizes that cannot work at ``sample_rate_hz`` (Hz): a clip shorter than
    one spectrogram window, a Zarr chunk over 1 GiB, a task holding more than 8 GiB, and on object
    storage a chunk that cannot be written in ``output.lease_s / 4`` at :data:`MIN_WRITE_RATE_BPS`.

    Raises
    ------
    ConfigError
        Naming the key and a value that works.
    """
    params = spectrogram.params(sample_rate_hz)
    clip_samples = int(round(clips.duration * sample_rate_hz))
    if clip_samples < params.window_samples:
        raise ConfigError(f"clips.duration: {clips.duration:g} s holds {clip_samples} samples at {sample_rate_hz} Hz, "
                          f"fewer than one spectrogram window (spectrogram.window_samples {params.window_samples}); "
                          f"use clips of at least {params.window_samples / sample_rate_hz:.3g} s")
    clip_values = params.n_frequencies() * params.n_times(clip_samples)
    value_bytes = 1 if spectrogram.store == "compact" else 4
    chunk_bytes = spectrogram.clips_per_chunk * clip_values * value_bytes
    if spectrogram.store != "none" and chunk_bytes > MAX_CHUNK_BYTES:
        fits = max(1, MAX_CHUNK_BYTES // (clip_values * value_bytes))
        raise ConfigError(f"spectrogram.clips_per_chunk: {spectrogram.clips_per_chunk:,} clips of {clips.duration:g} s "
                          f"make Zarr chunks of {_gb(chunk_bytes)} (at most {_gb(MAX_CHUNK_BYTES)}; readers load a "
                          f"whole chunk); use at most {fits:,}")
    if output is not None and spectrogram.store != "none":
        from pipelines.outputs.run_lock import write_deadline_s
        from pipelines.outputs.storage_options import protocol_of

        deadline_s = write_deadline_s(output.lease_s)
        if protocol_of(output.url) != "file" and chunk_bytes > deadline_s * MIN_WRITE_RATE_BPS:
            fits = max(1, int(deadline_s * MIN_WRITE_RATE_BPS // (clip_values * value_bytes)))
            raise ConfigError(f"spectrogram.clips_per_chunk: chunks of {_gb(chunk_bytes)} cannot be written to "
                              f"object storage within output.lease_s / 4 = {deadline_s:g} s at "
                              f"{MIN_WRITE_RATE_BPS / 2**20:g} MiB/s; use at most {fits:,} clips per chunk, or a "
                              "larger output.lease_s")
    step_s = clips.duration - clips.overlap
    clips_per_task = max(1, round(spectrogram.task_audio_s / step_s))
    clips_per_task = -(-clips_per_task // spectrogram.clips_per_chunk) * spectrogram.clips_per_chunk
    # audio (float32) and spectrograms (float32) of the task's clips, and a compact copy
    task_bytes = clips_per_task * (clip_samples * 4 + clip_values * (4 + value_bytes))
    if task_bytes > MAX_TASK_BYTES:
        per_clip = clip_samples * 4 + clip_values * (4 + value_bytes)
        fits_s = max(1, MAX_TASK_BYTES // per_clip) * step_s
        raise ConfigError(f"spectrogram.task_audio_s: tasks of {clips_per_task:,} clips ({spectrogram.task_audio_s:g} "
                          f"s of audio, whole chunks of {spectrogram.clips_per_chunk}) would hold {_gb(task_bytes)} in "
                          f"memory (at most {_gb(MAX_TASK_BYTES)}); use task_audio_s of at most {fits_s:,.0f} s, or "
                          "fewer clips_per_chunk")


def _format_error(exc: ValidationError, from_environment: dict | None = None) -> str:
    """One line per problem, each naming its key (and the ``OPSO__...`` variable that set it, from
    ``from_environment``: ``{key path: variable}``)."""
    lines = []
    longest_first = sorted((from_environment or {}).items(), key=lambda kv: -len(kv[0]))
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        path = tuple(str(p) for p in err["loc"])
        variable = next((v for k, v in longest_first if path[:len(k)] == k), None)
        if variable is not None:
            loc += f" (set by the environment variable {variable})"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required key is missing"
        elif err.get("input", ...) is None and err["type"].endswith("_type"):
            msg += " (it is null: YAML reads ~, null and an empty value as null; quote a path such as '~')"
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def _apply_env(data: dict, environ) -> tuple[dict, dict]:
    """``data`` with the ``OPSO__SECTION__KEY`` overrides of ``environ``, and ``{key path: variable}``."""
    sources = {}
    for key, value in environ.items():
        if not key.startswith(_ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(_ENV_PREFIX):].split("__") if p]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {'.'.join(path[:-1])} is not a section")
        node[path[-1]] = _parse_yaml(value, where=key)
        sources[tuple(path)] = key
    return data, sources


def load_config(source, environ=None) -> RunConfig:
    """Read and validate a run configuration.

    Parameters
    ----------
    source : path, str of YAML, or dict
    environ : mapping, optional
        Environment for ``OPSO__...`` overrides; default ``os.environ``.

    Raises
    ------
    ConfigError
        With one line per problem, each naming its key.
    """
    if isinstance(source, dict):
        data = json.loads(json.dumps(source))
    else:
        text = _read_text(source)
        data = _parse_yaml(text) or {}
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a mapping of sections (input, output, clips, ...)")
    data, from_environment = _apply_env(data, os.environ if environ is None else environ)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, from_environment)) from None
