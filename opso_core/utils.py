"""General utilities (OpenSoundscape 0.9.0 ``opensoundscape.utils``).

Clip tables (:func:`generate_clip_times_df`, :func:`make_clip_df`), range helpers, scaling helpers and
metadata loading. Times are in seconds throughout.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from opso_core.errors import GetDurationError, OpsoTypeError, OpsoValueError, ParseError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FINAL_CLIP_MODES",
    "GetDurationError",
    "binarize",
    "generate_clip_times_df",
    "hex_to_time",
    "identity",
    "inrange",
    "isNan",
    "jitter",
    "linear_scale",
    "load_metadata",
    "make_clip_df",
    "min_max_scale",
    "overlap",
    "overlap_fraction",
    "rescale_features",
    "sigmoid",
]

#: Accepted values of ``final_clip`` (see :func:`generate_clip_times_df`).
FINAL_CLIP_MODES = (None, "extend", "remainder", "full")

# Two clip boundaries closer than this (s) are the same boundary; absorbs float error in start/end sums.
_TIME_TOLERANCE_S = 1e-9


def isNan(x) -> bool:
    """Return True if ``x`` is NaN (tests ``x != x``)."""
    return not x == x


def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, elementwise for arrays."""
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))


def identity(x):
    """Return the input unchanged."""
    return x


def _check_range(r, name: str) -> tuple[float, float]:
    if len(r) != 2:
        raise OpsoValueError(f"{name} must be a [low, high] pair, got {r!r}")
    low, high = float(r[0]), float(r[1])
    if high < low:
        raise OpsoValueError(f"{name} must be [low, high] with low <= high, got {r!r}")
    return low, high


def overlap(r1: Sequence[float], r2: Sequence[float]) -> float:
    """Length of the overlap of two real ranges ``[low, high]`` (0 if they are disjoint).

    Raises
    ------
    OpsoValueError
        If a range is not ``[low, high]`` with ``low <= high``.
    """
    l1, h1 = _check_range(r1, "r1")
    l2, h2 = _check_range(r2, "r2")
    return max(0.0, min(h1, h2) - max(l1, l2))


def overlap_fraction(r1: Sequence[float], r2: Sequence[float]) -> float:
    """Fraction of ``r1`` (``[low, high]``) that overlaps ``r2``; in [0, 1].

    Raises
    ------
    OpsoValueError
        If ``r1`` has zero length (the fraction is undefined).
    """
    l1, h1 = _check_range(r1, "r1")
    if h1 == l1:
        raise OpsoValueError(f"r1 has zero length ({r1!r}); the overlap fraction is undefined")
    return overlap(r1, r2) / (h1 - l1)


def inrange(x, r) -> bool:
    """Return True if ``r[0] <= x <= r[1]`` (inclusive)."""
    return bool(r[0] <= x <= r[1])


def binarize(x, threshold):
    """Threshold a 1-d or 2-d array-like: 1 where ``x > threshold``, else 0.

    Returns a list (1-d input) or list of lists (2-d input), as OpenSoundscape does.
    """
    arr = np.asarray(x)
    if arr.ndim > 2:
        raise OpsoValueError(f"binarize takes a 1-d or 2-d input, got shape {arr.shape}")
    return (arr > threshold).astype(int).tolist()


def rescale_features(X, rescaling_vector=None):
    """Divide each feature (column) by its maximum.

    Parameters
    ----------
    X : array-like, shape (n_samples, n_features)
    rescaling_vector : array-like, shape (n_features,), optional
        Multipliers to use instead of ``1 / max``, so that a new set is scaled like an old one.

    Returns
    -------
    (list of lists, numpy.ndarray)
        The rescaled features and the rescaling vector.
    """
    if rescaling_vector is None:
        rescaling_vector = 1 / np.nanmax(X, 0)
    return np.multiply(X, rescaling_vector).tolist(), rescaling_vector


def min_max_scale(array, feature_range=(0, 1)):
    """Linearly rescale ``array`` so its minimum maps to ``feature_range[0]`` and maximum to ``[1]``.

    A constant array (max == min) maps to ``feature_range[0]`` everywhere instead of dividing by zero.
    """
    bottom, top = feature_range
    array = np.asarray(array)
    array_min = np.min(array)
    array_max = np.max(array)
    if array_max == array_min:
        return np.full(array.shape, float(bottom))
    scale_factor = (top - bottom) / (array_max - array_min)
    return scale_factor * (array - array_min) + bottom


