"""Linear classifiers on a run's embeddings: trained in seconds from a few labelled clips, scored over
the whole store without reading audio (the ``linear`` detector kind, :mod:`pipelines.stages.linear`).

Training (:func:`train_linear`): the labelled clips are matched to the store's windows (a window takes
the label of a labelled clip of the same file that it overlaps by at least half that clip, or 1 s;
present wins over absent), the embeddings standardised, and one logistic regression per class fitted
(independent classes, L2 penalty ``l2``, L-BFGS in scipy). A stratified ``test_fraction`` of each
class's windows is held out first and scored by the model fitted on the rest (ROC AUC, average
precision, precision and recall at 0.5); the saved model is then fitted on all the labels.

Labels: the run's reviews (``opso review``; each clip's latest answers, present when every reviewer
said so, ``unsure`` left out), or a CSV: long (``file, start_time, end_time, class, label`` with
``present``/``absent`` or 1/0) or one 0/1 column per class (``file, start_time, end_time, <class>...``:
OpenSoundscape's clip labels, or the ``labels.csv`` of ``opso demo``).

The model file (``.opso-linear``) is a zip archive of ``opso_linear.json`` (format, classes, the store
it was trained on and its model's hash, the evaluation) and ``arrays.npz`` (``weights`` (classes,
features), ``bias``, ``mean``, ``scale``; read with ``allow_pickle=False``): like ``CNN.save``'s safe
format, loading it runs no code from the file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import zipfile

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError

__all__ = ["LINEAR_FORMAT", "LinearModel", "read_labels", "train_linear", "window_labels"]

logger = logging.getLogger(__name__)

LINEAR_FORMAT = "opso-linear"
_JSON = "opso_linear.json"
_ARRAYS = "arrays.npz"


@dataclasses.dataclass(frozen=True, eq=False)
class LinearModel:
    """A linear classifier over one embedding store's vectors.

    Attributes
    ----------
    classes : tuple of str
    weights : numpy.ndarray, shape (classes, features), float32
    bias : numpy.ndarray, shape (classes,)
    mean, scale : numpy.ndarray, shape (features,)
        The standardisation applied before the weights.
    embedding : str
        The detector whose embeddings it takes (``birdnet:birds``).
    embedding_model : str
        That detector's model hash (a store of another model is refused).
    evaluation : dict
        The held-out figures per class.
    """

    classes: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    embedding: str
    embedding_model: str
    evaluation: dict

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Sigmoid scores (n, classes) float32 of embeddings (n, features); NaN rows stay NaN."""
        x = (np.asarray(vectors, dtype=np.float32) - self.mean) / self.scale
        z = x @ self.weights.T + self.bias
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)

    def to_bytes(self) -> bytes:
        """The model file's bytes (see the module docstring)."""
        arrays = io.BytesIO()
        np.savez(arrays, weights=self.weights, bias=self.bias, mean=self.mean, scale=self.scale)
        description = {"format": LINEAR_FORMAT, "format_version": 1, "classes": list(self.classes),
                       "embedding": self.embedding, "embedding_model": self.embedding_model,
                       "n_features": int(self.weights.shape[1]), "evaluation": self.evaluation}
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(_JSON, json.dumps(description, indent=2))
            zf.writestr(_ARRAYS, arrays.getvalue())
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "the model") -> LinearModel:
        """Read a model file's bytes.

        Raises
        ------
        ConfigError
            Not a linear model written by opso (a CNN file, another file), or a damaged one.
        """
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                description = json.loads(zf.read(_JSON))
                with np.load(io.BytesIO(zf.read(_ARRAYS)), allow_pickle=False) as arrays:
                    parts = {k: arrays[k] for k in ("weights", "bias", "mean", "scale")}
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
            raise ConfigError(f"{where} is not a linear model written by opso train-linear ({exc})") from None
        if description.get("format") != LINEAR_FORMAT:
            raise ConfigError(f"{where} is not a linear model written by opso train-linear (format "
                              f"{description.get('format')!r})")
        weights = parts["weights"].astype(np.float32)
        if weights.shape != (len(description["classes"]), description["n_features"]):
            raise ConfigError(f"{where}: its weights have shape {weights.shape}, not (classes, features)")
        return cls(tuple(description["classes"]), weights, parts["bias"].astype(np.float32),
                   parts["mean"].astype(np.float32), parts["scale"].astype(np.float32), description["embedding"],
                   description["embedding_model"], description.get("evaluation") or {})


