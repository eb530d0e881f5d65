"""Signal processing (``opensoundscape.signal_processing``): generalized cross correlation, time
delay estimation, thresholded events, and peak sequences in a continuous wavelet transform (the
Ruffed Grouse drumming detector).
"""

from __future__ import annotations

import logging

import numpy as np

from opso_core.errors import OpsoValueError, missing_dependency
from opso_core.utils import inrange

__all__ = [
    "GCC_FILTERS",
    "band_limited_gcc",
    "cwt_peaks",
    "detect_peak_sequence_cwt",
    "find_accel_sequences",
    "frequency2scale",
    "gcc",
    "tdoa",
    "thresholded_event_durations",
]

logger = logging.getLogger(__name__)

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
    numpy.ndarray, shape (n + m - 1,)
        Correlation at lags ``-(m-1), ..., n-1`` (``scipy.signal.correlation_lags(n, m)``), the
        layout of ``scipy.signal.correlate(x, y, mode="full")``. A peak at lag ``k > 0`` means
        ``x`` lags ``y`` by ``k`` samples.

    Notes
    -----
    Coherence estimated from one pair of segments is 1 at every frequency, so the Hannan-Thomson
    weight ``coherence / (|Gxy| (1 - coherence))`` is set by ``epsilon`` alone: about
    ``1 / (3 epsilon)`` wherever ``|Gxy|`` is much larger than ``epsilon``. ``ht`` then is close to
    the plain cross correlation times that constant; its values follow OpenSoundscape 0.9.0's (same
    formula, in float64 where 0.9.0 computes in float32).
    """
    return band_limited_gcc(x, y, cc_filter=cc_filter, epsilon=epsilon)


def band_limited_gcc(x, y, cc_filter="phat", epsilon=0.001, band_hz=None, sample_rate=1):
    """:func:`gcc`, optionally with every frequency bin outside ``band_hz`` set to zero.

    The weightings other than ``cc`` divide each bin by its own magnitude, so band-passing the
    signals first does not keep out-of-band noise from the result: PHAT gives every bin equal weight.
    Zeroing the bins outside the band of the sound does.

    Parameters
    ----------
    x, y : array-like, shape (n,) and (m,)
    cc_filter : str
        See :func:`gcc`.
    epsilon : float
    band_hz : (float, float) or None
        Frequencies kept, Hz (None: all, which is :func:`gcc`).
    sample_rate : float
        Of both signals, Hz (needed with ``band_hz``).

    Returns
    -------
    numpy.ndarray, shape (n + m - 1,)
        In :func:`gcc`'s layout.
    """
    if cc_filter not in GCC_FILTERS:
        raise OpsoValueError(f"cc_filter must be one of {GCC_FILTERS}, got {cc_filter!r}")
    import scipy.fft  # here: keeps ``import opso_core`` light

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 1 or y.ndim != 1:
        raise OpsoValueError("gcc takes two 1-d signals")
    if x.size == 0 or y.size == 0:
        raise OpsoValueError("gcc needs two non-empty signals")
    n, m = x.shape[0], y.shape[0]
    n_fft = scipy.fft.next_fast_len(n + m - 1, real=True)  # long enough that no lag wraps around
    X = scipy.fft.rfft(x, n=n_fft)
    Y = scipy.fft.rfft(y, n=n_fft)
    Gxy = X * np.conj(Y)
    if cc_filter == "phat":
        phi = 1 / (np.abs(Gxy) + epsilon)
    elif cc_filter == "roth":
        phi = 1 / (np.real(X * np.conj(X)) + epsilon)
    elif cc_filter == "scot":
        Gxx = np.real(X * np.conj(X))
        Gyy = np.real(Y * np.conj(Y))
        phi = 1 / (np.sqrt(Gxx * Gyy) + epsilon)
    elif cc_filter == "ht":  # epsilon placed as OpenSoundscape 0.9.0 places it (this sets the scale, see gcc)
        Gxx = np.real(X * np.conj(X))
        Gyy = np.real(Y * np.conj(Y))
        coherence = np.abs(Gxy / (np.sqrt(Gxx * Gyy) + epsilon)) ** 2
        phi = coherence / (np.abs(Gxy) * (1 - coherence) + epsilon)
    else:
        phi = 1.0
    weighted = Gxy * phi
    if band_hz is not None:
        low, high = band_hz
        if not low < high:
            raise OpsoValueError(f"band_hz must be [low, high] with low < high, got {band_hz}")
        freqs = np.arange(len(weighted)) * (float(sample_rate) / n_fft)
        weighted[(freqs < low) | (freqs > high)] = 0
    circular = scipy.fft.irfft(weighted, n_fft)  # lag k at index k mod n_fft
    return np.concatenate((circular[n_fft - (m - 1):], circular[:n])) if m > 1 else circular[:n].copy()


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
    lags = np.arange(-(len(reference_signal) - 1), len(signal))
    if max_delay is not None:
        if max_delay < 0:
            raise OpsoValueError(f"max_delay must be >= 0 seconds, got {max_delay}")
        within = np.abs(lags) <= int(max_delay * sample_rate)
        cc, lags = cc[within], lags[within]
    best = int(np.argmax(cc))
    delay = lags[best] / float(sample_rate)
    if return_max:
        return delay, float(cc[best])
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


def _get_ones_sequences(x):
    """Starts and lengths of the runs of 1 in a vector of 0 and 1, as two lists."""
    x = np.asarray(x)
    if x.size and not np.isin(x, (0, 1)).all():
        raise OpsoValueError("values must be 0 or 1")
    padded = np.concatenate(([0], (x == 1).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    return starts.tolist(), (ends - starts).tolist()


def _pywt():
    try:
        import pywt
    except ImportError as exc:  # a core dependency; only a broken install lacks it
        raise missing_dependency("PyWavelets", "all") from exc
    return pywt


def frequency2scale(frequency, wavelet, sample_rate):
    """Wavelet scale whose centre frequency is ``frequency``.

    Parameters
    ----------
    frequency : float
        Desired centre frequency in Hz.
    wavelet : str
        PyWavelets wavelet name, e.g. ``"morl"`` (Morlet).
    sample_rate : float
        Sample rate of the signal in Hz.

    Returns
    -------
    float
        Scale for ``pywt.cwt``: ``central_frequency(wavelet) * sample_rate / frequency``. (Not the
        exact inverse of ``pywt.scale2frequency``, which works in cycles per sample:
        ``frequency_hz = pywt.scale2frequency(wavelet, scale) * sample_rate``.)
    """
    if frequency <= 0:
        raise OpsoValueError(f"frequency must be > 0 Hz, got {frequency}")
    return _pywt().central_frequency(wavelet) * sample_rate / frequency


def cwt_peaks(audio, center_frequency, wavelet="morl", peak_threshold=0.2, peak_separation=None, plot=False):
    """Peaks of a one-frequency continuous wavelet transform of ``audio``.

    The transform at ``center_frequency`` is normalised by its maximum, squared, replaced by its
    Hilbert envelope and normalised again (so values lie in [0, 1]); peaks are then found with
    ``scipy.signal.find_peaks``. This is the feature of the Ruffed Grouse drumming detector.

    Parameters
    ----------
    audio : Audio
        Mono audio; its sample rate must be at least twice ``center_frequency`` (downsample first:
        the transform's cost grows with the number of samples).
    center_frequency : float
        Frequency of the transform, Hz.
    wavelet : str
        PyWavelets wavelet name.
    peak_threshold : float or None
        Minimum height of a peak (0-1); None: no minimum.
    peak_separation : float or None
        Minimum time between peaks, seconds; None: no minimum.
    plot : bool
        Plot the feature with its peaks, and the time between successive peaks (matplotlib).

    Returns
    -------
    (list of float, list of float)
        Peak times in seconds from the start of ``audio`` (sample index / sample rate), and the
        feature's value at each peak.
    """
    from scipy.signal import find_peaks, hilbert

    sample_rate = float(audio.sample_rate)
    if center_frequency * 2 > sample_rate:
        raise OpsoValueError(f"center_frequency {center_frequency} Hz is above the Nyquist frequency of audio at "
                             f"{sample_rate:g} Hz; use a sample rate of at least {2 * center_frequency:g} Hz")
    samples = np.asarray(audio.samples, dtype=np.float64)
    if samples.size == 0:
        return [], []
    pywt = _pywt()
    scale = frequency2scale(center_frequency, wavelet, sample_rate)
    coefficients, _ = pywt.cwt(samples, scale, wavelet, sampling_period=1 / sample_rate)
    x = coefficients[0]
    x = x / np.max(x)
    x = np.abs(hilbert(x**2))
    x = x / np.max(x)
    distance = None if peak_separation is None else max(1, int(np.round(peak_separation * sample_rate)))
    peaks, _ = find_peaks(x, height=peak_threshold, distance=distance)
    peak_times = (peaks / sample_rate).tolist()
    peak_levels = x[peaks].tolist()
    if plot:
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, sharex=True)
        top.plot(np.arange(len(x)) / sample_rate, x)
        top.scatter(peak_times, peak_levels, c="red")
        top.set_ylabel("cwt feature")
        bottom.scatter(peak_times[1:], np.diff(peak_times))
        bottom.set_xlabel("time (s)")
        bottom.set_ylabel("time since previous peak (s)")
    return peak_times, peak_levels


def find_accel_sequences(t, dt_range=(0.05, 0.8), dy_range=(-0.2, 0), d2y_range=(-0.05, 0.15), max_skip=3,
                         duration_range=(1, 15), points_range=(5, 100)):
    """Accelerating (or decelerating) sequences in a series of event times.

    Each point is an event time ``t[i]`` with ``y[i] = t[i+1] - t[i]``, the time to the next event
    (so the last time has no point). Walking through the points, a candidate sequence takes a point
    when, measured from the last point it took, the time step ``dt``, the change ``dy`` and the
    change of that change ``d2y`` lie in their ranges (inclusive). A sequence ends when more than
    ``max_skip`` points in a row were not taken, or when a point comes more than ``dt_range[1]``
    after the sequence's last one; it is kept when its duration (last minus first time, s) lies in
    ``duration_range`` and its number of points in ``points_range``. While no sequence is being
    built, each rejected point becomes the reference for the next.

    Parameters
    ----------
    t : array-like, shape (n,)
        Event times in seconds, increasing (e.g. :func:`cwt_peaks` times).
    dt_range, dy_range, d2y_range : (float, float)
        Point-to-point criteria, seconds.
    max_skip : int
        Most points in a row a sequence may skip.
    duration_range : (float, float)
        Duration of a kept sequence, seconds.
    points_range : (int, int)
        Number of points of a kept sequence.

    Returns
    -------
    (list of lists, list of lists)
        ``sequences_t, sequences_y``: for each kept sequence its times and its ``y`` values.
    """
    t = np.asarray(t, dtype=float)
    y = np.diff(t)
    if len(y) < 2:
        return [], []
    sequences_t, sequences_y = [], []

    def keep(seq_t, seq_y):
        if seq_t and inrange(len(seq_y), points_range) and inrange(seq_t[-1] - seq_t[0], duration_range):
            sequences_t.append(seq_t)
            sequences_y.append(seq_y)

    ref_t, ref_y, ref_dy, ref_index = t[0], y[0], None, -1  # the first point is only a reference
    seq_t, seq_y = [], []
    for i in range(len(y) - 1):
        ti, yi = t[i + 1], y[i + 1]
        dt, dy = ti - ref_t, yi - ref_y
        d2y_ok = ref_dy is None or inrange(dy - ref_dy, d2y_range)
        if inrange(dt, dt_range) and inrange(dy, dy_range) and d2y_ok:
            ref_t, ref_y, ref_dy, ref_index = ti, yi, dy, i
            seq_t.append(float(ti))
            seq_y.append(float(yi))
        elif seq_t:
            if i - ref_index > max_skip or not inrange(dt, dt_range):
                keep(seq_t, seq_y)
                seq_t, seq_y = [], []
        else:
            ref_t, ref_y, ref_dy = ti, yi, None
    if len(seq_y) > 1:
        keep(seq_t, seq_y)
    return sequences_t, sequences_y


def detect_peak_sequence_cwt(audio, sample_rate=400, window_len=60, center_frequency=50, wavelet="morl",
                             peak_threshold=0.2, peak_separation=15 / 400, dt_range=(0.05, 0.8),
                             dy_range=(-0.2, 0), d2y_range=(-0.05, 0.15), max_skip=3, duration_range=(1, 15),
                             points_range=(9, 100), plot=False):
    """Accelerating sequences of peaks in a continuous wavelet transform (Ruffed Grouse drumming).

    The audio is resampled to ``sample_rate`` and cut into windows of ``window_len`` seconds
    without overlap (an incomplete last window is not analysed). In each window
    :func:`cwt_peaks` finds peaks and :func:`find_accel_sequences` finds sequences among their
    times. The feature is normalised per window, so the window length can change results.

    Parameters
    ----------
    audio : Audio
    sample_rate : float
        Rate the audio is resampled to, Hz; at least twice ``center_frequency``, as low as possible.
    window_len : float
        Analysis window, seconds.
    center_frequency, wavelet, peak_threshold, peak_separation
        See :func:`cwt_peaks`.
    dt_range, dy_range, d2y_range, max_skip, duration_range, points_range
        See :func:`find_accel_sequences`.
    plot : bool
        Plot each window's peaks and sequences.

    Returns
    -------
    pandas.DataFrame
        One row per sequence: ``sequence_y``, ``sequence_t`` (lists; times in seconds from the start
        of ``audio``), ``window_start_t``, ``seq_len``, ``seq_start_time``, ``seq_end_time``,
        ``seq_midpoint_time``. Zero rows (same columns) when nothing is found.
    """
    import pandas as pd

    if window_len <= 0:
        raise OpsoValueError(f"window_len must be > 0 seconds, got {window_len}")
    audio = audio.resample(sample_rate)
    rows = []
    for window in range(int(audio.duration / window_len)):
        start_s = window * window_len
        peak_t, _ = cwt_peaks(audio.trim(start_s, start_s + window_len), center_frequency, wavelet,
                              peak_threshold=peak_threshold, peak_separation=peak_separation)
        seq_t, seq_y = find_accel_sequences(peak_t, dt_range=dt_range, dy_range=dy_range, d2y_range=d2y_range,
                                            max_skip=max_skip, duration_range=duration_range,
                                            points_range=points_range)
        if plot:
            _plot_sequences(peak_t, seq_t, seq_y, window, window_len)
        for times, ys in zip(seq_t, seq_y, strict=True):
            times = [start_s + ti for ti in times]
            rows.append({"sequence_y": ys, "sequence_t": times, "window_start_t": start_s, "seq_len": len(ys),
                         "seq_start_time": times[0], "seq_end_time": times[-1],
                         "seq_midpoint_time": (times[0] + times[-1]) / 2})
    columns = ["sequence_y", "sequence_t", "window_start_t", "seq_len", "seq_start_time", "seq_end_time",
               "seq_midpoint_time"]
    logger.debug("detect_peak_sequence_cwt: %d sequences", len(rows))
    return pd.DataFrame(rows, columns=columns)


def _plot_sequences(peak_t, seq_t, seq_y, window, window_len):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.scatter(peak_t[:-1], np.diff(peak_t), label="all detected peaks")
    for j, (ti, yi) in enumerate(zip(seq_t, seq_y, strict=True)):
        ax.scatter(ti, yi, label=f"detected sequence {j + 1}")
    ax.set_title(f"window {window + 1}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("time to next peak (s)")
    ax.set_xlim(0, window_len)
    ax.legend()