def linear_scale(array, in_range=(0, 1), out_range=(0, 255)):
    """Map values linearly from ``in_range`` to ``out_range`` (values outside are extrapolated)."""
    if in_range[1] == in_range[0]:
        raise OpsoValueError(f"in_range must have distinct ends, got {in_range!r}")
    scale_factor = (out_range[1] - out_range[0]) / (in_range[1] - in_range[0])
    return scale_factor * (np.asarray(array) - in_range[0]) + out_range[0]


def jitter(x, width, distribution="gaussian"):
    """Add random noise to each value of ``x``.

    Parameters
    ----------
    x : scalar or array-like
    width : float
        Standard deviation (``"gaussian"``) or half-width (``"uniform"``, noise on [-width, width]).
    distribution : {"gaussian", "uniform"}
    """
    if distribution == "gaussian":
        return np.array(x) + np.random.normal(0, width, size=np.shape(x))
    if distribution == "uniform":
        return np.array(x) + np.random.uniform(-1 * width, width, size=np.shape(x))
    raise OpsoValueError(f"distribution must be 'gaussian' or 'uniform', got {distribution!r}")


def hex_to_time(s: str) -> datetime.datetime:
    """Convert a hexadecimal Unix-epoch string (e.g. ``'5F16A04E'``) to a UTC-aware datetime."""
    try:
        seconds = int(s, 16)
    except (TypeError, ValueError) as exc:
        raise ParseError(f"not a hexadecimal Unix time: {s!r}") from exc
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _check_final_clip(final_clip) -> None:
    if final_clip not in FINAL_CLIP_MODES:
        raise OpsoValueError(
            f"final_clip must be one of None, 'extend', 'remainder', 'full'; got {final_clip!r}"
        )


def generate_clip_times_df(
    full_duration,
    clip_duration,
    clip_overlap=0,
    final_clip=None,
    rounding_precision=10,
) -> pd.DataFrame:
    """Start and end times of even-length clips covering ``full_duration`` seconds.

    Clip ``i`` starts at ``i * (clip_duration - clip_overlap)``. A negative ``clip_overlap`` leaves gaps.
    Only the table is made; no audio is touched.

    Parameters
    ----------
    full_duration : float
        Seconds to split (>= 0).
    clip_duration : float
        Length of each clip in seconds (> 0).
    clip_overlap : float
        Seconds shared by consecutive clips; must be < ``clip_duration``. [default: 0]
    final_clip : {None, "extend", "remainder", "full"}
        What to do with a last clip that would run past ``full_duration``:

        - None: drop it;
        - "extend": keep it, ending past ``full_duration`` (full length);
        - "remainder": keep it, cut at ``full_duration`` (shorter);
        - "full": shift it back so it ends at ``full_duration`` (full length, more overlap); if
          ``full_duration < clip_duration`` the single clip is ``[0, full_duration]``.
    rounding_precision : int or None
        Decimals to round times to; None keeps them unrounded. [default: 10]

    Returns
    -------
    pandas.DataFrame
        Columns ``start_time``, ``end_time`` (s), index 0..n-1, no duplicate rows.
    """
    _check_final_clip(final_clip)
    full_duration = float(full_duration)
    clip_duration = float(clip_duration)
    clip_overlap = float(clip_overlap)
    if not math.isfinite(full_duration) or full_duration < 0:
        raise OpsoValueError(f"full_duration must be a finite number >= 0, got {full_duration}")
    if not math.isfinite(clip_duration) or clip_duration <= 0:
        raise OpsoValueError(f"clip_duration must be > 0 seconds, got {clip_duration}")
    if not clip_overlap < clip_duration:
        raise OpsoValueError(
            f"clip_overlap ({clip_overlap} s) must be less than clip_duration ({clip_duration} s)"
        )

    import pandas as pd

    increment = clip_duration - clip_overlap
    n_starts = max(0, math.ceil(full_duration / increment))
    # multiply instead of accumulating, so that start times do not drift over long recordings
    starts = np.arange(n_starts, dtype=float) * increment
    # a start that equals full_duration up to float error is not a start inside the file
    starts = starts[starts < full_duration - _TIME_TOLERANCE_S]
    ends = starts + clip_duration

    past_end = ends > full_duration + _TIME_TOLERANCE_S
    if final_clip is None:
        starts, ends = starts[~past_end], ends[~past_end]
    elif final_clip == "remainder":
        ends[past_end] = full_duration
    elif final_clip == "full":
        # every clip running past the end becomes the same clip [full - clip, full] (exactly, so
        # that duplicates are dropped below); a file shorter than one clip gives [0, full]. If the
        # last regular clip already is that clip up to float error (it ends at full_duration), the
        # shifted ones are dropped instead of making a near-duplicate
        shifted_start = max(0.0, full_duration - clip_duration)
        regular = starts[~past_end]
        if len(regular) and shifted_start - regular[-1] <= _TIME_TOLERANCE_S:
            starts, ends = regular, ends[~past_end]
        else:
            starts[past_end] = shifted_start
            ends[past_end] = full_duration
    # "extend": keep ends past full_duration

    if rounding_precision is not None:
        starts = starts.round(rounding_precision)
        ends = ends.round(rounding_precision)
    # values like 0.30000000000000004 -> 0.3 so that clip tables compare equal to hand-written ones
    df = pd.DataFrame({"start_time": starts + 0.0, "end_time": ends + 0.0})
    return df.drop_duplicates().reset_index(drop=True)


