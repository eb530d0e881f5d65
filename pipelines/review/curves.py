"""The calibration curve of a class, as numbers the review page and a notebook both draw.

For a calibrated class: the fitted probability that the class is present against the score axis
(the score, or log10 of it for RIBBIT), the reviewed clips (present 1, absent 0) on the same axis,
and the threshold with its interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.review.sampling import log_floor, score_axis

__all__ = ["class_curve", "plot_class_curve"]


def class_curve(calibration: dict, reviews: pd.DataFrame, archive_scores=None, *, n_points: int = 120) -> dict:
    """The curve of one row of ``calibration.parquet``.

    Parameters
    ----------
    calibration : dict
        A row of :func:`pipelines.review.calibrate_run.calibrate_run`'s table.
    reviews : pandas.DataFrame
        This class's present/absent reviews (``score``, ``label``).
    archive_scores : array-like, optional
        The class's scores over the run (sets the log axis' floor for scores of 0, as the calibration
        did); default: the reviewed scores.
    n_points : int

    Returns
    -------
    dict
        ``axis`` (``"score"`` or ``"log10(score)"``), ``curve`` ([[x, p], ...], n_points, empty when
        no fit), ``points`` ([[x, 1 or 0], ...] per review), and ``threshold``, ``threshold_low``,
        ``threshold_high`` on the axis (None where unknown or infinite).
    """
    log = bool(calibration.get("log_scores"))
    scores = reviews["score"].to_numpy(np.float64)
    floor = log_floor(archive_scores if archive_scores is not None else scores) if log else None
    x = score_axis(scores, log, floor)
    y = (reviews["label"] == "present").to_numpy(np.float64)

    def on_axis(value):
        value = calibration.get(value)
        if value is None or not np.isfinite(value):
            return None
        return float(score_axis([value], log, floor)[0])

    curve = []
    a, b = calibration.get("intercept"), calibration.get("slope")
    if len(x) and a is not None and b is not None and np.isfinite(a) and np.isfinite(b):
        span = [float(x.min()), float(x.max())]
        for name in ("threshold_low", "threshold", "threshold_high"):
            if on_axis(name) is not None:
                span = [min(span[0], on_axis(name)), max(span[1], on_axis(name))]
        grid = np.linspace(span[0], span[1], n_points)
        curve = np.column_stack([grid, 1 / (1 + np.exp(-(a + b * grid)))]).tolist()
    return {"axis": "log10(score)" if log else "score", "curve": curve,
            "points": np.column_stack([x, y]).tolist() if len(x) else [],
            "threshold": on_axis("threshold"), "threshold_low": on_axis("threshold_low"),
            "threshold_high": on_axis("threshold_high")}


def plot_class_curve(ax, curve: dict, title: str = ""):
    """Draw :func:`class_curve`'s ``curve`` on a matplotlib ``ax``: the fit, the reviews (jittered
    a little vertically so they do not hide each other), the threshold and its interval."""
    rng = np.random.default_rng(0)
    points = np.asarray(curve["points"], dtype=np.float64).reshape(-1, 2)
    if len(points):
        jitter = rng.uniform(-0.03, 0.03, len(points))
        colours = np.where(points[:, 1] > 0.5, "tab:green", "tab:red")
        ax.scatter(points[:, 0], points[:, 1] + jitter, s=12, c=colours, alpha=0.7, label="reviews")
    fit = np.asarray(curve["curve"], dtype=np.float64).reshape(-1, 2)
    if len(fit):
        ax.plot(fit[:, 0], fit[:, 1], color="black", label="P(present)")
    if curve["threshold"] is not None:
        low = curve["threshold_low"] if curve["threshold_low"] is not None else curve["threshold"]
        high = curve["threshold_high"] if curve["threshold_high"] is not None else ax.get_xlim()[1]
        ax.axvspan(low, high, color="tab:blue", alpha=0.12, label="95 % interval")
        ax.axvline(curve["threshold"], color="tab:blue", label="threshold")
    ax.set_xlabel(curve["axis"])
    ax.set_ylabel("present")
    ax.set_ylim(-0.08, 1.08)
    if title:
        ax.set_title(title)
    ax.legend(loc="center right", fontsize="small")
    return ax
