"""A stratified sample of clips to review: bins over a class's whole score range, a few clips per bin.

Reviewing only clips above the threshold says nothing about what the threshold misses; a simple
random sample of an archive is nearly all low-scoring absences. Bins of equal width over the score
range (over log10 of the score for RIBBIT, whose scores span orders of magnitude) put reviews where
the score changes, and each reviewed clip carries its stratum's size ``N_h`` and the number sampled
from it ``n_h``: its weight ``N_h / n_h`` turns the reviews into estimates for the whole archive
(:mod:`pipelines.review.calibration`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError

__all__ = ["log_floor", "score_axis", "stratified_sample", "uses_log_scores"]

#: scores at or below this are put at it before taking log10 (RIBBIT scores are >= 0)
LOG_FLOOR = 1e-12


def uses_log_scores(detector: str) -> bool:
    """Whether a detector's scores are binned and calibrated on log10 (RIBBIT's unbounded power ratios)."""
    return detector.startswith("ribbit:")


def log_floor(scores) -> float:
    """The value scores at or below 0 take before log10: a tenth of the smallest positive score
    (1e-12 when none is positive), so zeros sit one decade below the rest, not at -12."""
    x = np.asarray(scores, dtype=np.float64)
    positive = x[np.isfinite(x) & (x > 0)]
    return float(positive.min() / 10) if len(positive) else LOG_FLOOR


def score_axis(scores, log: bool, floor: float | None = None) -> np.ndarray:
    """The axis bins and calibration work on: the score, or ``log10(max(score, floor))`` with ``floor``
    from :func:`log_floor` of ``scores`` unless given; float64."""
    x = np.asarray(scores, dtype=np.float64)
    if not log:
        return x
    return np.log10(np.maximum(x, log_floor(x) if floor is None else floor))


def stratified_sample(table: pd.DataFrame, score_column: str = "score", *, n_bins: int = 10, per_bin: int = 5,
                      log: bool = False, seed: int = 0) -> pd.DataFrame:
    """Draw up to ``per_bin`` rows from each of ``n_bins`` equal-width bins of the score axis.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per clip of one detector and class, with ``score_column``.
    n_bins, per_bin : int
    log : bool
        Bin on log10 of the score (:func:`uses_log_scores`).
    seed : int
        The draw and the order are reproducible for a seed.

    Returns
    -------
    pandas.DataFrame
        The sampled rows in random order, with ``stratum`` (0 = lowest scores; with ``log``, scores of
        0 or less are stratum ``n_bins``), ``stratum_size``
        (rows of the table in the stratum, ``N_h``) and ``stratum_sampled`` (``n_h``).
    """
    if n_bins < 1 or per_bin < 1:
        raise ConfigError(f"a review sample needs n_bins >= 1 and per_bin >= 1, got {n_bins} and {per_bin}")
    rng = np.random.default_rng(seed)
    raw = table[score_column].to_numpy(np.float64)
    x = score_axis(raw, log)
    finite = np.isfinite(x)
    if not finite.any():
        return table.iloc[:0].assign(stratum=pd.Series(dtype=np.int64), stratum_size=pd.Series(dtype=np.int64),
                                     stratum_sampled=pd.Series(dtype=np.int64))
    stratum = np.full(len(x), -1, dtype=np.int64)
    binned = finite & (raw > 0) if log else finite  # on a log axis, scores of 0 are a stratum of their own
    if log:
        stratum[finite & (raw <= 0)] = n_bins
    if binned.any():
        edges = np.linspace(float(x[binned].min()), float(x[binned].max()), n_bins + 1)
        stratum[binned] = np.clip(np.searchsorted(edges, x[binned], side="right") - 1, 0, n_bins - 1)
    picked, sizes, sampled = [], {}, {}
    for h in range(n_bins + 1):
        members = np.flatnonzero(stratum == h)
        if not len(members):
            continue
        take = rng.choice(members, size=min(per_bin, len(members)), replace=False)
        picked.append(take)
        sizes[h], sampled[h] = len(members), len(take)
    rows = np.concatenate(picked)
    rows = rows[rng.permutation(len(rows))]
    out = table.iloc[rows].copy()
    out["stratum"] = stratum[rows]
    out["stratum_size"] = out["stratum"].map(sizes).astype(np.int64)
    out["stratum_sampled"] = out["stratum"].map(sampled).astype(np.int64)
    return out.reset_index(drop=True)