def make_clip_df(
    files,
    clip_duration,
    clip_overlap=0,
    final_clip=None,
    return_invalid_samples=False,
    raise_exceptions=False,
):
    """Table of fixed-length clips for a set of audio files.

    Durations are read from file headers only (no decoding). If ``files`` is a DataFrame indexed by
    file path, each file's labels (from its first row) are copied to all of its clips.

    Parameters
    ----------
    files : iterable of str or pandas.DataFrame
        Paths or fsspec URLs, or a label DataFrame with paths as index.
    clip_duration, clip_overlap, final_clip
        See :func:`generate_clip_times_df`.
    return_invalid_samples : bool
        If True, also return the set of files whose duration could not be read.
    raise_exceptions : bool
        If True, raise :class:`GetDurationError` on an unreadable file; otherwise the file gets one
        row with NaN start and end times.

    Returns
    -------
    pandas.DataFrame or (pandas.DataFrame, set)
        MultiIndex ``(file, start_time, end_time)``; label columns if ``files`` was a DataFrame.
    """
    import pandas as pd

    from opso_core.audio_info import audio_file_info

    if isinstance(files, str):
        raise OpsoTypeError(
            "make_clip_df expects a list of files or a DataFrame indexed by file; got a single "
            "string. Wrap it in a list: make_clip_df([path], ...)"
        )
    _check_final_clip(final_clip)
    label_df = None
    if isinstance(files, pd.DataFrame):
        file_list = list(files.index.values)
        label_df = files[~files.index.duplicated(keep="first")]
    elif isinstance(files, Iterable):
        file_list = list(files)
    else:
        raise OpsoTypeError(
            f"files must be an iterable of paths or a DataFrame indexed by path, got {type(files)}"
        )

    idx_cols = ["file", "start_time", "end_time"]
    clip_dfs = []
    invalid_samples = set()
    for f in file_list:
        try:
            duration_s = audio_file_info(f).duration_s
            clips = generate_clip_times_df(
                full_duration=duration_s,
                clip_duration=clip_duration,
                clip_overlap=clip_overlap,
                final_clip=final_clip,
            )
        except Exception as exc:
            if raise_exceptions:
                raise GetDurationError(f"could not read the duration of {f}: {exc}") from exc
            clips = pd.DataFrame({"start_time": [np.nan], "end_time": [np.nan]})
            invalid_samples.add(f)
        clips.insert(0, "file", f)
        if label_df is not None:
            for col in label_df.columns:
                clips[col] = label_df.at[f, col]
        clip_dfs.append(clips)

    if clip_dfs:
        clip_df = pd.concat(clip_dfs, ignore_index=True).set_index(idx_cols)
    else:
        label_cols = [] if label_df is None else list(label_df.columns)
        clip_df = pd.DataFrame(columns=idx_cols + label_cols).set_index(idx_cols)

    if return_invalid_samples:
        return clip_df, invalid_samples
    return clip_df


def load_metadata(path, raise_exceptions=False, storage_options=None):
    """Read the tag metadata of an audio file (WAV, AIFF, FLAC, OGG, MP3) from its header.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL.
    raise_exceptions : bool
        If True, re-raise read errors; otherwise return None. [default: False]
    storage_options : dict, optional
        Passed to fsspec for remote URLs.

    Returns
    -------
    dict or None
        Tag fields present in the file (``title``, ``artist``, ``comment``, ``date``, ...) plus
        ``samplerate`` (Hz), ``format``, ``frames``, ``sections``, ``subtype``, ``channels``,
        ``duration`` (s) and ``filesize`` (bytes).
    """
    from opso_core.audio_info import audio_file_info

    try:
        info = audio_file_info(path, storage_options=storage_options)
    except Exception:
        if raise_exceptions:
            raise
        return None
    return info.soundfile_metadata()
