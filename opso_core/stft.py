"""The one short-time Fourier transform behind every spectrogram in opso.

:class:`SpectrogramParams` resolves OpenSoundscape's spectrogram arguments once (window, overlap,
FFT size, scaling, dB limits); :func:`spectrogram_batch` turns a batch of equal-length clips
``(n_clips, n_samples)`` into ``(n_clips, n_frequencies, n_times)`` in one vectorised FFT call.
:meth:`opso_core.spectrogram.Spectrogram.from_audio` is this function applied to a batch of one,
so the per-clip and batch paths give identical numbers. The power equals
``scipy.signal.spectrogram(x, fs, window, nperseg, noverlap, nfft, detrend="constant",
scaling=...)`` computed in float64.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal

from opso_core.errors import OpsoValueError

__all__ = ["SpectrogramParams", "power_to_db", "spectrogram_batch", "stft_power", "window_times"]

DEFAULT_WINDOW_SAMPLES = 512
DEFAULT_OVERLAP_FRACTION = 0.5
# frames per block in spectrogram_batch: about 2 MB of float64, so a block stays in a core's cache
_BLOCK_VALUES = 1 << 18


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SpectrogramParams:
    """Resolved spectrogram settings (hashable, so they can name outputs and Dask tasks).

    Attributes
    ----------
    window_samples : int
        Samples per FFT window.
    overlap_samples : int
        Samples shared by consecutive windows (0 <= overlap < window).
    fft_size : int or None
        FFT length (zero-padding); None means ``window_samples``.
    window_type : str
        Window name understood by ``scipy.signal.get_window`` (e.g. "hann").
    decibel_limits : (float, float)
        dB values are clipped to this range.
    dB_scale : bool
        If False, values stay as linear power and ``decibel_limits`` is ignored.
    scaling : {"spectrum", "density"}
        Power spectrum (V**2) or power spectral density (V**2/Hz).
    """

    window_samples: int = DEFAULT_WINDOW_SAMPLES
    overlap_samples: int = DEFAULT_WINDOW_SAMPLES // 2
    fft_size: int | None = None
    window_type: str = "hann"
    decibel_limits: tuple[float, float] = (-100.0, -20.0)
    dB_scale: bool = True
    scaling: str = "spectrum"

    def __post_init__(self):
        if int(self.window_samples) != self.window_samples or self.window_samples < 1:
            raise OpsoValueError(f"window_samples must be a whole number >= 1, got {self.window_samples}")
        if not 0 <= self.overlap_samples < self.window_samples:
            raise OpsoValueError(
                f"overlap_samples must be >= 0 and < window_samples ({self.window_samples}), "
                f"got {self.overlap_samples}"
            )
        if self.fft_size is not None and self.fft_size < self.window_samples:
            raise OpsoValueError(
                f"fft_size ({self.fft_size}) must be >= window_samples ({self.window_samples})"
            )
        if self.scaling not in ("spectrum", "density"):
            raise OpsoValueError(f"scaling must be 'spectrum' or 'density', got {self.scaling!r}")
        if len(self.decibel_limits) != 2 or not self.decibel_limits[0] < self.decibel_limits[1]:
            raise OpsoValueError(f"decibel_limits must be (min_db, max_db) with min < max, "
                                 f"got {self.decibel_limits!r}")
        try:
            _window(self.window_type, self.window_samples)
        except ValueError as exc:
            raise OpsoValueError(f"unknown window_type {self.window_type!r}: {exc}") from exc
        object.__setattr__(self, "window_samples", int(self.window_samples))
        object.__setattr__(self, "overlap_samples", int(self.overlap_samples))
        object.__setattr__(self, "decibel_limits", tuple(float(x) for x in self.decibel_limits))

    @classmethod
    def resolve(
        cls,
        sample_rate,
        window_type="hann",
        window_samples=None,
        window_length_sec=None,
        overlap_samples=None,
        overlap_fraction=None,
        fft_size=None,
        decibel_limits=(-100, -20),
        dB_scale=True,
        scaling="spectrum",
    ) -> SpectrogramParams:
        """Resolve ``Spectrogram.from_audio``'s arguments for audio at ``sample_rate`` Hz.

        Defaults: 512-sample windows and 50 % overlap. ``window_samples`` and
        ``window_length_sec`` are exclusive, as are ``overlap_samples`` and ``overlap_fraction``.
        """
        if window_samples is not None and window_length_sec is not None:
            raise OpsoValueError("give window_samples or window_length_sec, not both")
        if window_length_sec is not None:
            window_samples = int(sample_rate * window_length_sec)
        elif window_samples is None:
            window_samples = DEFAULT_WINDOW_SAMPLES
        if overlap_samples is not None and overlap_fraction is not None:
            raise OpsoValueError("give overlap_samples or overlap_fraction, not both")
        if overlap_fraction is not None:
            if not 0 <= overlap_fraction < 1:
                raise OpsoValueError(f"overlap_fraction must be >= 0 and < 1, got {overlap_fraction}")
            overlap_samples = int(window_samples * overlap_fraction)
        elif overlap_samples is None:
            overlap_samples = int(window_samples * DEFAULT_OVERLAP_FRACTION)
        return cls(window_samples=window_samples, overlap_samples=overlap_samples, fft_size=fft_size,
                   window_type=window_type, decibel_limits=tuple(decibel_limits), dB_scale=dB_scale,
                   scaling=scaling)

    @property
    def step_samples(self) -> int:
        """Samples between the starts of consecutive windows."""
        return self.window_samples - self.overlap_samples

    @property
    def nfft(self) -> int:
        return self.fft_size or self.window_samples

    def n_times(self, n_samples: int) -> int:
        """Number of windows (spectrogram columns) for ``n_samples`` of audio."""
        if n_samples < self.window_samples:
            return 0
        return (n_samples - self.window_samples) // self.step_samples + 1

    def n_frequencies(self) -> int:
        return self.nfft // 2 + 1

    def frequencies(self, sample_rate) -> np.ndarray:
        """Bin frequencies in Hz, shape (n_frequencies,)."""
        return np.fft.rfftfreq(self.nfft, d=1.0 / sample_rate)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@lru_cache(maxsize=32)
def _window(window_type, n: int) -> np.ndarray:
    win = scipy.signal.get_window(window_type, n)
    win.setflags(write=False)
    return win


@lru_cache(maxsize=32)
def _window_and_spectrum(window_type, n: int, nfft: int):
    """The window, its rFFT at the bins where it is not negligible, and those bins' indices."""
    win = _window(window_type, n)
    full = np.fft.rfft(win, n=nfft)
    bins = np.flatnonzero(np.abs(full) > 1e-13 * np.abs(full).max())
    return win, full[bins], bins


