"""Per-class thresholds with a known precision, from reviews of a stratified sample.

For one detector and class: a logistic regression of "present" against the score axis (the score,
or log10 of it for RIBBIT), each review weighted by its stratum's ``N_h / n_h``
(:mod:`pipelines.review.sampling`), as BirdNET-Analyzer's review tab does (Wood & Kahl 2024) but
weighted for the sample's design. The archive's precision above a threshold ``t`` is then the mean
fitted probability of its clips scoring at or above ``t``; the threshold is the lowest one whose
precision reaches the target (the most recall at that precision). Precision and recall at the
threshold are the model's over the archive's clips (the fitted probabilities of the clips above it,
and their share of all clips' fitted probabilities); every figure carries a 95 % interval from a
bootstrap of the reviews within strata (each resample refitted).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.errors import ConfigError

__all__ = ["MIN_EACH_LABEL", "MIN_REVIEWS", "Calibration", "calibrate_class", "fit_logistic", "threshold_for_precision"]

#: fewest reviews (present + absent) of a class, and of each label, for a threshold
MIN_REVIEWS = 20
MIN_EACH_LABEL = 3


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The calibration of one detector's class (scores on the detector's own scale).

    ``status`` is ``ok``, ``too_few_reviews``, ``no_relationship`` (the fit's slope is not positive)
    or ``unreachable`` (no threshold reaches the target precision); the figures are NaN unless ``ok``
    (``message`` says why). ``*_low``/``*_high``: 95 % bootstrap intervals; ``threshold_high`` is
    infinite when enough resamples reach the target nowhere.
    """

    detector: str
    class_name: str
    target_precision: float
    status: str
    message: str
    n_reviews: int
    n_present: int
    log_scores: bool
    intercept: float = np.nan
    slope: float = np.nan
    threshold: float = np.nan
    threshold_low: float = np.nan
    threshold_high: float = np.nan
    precision: float = np.nan
    precision_low: float = np.nan
    precision_high: float = np.nan
    recall: float = np.nan
    recall_low: float = np.nan
    recall_high: float = np.nan
    n_above: int = 0


