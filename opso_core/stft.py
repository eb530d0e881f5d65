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

from opso_core.errors import OpsoValueError

__all__ = ["SpectrogramParams", "power_to_db", "spectrogram_batch", "stft_power", "welch_psd", "window_times"]

DEFAULT_WINDOW_SAMPLES = 512
DEFAULT_OVERLAP_FRACTION = 0.5
# values per block in spectrogram_batch: 512 kB of float64 frames, so a block's work stays in L2 cache
_BLOCK_VALUES = 1 << 16
#: dB per neper of power: 10 log10(p) = DB_PER_NEPER * ln(p) (the natural log is the fast one)
DB_PER_NEPER = 10.0 / np.log(10.0)


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


# windows computed here exactly as scipy.signal.get_window does (periodic, "fftbins=True"), so that
# the common case needs no import of scipy.signal (about a second in every worker process)
_COSINE_WINDOWS = {"hann": (0.5, 1.0 - 0.5), "hamming": (0.54, 1.0 - 0.54)}


def _periodic_cosine_window(coefficients, n: int) -> np.ndarray:
    """scipy.signal.windows.general_cosine(n + 1, coefficients)[:-1], the same operations in the same order."""
    if n <= 1:
        return np.ones(n)
    fac = np.linspace(-np.pi, np.pi, n + 1, dtype=np.float64)
    win = np.zeros(n + 1, dtype=np.float64)
    for k, a in enumerate(np.asarray(coefficients, dtype=np.float64)):
        win += a * np.cos(k * fac)
    return win[:-1]


@lru_cache(maxsize=32)
def _window(window_type, n: int) -> np.ndarray:
    if isinstance(window_type, str) and window_type in _COSINE_WINDOWS:
        win = _periodic_cosine_window(_COSINE_WINDOWS[window_type], n)
    else:
        import scipy.signal  # here, not at import: scipy.signal takes a second to import

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


def _values_dtype(samples: np.ndarray):
    """float32 values for float32 (or integer PCM) audio, as OpenSoundscape returns; float64 for float64."""
    return np.float64 if samples.dtype == np.float64 else np.float32