def _one_sided_scale(params: SpectrogramParams, sample_rate: float, win: np.ndarray) -> np.ndarray:
    """Per-bin factor: scipy's "spectrum"/"density" scaling, doubled for all bins but DC (and Nyquist)."""
    if params.scaling == "spectrum":
        base = 1.0 / win.sum() ** 2
    else:
        base = 1.0 / (sample_rate * (win * win).sum())
    scale = np.full(params.n_frequencies(), 2.0 * base)
    scale[0] = base
    if params.nfft % 2 == 0:
        scale[-1] = base
    return scale


def window_times(params: SpectrogramParams, n_samples: int, sample_rate) -> np.ndarray:
    """Centre time (s) of each window, shape (n_times,) — ``scipy.signal.spectrogram``'s ``t``."""
    n = params.n_times(n_samples)
    return (np.arange(n) * params.step_samples + params.window_samples / 2) / float(sample_rate)


def stft_power(samples: np.ndarray, sample_rate, params: SpectrogramParams, workers=None) -> np.ndarray:
    """Linear power of the short-time Fourier transform.

    Parameters
    ----------
    samples : numpy.ndarray, shape (..., n_samples)
        One clip or a batch of equal-length clips.
    sample_rate : float
        Hz (used for ``scaling="density"``).
    params : SpectrogramParams
    workers : int, optional
        Threads for the FFT (``scipy.fft``'s ``workers``).

    Returns
    -------
    numpy.ndarray, shape (..., n_frequencies, n_times), float64
    """
    samples = np.asarray(samples)
    n_samples = samples.shape[-1]
    if n_samples < params.window_samples:
        raise OpsoValueError(
            f"audio of {n_samples} samples is shorter than one spectrogram window "
            f"({params.window_samples} samples); use a shorter window or longer audio"
        )
    n_times = params.n_times(n_samples)
    frames = np.lib.stride_tricks.sliding_window_view(samples, params.window_samples, axis=-1)
    frames = frames[..., : n_times * params.step_samples : params.step_samples, :]  # a view
    win, win_spectrum, win_bins = _window_and_spectrum(params.window_type, params.window_samples, params.nfft)
    # detrend="constant" (as scipy): FFT(w * (x - mean)) = FFT(w * x) - mean * FFT(w), and FFT(w) is
    # non-zero in only a few bins for the usual windows, so subtract it there instead of from every sample
    means = frames.mean(axis=-1, dtype=np.float64)
    spectrum = scipy.fft.rfft(np.multiply(frames, win, dtype=np.float64), n=params.nfft, axis=-1,
                              workers=workers)
    spectrum[..., win_bins] -= means[..., None] * win_spectrum
    power = np.abs(spectrum)
    power *= power
    power *= _one_sided_scale(params, float(sample_rate), win)
    return np.swapaxes(power, -1, -2)


def power_to_db(power: np.ndarray, decibel_limits) -> np.ndarray:
    """``10 log10(power)`` clipped to ``decibel_limits``; zero power maps to the lower limit."""
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(power, where=power > 0, out=np.full(power.shape, -np.inf))
    return np.clip(db, decibel_limits[0], decibel_limits[1], out=db)


def spectrogram_batch(samples: np.ndarray, sample_rate, params: SpectrogramParams, workers=None,
                      dtype=np.float64):
    """Spectrograms of a batch of equal-length clips, in one vectorised call.

    Parameters
    ----------
    samples : numpy.ndarray, shape (n_clips, n_samples)
    sample_rate : float
        Hz.
    params : SpectrogramParams
    workers : int, optional
        FFT threads.
    dtype : numpy dtype
        dtype of the returned values (float32 halves storage).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        ``values`` (n_clips, n_frequencies, n_times) in dB (or linear power if not ``dB_scale``),
        ``frequencies`` (Hz) and ``times`` (s, window centres from the clip start).
    """
    samples = np.asarray(samples)
    if samples.ndim != 2:
        raise OpsoValueError(f"samples must have shape (n_clips, n_samples), got {samples.shape}")
    n_clips, n_samples = samples.shape
    n_times = params.n_times(n_samples)
    values = np.empty((n_clips, params.n_frequencies(), n_times), dtype=dtype)
    # work through the batch in blocks whose frames fit in cache: same numbers, fewer trips to memory
    block = max(1, _BLOCK_VALUES // max(1, n_times * params.nfft))
    for i in range(0, n_clips, block):
        power = stft_power(samples[i : i + block], sample_rate, params, workers=workers)
        values[i : i + block] = power_to_db(power, params.decibel_limits) if params.dB_scale else power
    return values, params.frequencies(sample_rate), window_times(params, n_samples, sample_rate)
