"""Resampling to 48 kHz as BirdNET's own tools do it: librosa's ``kaiser_fast`` (the ``resampy`` filter).

BirdNET-Analyzer and ``birdnetlib`` load audio with ``librosa.load(path, sr=48000,
res_type="kaiser_fast")``, which interpolates with ``resampy``'s ``kaiser_fast`` filter: a
Kaiser-windowed sinc of 24 zero crossings, roll-off 0.868 of the lower Nyquist frequency, tabulated
at 512 points per zero crossing and linearly interpolated between them. The filter matters: on a
32 kHz recording it removes most of 14-16 kHz, where BirdNET still listens, and a steeper
resampler (soxr) moved confidences by up to 0.48 on OpenSoundscape's test recordings.

For a rational ratio ``up / down`` this interpolation is a polyphase FIR filter, so it is computed
with :func:`scipy.signal.upfirdn` (C) instead of resampy's per-sample loop (numba): the same
numbers to float32 rounding (resampy accumulates in float32), without numba, and a segment of a
recording gives the samples the whole recording would (no state, no edge effect away from the
recording's ends). The table is rebuilt from its definition (``beta`` fitted to resampy 0.4.3's
``kaiser_fast.npz`` to 1.6e-10; resampy is ISC-licensed).
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["kaiser_fast_filter", "resample_kaiser_fast"]

_ZEROS = 24  # zero crossings of the half window
_PER_ZERO = 512  # table points per zero crossing
_ROLLOFF = 0.8682120388377784
_BETA = 9.903224539045038


@functools.lru_cache(maxsize=1)
def _half_window() -> np.ndarray:
    """resampy's ``kaiser_fast`` half window (12,289 points: 24 zero crossings x 512, plus the end)."""
    from scipy.signal.windows import kaiser

    n = _ZEROS * _PER_ZERO
    sinc = _ROLLOFF * np.sinc(_ROLLOFF * np.linspace(0, _ZEROS, num=n + 1, endpoint=True))
    return kaiser(2 * n + 1, _BETA)[n:] * sinc


@functools.lru_cache(maxsize=16)
def kaiser_fast_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """The FIR filter, at ``up`` times the input rate, that resampy's ``kaiser_fast`` applies when
    resampling by ``up / down``.

    resampy computes, for an output instant a fraction ``f`` of an input sample after input sample
    ``n``, the weight of ``x[n - i]`` from the table at ``f * s * 512 + i * int(s * 512)`` and that of
    ``x[n + 1 + k]`` at ``(1 - f) * s * 512 + k * int(s * 512)`` (``s = min(1, up / down)``; the table
    is scaled by ``s`` too), linearly interpolated. ``f`` takes the ``up`` values ``r / up``; tap ``i``
    of phase ``r`` sits ``r + i * up`` samples of the upsampled signal before the output instant, so one
    filter holds every phase's taps.

    Returns
    -------
    (numpy.ndarray, int)
        The taps (float64) and the output index of input sample 0 (the filter's delay at the output rate).
    """
    scale = min(1.0, up / down)
    table = _half_window() * (scale if scale < 1 else 1.0)
    delta = np.diff(table, append=table[-1])
    step = int(scale * _PER_ZERO)
    wing = (len(table) - 1) // step + 1  # most taps on one side
    half = wing * up
    taps = np.zeros(2 * half + 1)

    def weights(frac_scaled: float) -> np.ndarray:
        position = frac_scaled * _PER_ZERO
        offset = int(position)
        eta = position - offset
        index = offset + np.arange((len(table) - offset) // step) * step  # resampy's wing length
        return table[index] + eta * delta[index]

    for r in range(up):
        f = r / up
        left = weights(f * scale)  # x[n - i], i = 0, 1, ...: r + i * up samples before the output
        taps[half + r + np.arange(len(left)) * up] = left
        right = weights(scale - f * scale)  # x[n + 1 + k]: up - r + k * up samples after it
        taps[half - (up - r) - np.arange(len(right)) * up] = right
    pad = (-half) % down  # so that the centre tap falls on an output sample
    return np.concatenate([np.zeros(pad), taps]), (half + pad) // down


def resample_kaiser_fast(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample 1-d ``samples`` from ``from_hz`` to ``to_hz`` as ``librosa.resample(..., res_type="kaiser_fast")``.

    Parameters
    ----------
    samples : numpy.ndarray, shape (n,)
    from_hz, to_hz : int
        Hz.

    Returns
    -------
    numpy.ndarray, shape (floor(n * to_hz / from_hz),), float32
        As resampy returns it (librosa then pads with zeros to ``ceil``).
    """
    from scipy.signal import upfirdn

    from_hz, to_hz = int(from_hz), int(to_hz)
    g = math.gcd(from_hz, to_hz)
    up, down = to_hz // g, from_hz // g
    n_out = len(samples) * to_hz // from_hz
    if up == down:
        return np.asarray(samples, dtype=np.float32).copy()
    taps, delay = kaiser_fast_filter(up, down)
    y = upfirdn(taps, np.asarray(samples, dtype=np.float64), up, down)
    out = np.zeros(n_out, dtype=np.float32)
    piece = y[delay : delay + n_out]
    out[: len(piece)] = piece
    return out