def read_labels(source: str, storage_options=None) -> pd.DataFrame:
    """Labels from a CSV (see the module docstring) as a long table ``file, start_time, end_time, class,
    present`` (bool)."""
    import fsspec

    try:
        with fsspec.open(source, "rb", **(storage_options or {})) as f:
            table = pd.read_csv(f)
    except FileNotFoundError:
        raise ConfigError(f"train-linear: no labels file at {source}") from None
    missing = {"file", "start_time", "end_time"} - set(table.columns)
    if missing:
        raise ConfigError(f"train-linear: the labels need columns file, start_time, end_time (missing {sorted(missing)})")
    if {"class", "label"} <= set(table.columns):
        label = table["label"].astype(str).str.lower()
        unknown = sorted(set(label) - {"present", "absent", "1", "0", "1.0", "0.0", "true", "false", "unsure"})
        if unknown:
            raise ConfigError(f"train-linear: labels are present/absent or 1/0, got {unknown[:3]}")
        table = table[label != "unsure"].assign(present=label[label != "unsure"].isin(["present", "1", "1.0", "true"]))
        return table[["file", "start_time", "end_time", "class", "present"]].reset_index(drop=True)
    classes = [c for c in table.columns if c not in ("file", "start_time", "end_time")]
    if not classes:
        raise ConfigError("train-linear: the labels have no class columns (or class and label columns)")
    long = table.melt(id_vars=["file", "start_time", "end_time"], value_vars=classes, var_name="class",
                      value_name="value")
    return long.assign(present=long["value"].astype(float) > 0)[["file", "start_time", "end_time", "class",
                                                                  "present"]]


def _review_labels(url: str, storage_options=None) -> pd.DataFrame:
    from pipelines.review.reviews import read_reviews

    reviews = read_reviews(url, storage_options)
    reviews = reviews[reviews["label"].isin(["present", "absent"])]
    if not len(reviews):
        raise ConfigError(f"train-linear: the run at {url} has no present/absent reviews (opso review), and no "
                          "--labels table was given")
    agreed = reviews.groupby(["file", "start_time", "end_time", "class"])["label"].agg(
        lambda s: bool((s == "present").all()))
    return agreed.rename("present").reset_index()