def _frame_blocks(n_clips: int, n_times: int, values_per_frame: int):
    """(clip_start, clip_stop, time_start, time_stop) blocks of about :data:`_BLOCK_VALUES` values:
    several whole clips per block for short clips, slices of one clip for long recordings."""
    frames_per_block = max(1, _BLOCK_VALUES // values_per_frame)
    if n_times >= frames_per_block:
        for c in range(n_clips):
            for t0 in range(0, n_times, frames_per_block):
                yield c, c + 1, t0, min(t0 + frames_per_block, n_times)
    else:
        clips_per_block = max(1, frames_per_block // max(1, n_times))
        for c0 in range(0, n_clips, clips_per_block):
            yield c0, min(c0 + clips_per_block, n_clips), 0, n_times


@lru_cache(maxsize=32)
def transform_constants(params: SpectrogramParams, sample_rate: float):
    """Window ``(window_samples,)``, the window's rFFT at its non-negligible bins, those bins' indices, and
    the per-bin power scale ``(n_frequencies,)`` (scipy's one-sided "spectrum"/"density" scaling), all
    float64 numpy arrays (cached; do not modify)."""
    win, win_spectrum, win_bins = _window_and_spectrum(params.window_type, params.window_samples, params.nfft)
    return win, win_spectrum, win_bins, _one_sided_scale(params, sample_rate, win)


class _Workspace:
    """Buffers for one block of frames, allocated once per call and reused for every block.

    Allocating a block's arrays afresh each time (0.5 MB apiece) makes glibc map, zero and unmap
    memory on every block: the first whole-file spectrogram of a process took 2.5x as long (130,000
    page faults). With these buffers a call allocates only its output.
    """

    def __init__(self, n_rows: int, params: SpectrogramParams, values_dtype):
        n_freq = params.n_frequencies()
        self.windowed = np.empty((n_rows, params.window_samples), dtype=np.float64)
        self.spectrum = np.empty((n_rows, n_freq), dtype=np.complex128)
        self.power = np.empty((n_rows, n_freq), dtype=np.float64)
        self.scratch = np.empty((n_rows, n_freq), dtype=np.float64)
        self.values = np.empty((n_rows, n_freq), dtype=values_dtype) if values_dtype != np.float64 else None


def _block_power(frames: np.ndarray, params: SpectrogramParams, sample_rate, workers,
                 workspace: _Workspace | None = None) -> np.ndarray:
    """Power of a block of frames ``(..., n_frames, window_samples)`` -> ``(..., n_frames, n_frequencies)``,
    float64. The transform runs in float64 whatever the audio's precision: float32 FFTs would put
    rounding noise of ~1e-3 dB into bins 60 dB below a frame's loudest. With a ``workspace`` the
    result is a view of its buffer (valid until the next block)."""
    win, win_spectrum, win_bins, scale = transform_constants(params, float(sample_rate))
    shape = frames.shape[:-1]
    n_rows = int(np.prod(shape))
    # detrend="constant" (as scipy): FFT(w * (x - mean)) = FFT(w * x) - mean * FFT(w), and FFT(w) is
    # non-zero in only a few bins for the usual windows, so subtract it there instead of from every sample
    means = frames.mean(axis=-1, dtype=np.float64).reshape(n_rows)
    if workspace is None or workers not in (None, 1):
        import scipy.fft  # threads for the FFT: scipy's ``workers``

        windowed = np.multiply(frames, win, dtype=np.float64).reshape(n_rows, -1)
        spectrum = scipy.fft.rfft(windowed, n=params.nfft, axis=-1, workers=workers)
        power, scratch = np.empty(spectrum.shape), np.empty(spectrum.shape)
    else:
        windowed = workspace.windowed[:n_rows]
        np.multiply(frames, win, out=windowed.reshape(*shape, -1))
        spectrum = np.fft.rfft(windowed, n=params.nfft, axis=-1, out=workspace.spectrum[:n_rows])
        power, scratch = workspace.power[:n_rows], workspace.scratch[:n_rows]
    spectrum[:, win_bins] -= means[:, None] * win_spectrum
    np.square(spectrum.real, out=power)
    power += np.square(spectrum.imag, out=scratch)
    power *= scale
    return power.reshape(*shape, -1)


def stft_power(samples: np.ndarray, sample_rate, params: SpectrogramParams, workers=None) -> np.ndarray:
    """Linear power of the short-time Fourier transform.

    Parameters
    ----------
    samples : numpy.ndarray, shape (..., n_samples)
        One clip or a batch of equal-length clips. The transform runs in float64; the power is
        returned in float32 for float32 (or integer) audio, as OpenSoundscape returns it, and in
        float64 for float64 audio.
    sample_rate : float
        Hz (used for ``scaling="density"``).
    params : SpectrogramParams
    workers : int, optional
        Threads for the FFT (``scipy.fft``'s ``workers``).

    Returns
    -------
    numpy.ndarray, shape (..., n_frequencies, n_times)
    """
    samples = np.asarray(samples)
    _check_length(samples.shape[-1], params)
    power = _block_power(_frames(samples, params), params, sample_rate, workers)
    return np.swapaxes(power.astype(_values_dtype(samples), copy=False), -1, -2)


def _check_length(n_samples: int, params: SpectrogramParams) -> None:
    if n_samples < params.window_samples:
        raise OpsoValueError(
            f"audio of {n_samples} samples is shorter than one spectrogram window "
            f"({params.window_samples} samples); use a shorter window or longer audio"
        )


def _frames(samples: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """A view ``(..., n_times, window_samples)`` of the windows of ``samples``; no copy."""
    n_times = params.n_times(samples.shape[-1])
    frames = np.lib.stride_tricks.sliding_window_view(samples, params.window_samples, axis=-1)
    return frames[..., : n_times * params.step_samples : params.step_samples, :]


def power_to_db(power: np.ndarray, decibel_limits, out=None, dtype=None) -> np.ndarray:
    """``10 log10(power)`` clipped to ``decibel_limits``; zero power maps to the lower limit.

    Computed in ``dtype`` (default: ``power``'s own precision); ``out`` may be ``power`` itself.
    """
    with np.errstate(divide="ignore"):
        db = np.log(power, out=out, dtype=dtype)  # natural log: SIMD-vectorised where log10 is not (4x faster)
    db *= DB_PER_NEPER
    return np.clip(db, decibel_limits[0], decibel_limits[1], out=db)


def spectrogram_batch(samples: np.ndarray, sample_rate, params: SpectrogramParams, workers=None, dtype=None):
    """Spectrograms of a batch of equal-length clips, in one vectorised call.

    Frames are transformed in cache-sized blocks (several short clips, or a slice of a long
    recording, at a time), so the numbers are the same for a clip alone or in any batch.

    Parameters
    ----------
    samples : numpy.ndarray, shape (n_clips, n_samples)
        The transform runs in float64 for any audio; values are float32 for float32 (or integer)
        audio, as OpenSoundscape returns them, float64 for float64 audio (see ``dtype``).
    sample_rate : float
        Hz.
    params : SpectrogramParams
    workers : int, optional
        FFT threads.
    dtype : numpy dtype, optional
        dtype of the returned values; default: the precision of the transform.

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
    _check_length(n_samples, params)
    dtype = np.dtype(dtype or _values_dtype(samples))
    n_times = params.n_times(n_samples)
    values = np.empty((n_clips, params.n_frequencies(), n_times), dtype=dtype)
    frames = _frames(samples, params)
    blocks = list(_frame_blocks(n_clips, n_times, max(params.nfft, params.window_samples)))
    rows = max((c1 - c0) * (t1 - t0) for c0, c1, t0, t1 in blocks) if blocks else 0
    workspace = _Workspace(rows, params, dtype if dtype.kind == "f" else np.float64)
    for c0, c1, t0, t1 in blocks:
        power = _block_power(frames[c0:c1, t0:t1], params, sample_rate, workers, workspace)
        if params.dB_scale:  # the log in the values' precision (float32 is 3x faster), into a reused buffer
            if workspace.values is None:
                power = power_to_db(power, params.decibel_limits, out=power)
            else:
                out = workspace.values[: power.size // power.shape[-1]].reshape(power.shape)
                power = power_to_db(power, params.decibel_limits, out=out, dtype=dtype)
        values[c0:c1, :, t0:t1] = np.swapaxes(power, -1, -2)
    return values, params.frequencies(sample_rate), window_times(params, n_samples, sample_rate)


def welch_psd(x, sample_rate, nperseg=256, nfft=None):
    """Welch's power spectral density along the last axis, as ``scipy.signal.welch`` computes it.

    Hann window, ``noverlap = nperseg // 2``, each segment's mean removed, one-sided density
    scaling, segments averaged with the mean: the defaults of ``scipy.signal.welch``, without
    importing ``scipy.signal`` (a second in every worker process).

    Parameters
    ----------
    x : array-like, shape (..., n)
    sample_rate : float
        Hz.
    nperseg : int
        Samples per segment; at most ``n``.
    nfft : int, optional
        FFT length (``>= nperseg``); default ``nperseg``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Frequencies (Hz), shape (nfft // 2 + 1,), and the density, shape (..., nfft // 2 + 1).
    """
    import scipy.fft

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    if not 1 <= nperseg <= n:
        raise OpsoValueError(f"nperseg must be between 1 and the series' length {n}, got {nperseg}")
    nfft = int(nfft or nperseg)
    if nfft < nperseg:
        raise OpsoValueError(f"nfft ({nfft}) must be >= nperseg ({nperseg})")
    step = nperseg - nperseg // 2
    n_segments = (n - nperseg) // step + 1
    segments = np.lib.stride_tricks.sliding_window_view(x, nperseg, axis=-1)[..., : n_segments * step : step, :]
    segments = segments - segments.mean(axis=-1, keepdims=True)
    win = _window("hann", nperseg)
    spectrum = scipy.fft.rfft(segments * win, n=nfft, axis=-1)
    psd = (np.conjugate(spectrum) * spectrum).real
    psd *= 1.0 / (float(sample_rate) * (win * win).sum())
    if nfft % 2:
        psd[..., 1:] *= 2
    else:
        psd[..., 1:-1] *= 2
    return np.fft.rfftfreq(nfft, 1.0 / float(sample_rate)), psd.mean(axis=-2)