def fit_logistic(x, y, weights=None, *, ridge: float = 1e-6, max_iter: int = 100) -> tuple[float, float]:
    """Weighted maximum-likelihood logistic regression ``P(y=1) = 1 / (1 + exp(-(a + b x)))``.

    Parameters
    ----------
    x, y : array-like, shape (n,)
        Predictor and 0/1 outcome.
    weights : array-like, shape (n,), optional
        Case weights, as frequencies (the fit with weight 2 equals the fit with the row twice).
    ridge : float
        A small L2 penalty on ``b`` (keeps the fit finite when the labels separate perfectly).

    Returns
    -------
    (float, float)
        ``(a, b)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w * (len(w) / w.sum())
    center = np.average(x, weights=w)
    scale = float(np.sqrt(np.average((x - center) ** 2, weights=w))) or 1.0
    z = (x - center) / scale  # standardised (weighted): Newton's steps stay well conditioned
    beta = np.zeros(2)
    design = np.column_stack([np.ones_like(z), z])
    penalty = np.diag([0.0, ridge * w.sum()])  # in proportion to the likelihood: weights as frequencies
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ beta)))
        gradient = design.T @ (w * (y - p)) - penalty @ beta
        hessian = design.T @ (design * (w * p * (1 - p))[:, None]) + penalty + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            break
    slope = beta[1] / scale
    return float(beta[0] - slope * center), float(slope)


def threshold_for_precision(archive_x, intercept: float, slope: float, target: float,
                            lowest: float = -np.inf) -> tuple[float, float, int]:
    """The lowest threshold (on the score axis, at least ``lowest``) whose modelled precision over the
    archive reaches ``target``.

    ``archive_x`` is every clip's score axis value; the threshold is one of them. Returns
    ``(threshold, precision, n_above)``, or ``(nan, best precision, 0)`` when no threshold reaches the target.
    """
    x = np.sort(np.asarray(archive_x, dtype=np.float64))[::-1]
    return _threshold_descending(x, _sigmoid(intercept + slope * x), _cuts(x, lowest), target)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _cuts(x_desc: np.ndarray, lowest: float) -> np.ndarray:
    """Where a threshold may cut scores sorted in decreasing order: after the last of a run of tied
    scores (ties share a threshold), at ``lowest`` or above."""
    return np.append(x_desc[1:] != x_desc[:-1], True) & (x_desc >= lowest)


def _threshold_descending(x_desc, p_desc, cuts, target) -> tuple[float, float, int]:
    """:func:`threshold_for_precision` on scores sorted in decreasing order and their fitted probabilities."""
    if not len(x_desc) or not cuts.any():
        return np.nan, np.nan, 0
    precision = np.cumsum(p_desc) / np.arange(1, len(x_desc) + 1)
    ok = np.flatnonzero(cuts & (precision >= target))
    if not len(ok):
        return np.nan, float(precision[cuts].max()), 0
    k = ok[-1]
    return float(x_desc[k]), float(precision[k]), int(k + 1)


def calibrate_class(detector: str, class_name: str, archive_scores, review_scores, review_present, review_weights,
                    review_strata, *, target_precision: float, log_scores: bool = False, n_boot: int = 300,
                    seed: int = 0, lowest_threshold: float | None = None) -> Calibration:
    """Calibrate one class from its reviews.

    Parameters
    ----------
    archive_scores : array-like, shape (N,)
        Every clip's score of this class (the detector's scale).
    review_scores, review_present, review_weights, review_strata : array-like, shape (n,)
        The reviewed clips (present/absent only; ``unsure`` left out): score, 1/0, weight ``N_h / n_h``
        and stratum.
    target_precision : float
        In (0, 1).
    log_scores : bool
        Work on log10 of the scores (RIBBIT; scores of 0 a decade below the smallest positive one).
    lowest_threshold : float, optional
        No threshold below this score (BirdNET: the scores stored start at its ``score_floor``).

    Returns
    -------
    Calibration
    """
    if not 0 < target_precision < 1:
        raise ConfigError(f"the target precision must be between 0 and 1, got {target_precision}")
    from pipelines.review.sampling import log_floor, score_axis

    y = np.asarray(review_present, dtype=np.float64)
    base = dict(detector=detector, class_name=class_name, target_precision=float(target_precision),
                n_reviews=int(len(y)), n_present=int(y.sum()), log_scores=bool(log_scores))
    n_absent = len(y) - int(y.sum())
    if len(y) < MIN_REVIEWS or y.sum() < MIN_EACH_LABEL or n_absent < MIN_EACH_LABEL:
        return Calibration(**base, status="too_few_reviews",
                           message=f"{len(y)} reviews ({int(y.sum())} present, {n_absent} absent); a threshold needs "
                                   f"at least {MIN_REVIEWS}, with {MIN_EACH_LABEL} of each: review more clips")
    raw = np.asarray(archive_scores, dtype=np.float64)
    floor = log_floor(raw) if log_scores else None
    archive_x = score_axis(raw, log_scores, floor)
    x = score_axis(review_scores, log_scores, floor)
    lowest = -np.inf if lowest_threshold is None else float(score_axis([lowest_threshold], log_scores, floor)[0])
    w = np.asarray(review_weights, dtype=np.float64)
    strata = np.asarray(review_strata)

    order = np.argsort(archive_x, kind="stable")[::-1]  # sorted once: every fit below reuses it
    x_desc, raw_desc = archive_x[order], raw[order]
    cuts = _cuts(x_desc, lowest)
    a, b = fit_logistic(x, y, w)
    if not b > 0:
        return Calibration(**base, status="no_relationship", intercept=a, slope=b,
                           message=f"in these reviews a higher score does not mean a likelier {class_name} (slope "
                                   f"{b:.3g}); check the reviews, or review more clips across the score range")
    t, precision, n_above = _threshold_descending(x_desc, _sigmoid(a + b * x_desc), cuts, target_precision)
    if not np.isfinite(t):
        return Calibration(**base, status="unreachable", intercept=a, slope=b,
                           message=f"no threshold reaches precision {target_precision:g} (the best is "
                                   f"{precision:.2f}); lower the target or review more high-scoring clips")

    def fitted(a_, b_):
        """The fit's threshold (inf where it reaches the target nowhere), and its precision and recall
        of the archive at the threshold ``t``."""
        p = _sigmoid(a_ + b_ * x_desc)
        t_fit = _threshold_descending(x_desc, p, cuts, target_precision)[0] if b_ > 0 else np.nan
        return (t_fit if np.isfinite(t_fit) else np.inf,  # no threshold: above every score
                float(p[:n_above].mean()), float(p[:n_above].sum() / p.sum()))

    _, precision, recall = fitted(a, b)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == h) for h in np.unique(strata)]
    boot = []
    for _ in range(n_boot):
        rows = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        if 0 < y[rows].sum() < len(rows):
            boot.append(fitted(*fit_logistic(x[rows], y[rows], w[rows])))
    boot = np.array(boot, dtype=np.float64).reshape(-1, 3)

    def interval(column):
        values = boot[:, column]
        values = values[~np.isnan(values)]
        return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if len(values) else \
            (np.nan, np.nan)

    sorted_x, sorted_raw = x_desc[::-1], raw_desc[::-1]

    def to_scores(value):
        """The smallest score whose axis value is at least ``value`` (exact: ``score >= it`` keeps those clips)."""
        if not np.isfinite(value):
            return float(value)
        i = int(np.searchsorted(sorted_x, value, side="left"))
        return float(sorted_raw[i]) if i < len(sorted_raw) else np.inf

    (t_low, t_high), (p_low, p_high), (r_low, r_high) = interval(0), interval(1), interval(2)
    return Calibration(**base, status="ok", message="", intercept=a, slope=b, threshold=to_scores(t),
                       threshold_low=to_scores(t_low), threshold_high=to_scores(t_high), precision=precision,
                       precision_low=p_low, precision_high=p_high, recall=recall, recall_low=r_low,
                       recall_high=r_high, n_above=n_above)
