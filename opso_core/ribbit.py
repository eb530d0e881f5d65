"""RIBBIT: detect pulsed calls (frogs, toads, some insects and birds) by their pulse rate
(``opensoundscape.ribbit``; Lapp et al. 2021, Conservation Biology).

For each clip: the amplitude in the call's frequency band minus the amplitude in noise bands
(:meth:`~opso_core.spectrogram.Spectrogram.net_amplitude`) is a time series sampled once per
spectrogram window; its power spectral density (Welch's method, ``nfft=1024``, as ``scipy.signal.welch``) is searched for the
highest value at pulse rates strictly inside ``pulse_rate_range``. That value is the score: larger
means stronger pulsing at the target rate. Scores are comparable between clips analysed with the
same settings, not probabilities.

:func:`ribbit_batch` scores many clips' spectrograms (an array ``(n_clips, n_frequencies, n_times)``,
as the pipeline stores them) in one vectorised call with the same numbers as
:func:`calculate_pulse_score` on each clip.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING

import numpy as np

from opso_core.errors import OpsoValueError
from opso_core.spectrogram import nearest_range
from opso_core.stft import welch_psd
from opso_core.utils import generate_clip_times_df

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RibbitParams", "calculate_pulse_score", "ribbit", "ribbit_batch"]

_WELCH_NPERSEG = 256  # scipy.signal.welch's default segment length


def _psd_max(amplitude: np.ndarray, amplitude_sample_rate: float, pulse_rate_range, nfft: int) -> np.ndarray:
    """Max Welch PSD strictly inside ``pulse_rate_range`` along the last axis; 0 if no bin is inside."""
    n = amplitude.shape[-1]
    nperseg = min(_WELCH_NPERSEG, n)
    f, psd = welch_psd(amplitude, amplitude_sample_rate, nperseg=nperseg, nfft=max(nfft, nperseg))
    inside = (f > pulse_rate_range[0]) & (f < pulse_rate_range[1])
    if not inside.any():
        return np.zeros(amplitude.shape[:-1])
    return psd[..., inside].max(axis=-1)


def _check_band(band, name):
    if band is None or len(band) != 2 or not band[0] < band[1]:
        raise OpsoValueError(f"{name} must be [low, high] with low < high, got {band!r}")


def calculate_pulse_score(amplitude, amplitude_sample_rate, pulse_rate_range, plot=False, nfft=1024) -> float:
    """Highest power spectral density of an amplitude series within a pulse-rate range.

    Parameters
    ----------
    amplitude : array-like, shape (n,)
        Amplitude time series (e.g. a spectrogram band's net amplitude).
    amplitude_sample_rate : float
        Samples per second of ``amplitude`` (Hz), typically 20-200.
    pulse_rate_range : (float, float)
        [min, max] pulse rate in Hz; bins strictly between the two count.
    plot : bool
        Plot the power spectral density (needs matplotlib).
    nfft : int
        FFT length of Welch's method (resolution of the PSD). [default: 1024]

    Returns
    -------
    float
        The score; 0 if no PSD bin falls inside ``pulse_rate_range``.
    """
    amplitude = np.asarray(amplitude, dtype=float)
    if amplitude.ndim != 1 or len(amplitude) < 1:
        raise OpsoValueError("amplitude must be a non-empty 1-d series")
    _check_band(pulse_rate_range, "pulse_rate_range")
    score = float(_psd_max(amplitude, amplitude_sample_rate, pulse_rate_range, nfft))
    if plot:
        from matplotlib import pyplot as plt

        nperseg = min(_WELCH_NPERSEG, len(amplitude))
        f, psd = welch_psd(amplitude, amplitude_sample_rate, nperseg=nperseg, nfft=max(nfft, nperseg))
        plt.plot(f, psd)
        plt.axvline(pulse_rate_range[0], color="k")
        plt.axvline(pulse_rate_range[1], color="k")
        plt.title("RIBBIT: power spectral density")
        plt.xlabel("pulse rate (pulses/sec)")
        plt.ylabel("power spectral density")
    return score


def ribbit(spectrogram, signal_band, pulse_rate_range, clip_duration, clip_overlap=0, final_clip=None,
           noise_bands=None, plot=False) -> pd.DataFrame:
    """Score each clip of a spectrogram for pulsing at ``pulse_rate_range``.

    Parameters
    ----------
    spectrogram : Spectrogram
        Spectrogram of a whole recording.
    signal_band : (float, float)
        [low, high] frequency range of the call in Hz.
    pulse_rate_range : (float, float)
        [min, max] pulses per second.
    clip_duration : float
        Seconds analysed per score.
    clip_overlap : float
        Seconds shared by consecutive clips. [default: 0]
    final_clip : {None, "remainder", "full"}
        As :func:`~opso_core.utils.generate_clip_times_df`; "extend" is not supported.
    noise_bands : list of (float, float), optional
        Frequency ranges (Hz) whose amplitude is subtracted.
    plot : bool
        Plot each clip's PSD.

    Returns
    -------
    pandas.DataFrame
        Columns ``start_time``, ``end_time`` (s) and ``score``, one row per clip. A clip's amplitude
        series is the spectrogram columns whose window centres fall in ``[start_time, end_time)``.
    """
    if final_clip == "extend":
        raise OpsoValueError("final_clip='extend' is not supported for RIBBIT; use 'remainder' or 'full'")
    _check_band(signal_band, "signal_band")
    amplitude = np.asarray(spectrogram.net_amplitude(signal_band, noise_bands), dtype=float)
    times = spectrogram.times
    step = spectrogram.window_step
    if step is None:
        raise OpsoValueError("the spectrogram has fewer than two windows; RIBBIT needs an amplitude series")
    sample_rate = 1.0 / step
    clip_df = generate_clip_times_df(full_duration=spectrogram.duration, clip_duration=clip_duration,
                                     clip_overlap=clip_overlap, final_clip=final_clip)
    scores = []
    for start, end in zip(clip_df["start_time"], clip_df["end_time"], strict=True):
        window = amplitude[(times >= start) & (times < end)]
        if len(window) == 0:
            warnings.warn(f"clip {start}-{end} s holds no spectrogram window; score set to NaN", stacklevel=2)
            scores.append(np.nan)
            continue
        scores.append(calculate_pulse_score(window, sample_rate, pulse_rate_range, plot=plot))
    clip_df["score"] = np.asarray(scores, dtype=float)
    return clip_df


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RibbitParams:
    """One species' RIBBIT settings (hashable).

    Attributes
    ----------
    name : str
        Species or call type; the score column name.
    signal_band : (float, float)
        Hz.
    pulse_rate_range : (float, float)
        Pulses per second.
    noise_bands : tuple of (float, float)
        Hz; may be empty.
    nfft : int
        Welch FFT length.
    """

    name: str
    signal_band: tuple[float, float]
    pulse_rate_range: tuple[float, float]
    noise_bands: tuple[tuple[float, float], ...] = ()
    nfft: int = 1024

    def __post_init__(self):
        _check_band(self.signal_band, "signal_band")
        _check_band(self.pulse_rate_range, "pulse_rate_range")
        for band in self.noise_bands:
            _check_band(band, "noise_bands entry")
        object.__setattr__(self, "signal_band", tuple(float(x) for x in self.signal_band))
        object.__setattr__(self, "pulse_rate_range", tuple(float(x) for x in self.pulse_rate_range))
        object.__setattr__(self, "noise_bands", tuple(tuple(float(x) for x in b) for b in self.noise_bands))


def ribbit_batch(values: np.ndarray, frequencies: np.ndarray, window_step_s: float,
                 species: list[RibbitParams] | RibbitParams) -> dict[str, np.ndarray]:
    """RIBBIT scores of many clips' spectrograms, for one or many species, in one pass.

    Each clip is scored on all of its windows, which equals
    ``calculate_pulse_score(spec.net_amplitude(signal_band, noise_bands), 1 / spec.window_step,
    pulse_rate_range)`` for the clip's :class:`~opso_core.spectrogram.Spectrogram` — and so
    ``ribbit(spec, ..., clip_duration=<clip length>, final_clip="full")`` on that clip alone.

    Parameters
    ----------
    values : numpy.ndarray, shape (n_clips, n_frequencies, n_times)
        Spectrogram values (dB) of equal-length clips.
    frequencies : numpy.ndarray, shape (n_frequencies,)
        Hz.
    window_step_s : float
        Seconds between consecutive windows.
    species : RibbitParams or list of RibbitParams

    Returns
    -------
    dict
        ``{species.name: scores}`` with scores of shape (n_clips,).
    """
    if isinstance(species, RibbitParams):
        species = [species]
    values = np.asarray(values)
    if values.ndim != 3 or values.shape[1] != len(frequencies):
        raise OpsoValueError(f"values must be (n_clips, n_frequencies={len(frequencies)}, n_times), "
                             f"got {values.shape}")
    sample_rate = 1.0 / window_step_s
    band_sums: dict[tuple[float, float], np.ndarray] = {}

    def band_amplitude(band):  # the same band sum is shared by species that use it
        if band not in band_sums:
            band_sums[band] = values[:, nearest_range(frequencies, *band), :].sum(axis=1, dtype=np.float64)
        return band_sums[band]

    out = {}
    for sp in species:
        net = band_amplitude(sp.signal_band) / (sp.signal_band[1] - sp.signal_band[0])
        if sp.noise_bands:
            total = sum(b[1] - b[0] for b in sp.noise_bands)
            for band in sp.noise_bands:
                net = net - band_amplitude(band) / total
            net = np.maximum(net, 0)
        out[sp.name] = _psd_max(net, sample_rate, sp.pulse_rate_range, sp.nfft)
    return out