def window_labels(coords: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The store's windows that labelled clips cover: ``clip`` (store row), ``class``, ``present``.

    ``coords`` holds the store's ``file, start_time, end_time`` per row (index = clip number).
    """
    out = []
    for file, own in labels.groupby("file", sort=False):
        windows = coords[coords["file"] == file]
        if not len(windows):
            continue
        ws, we = windows["start_time"].to_numpy(), windows["end_time"].to_numpy()
        for row in own.itertuples(index=False):
            overlap = np.minimum(we, row.end_time) - np.maximum(ws, row.start_time)
            need = min(1.0, 0.5 * (row.end_time - row.start_time))
            for clip in windows.index[overlap >= need - 1e-9]:
                out.append((int(clip), row[3], bool(row.present)))
    table = pd.DataFrame(out, columns=["clip", "class", "present"])
    return table.groupby(["clip", "class"], as_index=False)["present"].max()  # present wins


def _fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-penalised logistic regression (x standardised)."""
    from scipy.optimize import minimize

    n, d = x.shape

    def loss(params):
        w, b = params[:d], params[d]
        z = x @ w + b
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
        nll = np.mean(np.logaddexp(0, z) - y * z)
        grad = x.T @ (p - y) / n
        return nll + 0.5 * l2 * w @ w, np.r_[grad + l2 * w, np.mean(p - y)]

    result = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return result.x[:d].astype(np.float32), float(result.x[d])


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    pos, neg = y.sum(), len(y) - y.sum()
    if not pos or not neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _average_precision(scores: np.ndarray, y: np.ndarray) -> float:
    if not y.sum():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def train_linear(url: str, labels: str | None = None, *, detector: str | None = None, classes=None,
                 l2: float = 1e-2, test_fraction: float = 0.2, seed: int = 0, storage_options=None,
                 labels_storage_options=None) -> LinearModel:
    """Fit a linear classifier on the run's embeddings (see the module docstring).

    Parameters
    ----------
    labels : str, optional
        A labels CSV (path or URL); default: the run's reviews.
    detector : str, optional
        Whose embeddings (the run's only store by default).
    classes : list of str, optional
        Only these classes of the labels.
    l2 : float
        The penalty on the standardised weights.
    test_fraction : float
        Share of each class's windows (present and absent apart) held out for the evaluation.

    Raises
    ------
    ConfigError
        No labels match the store's windows, or a class has fewer than 2 present and 2 absent windows.
    """
    from pipelines.embeddings.search import open_embeddings
    from pipelines.outputs.results import read_status

    if not 0 <= test_fraction < 1:
        raise ConfigError(f"train-linear: test_fraction is in [0, 1), got {test_fraction}")
    table = read_labels(labels, labels_storage_options) if labels else _review_labels(url, storage_options)
    if classes:
        unknown = sorted(set(classes) - set(table["class"]))
        if unknown:
            raise ConfigError(f"train-linear: no labels of {unknown}; the labels have {sorted(set(table['class']))}")
        table = table[table["class"].isin(classes)]
    ds, detector = open_embeddings(url, detector, storage_options)
    coords = pd.DataFrame({"file": ds["file"].values.tolist(), "start_time": ds["start_time"].values,
                           "end_time": ds["end_time"].values})
    matched = window_labels(coords, table)
    if not len(matched):
        raise ConfigError(f"train-linear: none of the {len(table)} labelled clips lies on a window of {detector}'s "
                          "embeddings (check the files' paths: they must be those of the run's archive)")
    rows = np.unique(matched["clip"].to_numpy())
    vectors = np.asarray(ds["embedding"].isel(clip=rows).values, dtype=np.float32)
    usable = np.isfinite(vectors).all(axis=1)
    position = {int(r): i for i, r in enumerate(rows)}
    mean = vectors[usable].mean(axis=0)
    scale = vectors[usable].std(axis=0)
    scale[scale < 1e-6] = 1.0
    x_all = (vectors - mean) / scale
    rng = np.random.default_rng(seed)
    names = sorted(set(matched["class"]))
    weights, biases, evaluation = [], [], {}
    for name in names:
        own = matched[matched["class"] == name]
        idx = np.array([position[int(c)] for c in own["clip"]])
        y = own["present"].to_numpy(np.float64)
        keep = usable[idx]
        idx, y = idx[keep], y[keep]
        if y.sum() < 2 or (len(y) - y.sum()) < 2:
            raise ConfigError(f"train-linear: class {name!r} has {int(y.sum())} present and {int(len(y) - y.sum())} "
                              "absent windows; it needs at least 2 of each")
        test = np.zeros(len(y), dtype=bool)
        for label in (0.0, 1.0):
            members = np.flatnonzero(y == label)
            n_test = int(round(test_fraction * len(members)))
            if 0 < n_test < len(members):
                test[rng.choice(members, n_test, replace=False)] = True
        figures = {"n_present": int(y.sum()), "n_absent": int(len(y) - y.sum()), "n_test": int(test.sum())}
        if test.any() and 0 < y[test].sum() < test.sum():
            w, b = _fit(x_all[idx[~test]], y[~test], l2)
            held = 1 / (1 + np.exp(-(x_all[idx[test]] @ w + b)))
            predicted = held >= 0.5
            figures.update(auc=_auc(held, y[test]), average_precision=_average_precision(held, y[test]),
                           precision_at_0_5=float(y[test][predicted].mean()) if predicted.any() else float("nan"),
                           recall_at_0_5=float(predicted[y[test] == 1].mean()))
        w, b = _fit(x_all[idx], y, l2)
        weights.append(w)
        biases.append(b)
        evaluation[name] = figures
        logger.info("train-linear: %s: %s", name, figures)
    status = read_status(url, storage_options)
    record = (status.get("outputs") or {}).get(f"embeddings:{detector}") or {}
    model_hash = next((v for k, v in (record.get("settings") or {}).items() if k.endswith(".model_sha256")), "")
    return LinearModel(tuple(names), np.stack(weights), np.array(biases, dtype=np.float32), mean.astype(np.float32),
                       scale.astype(np.float32), detector, model_hash, evaluation)
