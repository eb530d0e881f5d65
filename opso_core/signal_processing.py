"""Signal processing (``opensoundscape.signal_processing``): generalized cross correlation, time
delay estimation and thresholded events.
"""

from __future__ import annotations

import numpy as np

from opso_core.errors import OpsoValueError

__all__ = ["gcc", "tdoa", "thresholded_event_durations", "GCC_FILTERS"]

#: Weightings accepted by :func:`gcc` (Knapp & Carter 1976).
GCC_FILTERS = ("phat", "roth", "scot", "ht", "cc")


def gcc(x, y, cc_filter="phat", epsilon=0.001, radius=None):
    """Generalized cross correlation of two signals (Knapp & Carter 1976).

    Parameters
    ----------
    x, y : array-like, shape (n,) and (m,)
        Signals sampled at the same rate.
    cc_filter : {"phat", "roth", "scot", "ht", "cc"}
        Frequency weighting: phase transform (default), Roth, smoothed coherence transform,
        Hannan-Thomson, or none (plain cross correlation, equal to ``scipy.signal.correlate``).
    epsilon : float
        Added to denominators so that the weighting is finite.
    radius : None
        Accepted for API compatibility; unused.

    Returns
    -------
    numpy.ndarray, shape (n + m,)
        Correlation at lags ``0, 1, ..., n+m-1`` where the second half holds negative lags
        (``cc[-k]`` is lag ``-k``). A peak at lag ``k > 0`` means ``x`` lags ``y`` by ``k`` samples.
    """
    if cc_filter not in GCC_FILTERS:
        raise OpsoValueError(f"cc_filter must be one of {GCC_FILTERS}, got {cc_filter!r}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 1 or y.ndim != 1:
        raise OpsoValueError("gcc takes two 1-d signals")
    n = x.shape[0] + y.shape[0]
    X = np.fft.rfft(x, n=n)
    Y = np.fft.rfft(y, n=n)
    Gxy = X * np.conj(Y)
    if cc_filter == "phat":
        phi = 1 / (np.abs(Gxy) + epsilon)
    elif cc_filter == "roth":
        phi = 1 / (np.real(X * np.conj(X)) + epsilon)
    elif cc_filter == "scot":
        Gxx = np.real(X * np.conj(X))
        Gyy = np.real(Y * np.conj(Y))
        phi = 1 / (np.sqrt(Gxx * Gyy) + epsilon)
    elif cc_filter == "ht":
        Gxx = np.real(X * np.conj(X))
        Gyy = np.real(Y * np.conj(Y))
        gamma_sq = np.abs(Gxy) ** 2 / (Gxx * Gyy + epsilon)
        phi = gamma_sq / (np.abs(Gxy) * np.abs(1 - gamma_sq) + epsilon)
    else:
        phi = 1.0
    return np.fft.irfft(Gxy * phi, n)


def tdoa(signal, reference_signal, cc_filter="phat", sample_rate=1, return_max=False, max_delay=None):
    """Time difference of arrival of ``signal`` relative to ``reference_signal``.

    The delay maximises the generalized cross correlation (:func:`gcc`). A signal arriving 2.5 s
    *after* the reference gives 2.5; 0.5 s *before* gives -0.5.

    Parameters
    ----------
    signal, reference_signal : array-like, shape (n,), (m,)
    cc_filter : str
        See :func:`gcc`.
    sample_rate : float
        Samples per second of both signals. [default: 1, so the result is in samples]
    return_max : bool
        Also return the maximum of the correlation.
    max_delay : float, optional
        Only consider delays within ``[-max_delay, max_delay]`` seconds.

    Returns
    -------
    float or (float, float)
        Delay in seconds (and the correlation maximum if ``return_max``).
    """
    cc = gcc(signal, reference_signal, cc_filter=cc_filter)
    max_shift = len(cc) // 2
    if max_delay is not None:
        if max_delay < 0:
            raise OpsoValueError(f"max_delay must be >= 0 seconds, got {max_delay}")
        max_shift = min(max_shift, int(max_delay * sample_rate))
    # reorder lags to [-max_shift, ..., 0, ..., +max_shift]
    cc = np.concatenate((cc[len(cc) - max_shift :], cc[: max_shift + 1]))
    lag = int(np.argmax(cc)) - max_shift
    delay = lag / float(sample_rate)
    if return_max:
        return delay, float(np.max(cc))
    return delay


def thresholded_event_durations(x, threshold, normalize=False, sample_rate=1):
    """Start times and durations of runs where a 1-d signal is at or above ``threshold``.

    Parameters
    ----------
    x : array-like, shape (n,)
    threshold : float
    normalize : bool
        If True, divide ``x`` by its maximum first.
    sample_rate : float
        Samples per second of ``x`` (results are in seconds when given in Hz).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Event start times and durations, in units of ``1 / sample_rate``.
    """
    x = np.asarray(x, dtype=float)
    if normalize:
        x = x / np.max(x)
    above = np.concatenate(([False], x >= threshold, [False]))
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    return starts / sample_rate, (ends - starts) / sample_rate
