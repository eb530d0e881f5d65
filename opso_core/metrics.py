"""Classification metrics (``opensoundscape.metrics``), without scikit-learn.

Definitions follow scikit-learn's: average precision is the step-wise area under the
precision-recall curve; ROC AUC is the Mann-Whitney statistic with ties counted half; precision,
recall and F1 are 0 where undefined (``zero_division=0``); Jaccard and the summary precision,
recall and F1 are macro averages over classes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from opso_core.errors import OpsoAssertionError, OpsoValueError

__all__ = ["average_precision", "multi_target_metrics", "predict_multi_target_labels",
           "predict_single_target_labels", "roc_auc", "single_target_metrics"]


def _to_numpy(scores):
    if isinstance(scores, pd.DataFrame):
        return scores.to_numpy(dtype=float), "pandas"
    if hasattr(scores, "detach"):
        return scores.detach().cpu().numpy().astype(float), "torch"
    arr = np.asarray(scores, dtype=float)
    return arr, "list" if isinstance(scores, list) else "numpy"


def _like(values, kind, original):
    if kind == "pandas":
        return pd.DataFrame(values, index=original.index, columns=original.columns)
    if kind == "torch":
        import torch

        return torch.as_tensor(values)
    if kind == "list":
        return values.tolist()
    return values


def predict_single_target_labels(scores):
    """1 for the highest-scoring class of each row, 0 elsewhere (same container type as ``scores``).

    ``scores``: 2-d numpy array, list, torch tensor or DataFrame.
    """
    arr, kind = _to_numpy(scores)
    if arr.ndim != 2:
        raise OpsoValueError(f"scores must be 2-d (samples, classes), got shape {arr.shape}")
    out = np.zeros(arr.shape, dtype=int)
    out[np.arange(len(arr)), np.nanargmax(np.nan_to_num(arr, nan=-np.inf), axis=1)] = 1
    return _like(out, kind, scores)


def predict_multi_target_labels(scores, threshold):
    """1 where ``score >= threshold``, else 0; ``threshold`` is one number or one per class (column)."""
    arr, kind = _to_numpy(scores)
    if arr.ndim != 2:
        raise OpsoValueError(f"scores must be 2-d (samples, classes), got shape {arr.shape}")
    thr = np.asarray(threshold, dtype=float)
    if thr.ndim > 1 or (thr.ndim == 1 and len(thr) not in (1, arr.shape[1])):
        raise OpsoAssertionError(f"threshold must be one number or one number per class ({arr.shape[1]}), "
                                 f"got {len(thr)}")
    return _like((arr >= thr).astype(int), kind, scores)


def average_precision(targets, scores) -> float:
    """Average precision of one class (NaN if there is no positive)."""
    y = np.asarray(targets, dtype=float)
    s = np.asarray(scores, dtype=float)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_threshold]
    fps = (last_of_threshold + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(targets, scores) -> float:
    """Area under the ROC curve of one class (NaN if all labels are equal)."""
    y = np.asarray(targets, dtype=bool)
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _prf(targets, preds):
    tp = np.sum((targets == 1) & (preds == 1), axis=0)
    fp = np.sum((targets == 0) & (preds == 1), axis=0)
    fn = np.sum((targets == 1) & (preds == 0), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        jaccard = np.where(tp + fp + fn > 0, tp / np.maximum(tp + fp + fn, 1), 0.0)
    return precision, recall, f1, jaccard, tp + fn


def _check(targets, scores):
    t = np.asarray(targets, dtype=float)
    s, _ = _to_numpy(scores)
    if t.shape != s.shape or t.ndim != 2:
        raise OpsoValueError(f"targets and scores must be 2-d and the same shape, got {t.shape} and {s.shape}")
    return t.astype(int), s


def multi_target_metrics(targets, scores, class_names, threshold):
    """Metrics for multi-target (multi-label) scores.

    Parameters
    ----------
    targets : array-like, shape (n_samples, n_classes)
        0/1 labels.
    scores : array-like, shape (n_samples, n_classes)
    class_names : list of str
    threshold : float or list
        Scores ``>=`` threshold are predicted 1.

    Returns
    -------
    dict
        Per class ``{name: {au_roc, avg_precision, precision, recall, f1, support}}``; overall
        ``precision``, ``recall``, ``f1``, ``jaccard`` (macro), ``hamming_loss``, ``map`` (mean
        average precision over classes with positives) and ``au_roc`` (mean over classes where
        defined).
    """
    t, s = _check(targets, scores)
    if len(class_names) != t.shape[1]:
        raise OpsoValueError(f"{len(class_names)} class names for {t.shape[1]} columns")
    preds = predict_multi_target_labels(s, threshold)
    precision, recall, f1, jaccard, support = _prf(t, preds)
    out = {}
    aps, aucs = [], []
    for i, name in enumerate(class_names):
        ap, auc = average_precision(t[:, i], s[:, i]), roc_auc(t[:, i], s[:, i])
        aps.append(ap)
        aucs.append(auc)
        n = int(support[i])
        out[name] = {"au_roc": auc, "avg_precision": ap,
                     "precision": precision[i] if n else np.nan, "recall": recall[i] if n else np.nan,
                     "f1": f1[i] if n else np.nan, "support": n}
    out["precision"] = float(precision.mean())
    out["recall"] = float(recall.mean())
    out["f1"] = float(f1.mean())
    out["jaccard"] = float(jaccard.mean())
    out["hamming_loss"] = float(np.mean(t != preds))
    out["map"] = float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else float("nan")
    out["au_roc"] = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")
    return out


def single_target_metrics(targets, scores):
    """Metrics for single-target scores: the highest-scoring class of each sample is predicted.

    Returns
    -------
    dict
        ``confusion_matrix`` (n_classes x n_classes, rows = true class), ``precision``, ``recall``,
        ``f1``, ``jaccard`` (macro averages over classes, as 0.9.0's documentation of ``CNN.eval``
        describes them; 0.9.0's code reported the second class's precision, recall and f1 only),
        ``hamming_loss`` and ``accuracy``.
    """
    t, s = _check(targets, scores)
    if t.sum(axis=1).max() > 1:
        raise OpsoValueError("labels are not single-target (a sample has several classes); "
                             "use multi_target_metrics")
    preds = predict_single_target_labels(s)
    n = t.shape[1]
    cm = np.zeros((n, n), dtype=int)
    has_label = t.sum(axis=1) == 1
    np.add.at(cm, (t[has_label].argmax(1), preds[has_label].argmax(1)), 1)
    precision, recall, f1, jaccard, _ = _prf(t, preds)
    return {"confusion_matrix": cm, "precision": float(precision.mean()), "recall": float(recall.mean()),
            "f1": float(f1.mean()), "jaccard": float(jaccard.mean()),
            "hamming_loss": float(np.mean(t != preds)),
            "accuracy": float(np.mean(t[has_label].argmax(1) == preds[has_label].argmax(1))) if has_label.any()
            else float("nan")}
