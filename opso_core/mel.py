"""Mel scale and mel filter banks (Slaney and HTK), numerically equal to librosa's
``librosa.mel_frequencies`` and ``librosa.filters.mel`` without depending on librosa.
"""

from __future__ import annotations

import numpy as np

from opso_core.errors import OpsoValueError

__all__ = ["hz_to_mel", "mel_filter_bank", "mel_frequencies", "mel_to_hz"]

_F_SP = 200.0 / 3  # Slaney: linear part, Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(frequencies, htk=False):
    """Frequencies (Hz) to mels: HTK ``2595 log10(1 + f/700)`` or Slaney (linear below 1 kHz, log above)."""
    f = np.asanyarray(frequencies, dtype=float)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    mels = f / _F_SP
    log_part = f >= _MIN_LOG_HZ
    return np.where(log_part, _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP,
                    mels)


def mel_to_hz(mels, htk=False):
    """Inverse of :func:`hz_to_mel`."""
    m = np.asanyarray(mels, dtype=float)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def mel_frequencies(n_mels=128, fmin=0.0, fmax=11025.0, htk=False) -> np.ndarray:
    """``n_mels`` frequencies (Hz) evenly spaced on the mel scale from ``fmin`` to ``fmax``."""
    mels = np.linspace(hz_to_mel(fmin, htk=htk), hz_to_mel(fmax, htk=htk), n_mels)
    return mel_to_hz(mels, htk=htk)


def mel_filter_bank(sample_rate, n_fft, n_mels=128, fmin=0.0, fmax=None, htk=False, norm="slaney"):
    """Triangular mel filters.

    Parameters
    ----------
    sample_rate : float
        Hz.
    n_fft : int
        FFT size; the bank has ``n_fft // 2 + 1`` columns.
    n_mels : int
    fmin, fmax : float
        Band edges in Hz; ``fmax`` defaults to ``sample_rate / 2``.
    htk : bool
        HTK mel scale instead of Slaney's.
    norm : {"slaney", None} or number
        "slaney" divides each triangle by its width in Hz (constant energy per channel); a number
        p normalises each row to unit p-norm; None leaves peak heights at 1.

    Returns
    -------
    numpy.ndarray, shape (n_mels, n_fft // 2 + 1)
    """
    if fmax is None:
        fmax = sample_rate / 2.0
    if n_mels < 1:
        raise OpsoValueError(f"n_mels must be >= 1, got {n_mels}")
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_f = mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, htk=htk)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    elif norm is not None:
        try:
            p = float(norm)
        except (TypeError, ValueError) as exc:
            raise OpsoValueError(f"norm must be 'slaney', None or a number, got {norm!r}") from exc
        lengths = np.linalg.norm(weights, ord=p, axis=1, keepdims=True)
        weights = np.divide(weights, lengths, out=np.zeros_like(weights), where=lengths > 0)
    return weights
