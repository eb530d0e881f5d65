"""Spectrogram and MelSpectrogram (``opensoundscape.spectrogram``): immutable containers.

``spectrogram`` has shape ``(n_frequencies, n_times)``; ``frequencies`` are bin centres (Hz) and
``times`` window centres (s from the start of the audio). Values are dB (``10 log10`` of the power,
clipped to ``decibel_limits``) unless made with ``dB_scale=False``.

For many equal-length clips at once, :func:`spectrograms_from_clips` gives the same numbers as
``Spectrogram.from_audio`` on each clip in one vectorised call.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from opso_core.errors import DimensionError, OpsoTypeError, OpsoValueError, missing_dependency
from opso_core.image_resize import resize_image
from opso_core.mel import mel_filter_bank, mel_frequencies
from opso_core.stft import (
    SpectrogramParams,
    power_to_db,
    spectrogram_batch,
    stft_power,
    window_times,
)
from opso_core.utils import linear_scale, min_max_scale

__all__ = ["MelSpectrogram", "Spectrogram", "SpectrogramParams", "nearest_range", "spectrograms_from_clips"]

_RETURN_TYPES = ("pil", "np", "torch")


def nearest_range(axis: np.ndarray, low, high) -> slice:
    """Slice from the element of ``axis`` nearest ``low`` to the one nearest ``high`` (inclusive).

    The selection rule of ``Spectrogram.trim`` (times) and ``Spectrogram.bandpass`` (frequencies),
    shared by RIBBIT's and the CNN stage's batch forms so they select the same rows.
    """
    axis = np.asarray(axis)
    lo = int(np.abs(axis - low).argmin())
    hi = int(np.abs(axis - high).argmin())
    return slice(lo, hi + 1)


class Spectrogram:
    """Immutable spectrogram container.

    Parameters
    ----------
    spectrogram : numpy.ndarray, shape (n_frequencies, n_times)
    frequencies : numpy.ndarray, shape (n_frequencies,)
        Hz.
    times : numpy.ndarray, shape (n_times,)
        Window centres, s.
    decibel_limits : (float, float)
        Range of the dB values.
    window_samples, overlap_samples : int, optional
        Window length and overlap (samples) used to make it.
    window_type : str, optional
    audio_sample_rate : int, optional
        Hz of the source audio.
    scaling : {"spectrum", "density"}, optional
    """

    __slots__ = ("spectrogram", "frequencies", "times", "decibel_limits", "window_samples",
                 "overlap_samples", "window_type", "audio_sample_rate", "scaling")

    def __init__(self, spectrogram, frequencies, times, decibel_limits, window_samples=None,
                 overlap_samples=None, window_type=None, audio_sample_rate=None, scaling=None):
        for name, value, ndim in (("spectrogram", spectrogram, 2), ("frequencies", frequencies, 1),
                                  ("times", times, 1)):
            if not isinstance(value, np.ndarray):
                raise OpsoTypeError(f"{name} must be a numpy array, got {type(value).__name__}")
            if value.ndim != ndim:
                raise DimensionError(f"{name} must be {ndim}-d, got shape {value.shape}")
        if spectrogram.shape != (frequencies.shape[0], times.shape[0]):
            raise DimensionError(
                f"shape mismatch: spectrogram {spectrogram.shape}, frequencies "
                f"{frequencies.shape}, times {times.shape} (need (n_frequencies, n_times))"
            )
        if decibel_limits is None or len(decibel_limits) != 2:
            raise DimensionError(f"decibel_limits must be (min_db, max_db), got {decibel_limits!r}")
        set_ = object.__setattr__
        set_(self, "spectrogram", spectrogram)
        set_(self, "frequencies", frequencies)
        set_(self, "times", times)
        set_(self, "decibel_limits", tuple(decibel_limits))
        set_(self, "window_samples", window_samples)
        set_(self, "overlap_samples", overlap_samples)
        set_(self, "window_type", window_type)
        set_(self, "audio_sample_rate", audio_sample_rate)
        set_(self, "scaling", scaling)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} objects are immutable (cannot set {name!r})")

    def __reduce__(self):
        return (self.__class__, tuple(getattr(self, k) for k in self.__slots__))

    def __repr__(self):
        return (f"<{type(self).__name__}(spectrogram={self.spectrogram.shape}, "
                f"frequencies={self.frequencies.shape}, times={self.times.shape})>")

    def _spawn(self, **kwargs):
        fields = {k: getattr(self, k) for k in self.__slots__}
        fields.update(kwargs)
        return self.__class__(**fields)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_audio(cls, audio, window_type="hann", window_samples=None, window_length_sec=None,
                   overlap_samples=None, overlap_fraction=None, fft_size=None,
                   decibel_limits=(-100, -20), dB_scale=True, scaling="spectrum"):
        """Spectrogram of an :class:`~opso_core.audio.Audio` object.

        The power equals ``scipy.signal.spectrogram`` with these settings; with ``dB_scale`` it is
        converted to ``10 log10(power)`` and clipped to ``decibel_limits``.

        Parameters
        ----------
        audio : Audio
        window_type : str
            Window name for ``scipy.signal.get_window``. [default: "hann"]
        window_samples : int, optional
            Samples per window; default 512. Exclusive with ``window_length_sec``.
        window_length_sec : float, optional
            Window length in seconds.
        overlap_samples : int, optional
            Samples shared by consecutive windows. Exclusive with ``overlap_fraction``.
        overlap_fraction : float, optional
            Overlap as a fraction of the window; default 0.5.
        fft_size : int, optional
            FFT length (``nfft``); default ``window_samples``.
        decibel_limits : (float, float)
            [default: (-100, -20)]
        dB_scale : bool
            [default: True]
        scaling : {"spectrum", "density"}
            [default: "spectrum"]

        Returns
        -------
        Spectrogram
            Shape ``(fft_size // 2 + 1, n_windows)``.
        """
        from opso_core.audio import Audio

        if not isinstance(audio, Audio):
            raise OpsoTypeError(f"from_audio expects an Audio object, got {type(audio).__name__}")
        params = SpectrogramParams.resolve(
            audio.sample_rate, window_type=window_type, window_samples=window_samples,
            window_length_sec=window_length_sec, overlap_samples=overlap_samples,
            overlap_fraction=overlap_fraction, fft_size=fft_size, decibel_limits=decibel_limits,
            dB_scale=dB_scale, scaling=scaling)
        return cls._from_samples(audio.samples, audio.sample_rate, params)

    @classmethod
    def _from_samples(cls, samples, sample_rate, params: SpectrogramParams):
        values, frequencies, times = spectrogram_batch(np.asarray(samples)[None, :], sample_rate, params)
        return cls(values[0], frequencies, times, params.decibel_limits,
                   window_samples=params.window_samples, overlap_samples=params.overlap_samples,
                   window_type=params.window_type, audio_sample_rate=sample_rate,
                   scaling=params.scaling)

    # ------------------------------------------------------------------ window geometry

    @property
    def window_length(self):
        """Length of one window in seconds (None if unknown)."""
        if self.window_samples and self.audio_sample_rate:
            return float(self.window_samples) / self.audio_sample_rate
        return None

    @property
    def window_step(self):
        """Seconds between the centres of consecutive windows (None if unknown)."""
        if self.window_samples and self.overlap_samples is not None and self.audio_sample_rate:
            return float(self.window_samples - self.overlap_samples) / self.audio_sample_rate
        if len(self.times) > 1:
            return float(self.times[1] - self.times[0])
        return None

    @property
    def window_start_times(self):
        """Start time (s) of each window, shape (n_times,)."""
        length = self.window_length
        if length is None:
            return None
        return np.asarray(self.times) - length / 2

    @property
    def duration(self) -> float:
        """Seconds covered by the windows (may be less than the audio: leftover samples are dropped)."""
        if len(self.times) == 0:
            return 0.0
        length = self.window_length
        if length is None:
            warnings.warn("window length unknown; approximating duration by the last window centre",
                          stacklevel=2)
            return float(self.times[-1])
        return float(self.times[-1] + length / 2)

    # ------------------------------------------------------------------ selection

    def trim(self, start_time, end_time):
        """Columns whose window centres are nearest ``start_time`` to nearest ``end_time`` (inclusive)."""
        if end_time < start_time:
            raise OpsoValueError(f"end_time ({end_time}) must not be before start_time ({start_time})")
        cols = nearest_range(self.times, start_time, end_time)
        return self._spawn(spectrogram=self.spectrogram[:, cols], times=self.times[cols])

    def bandpass(self, min_f, max_f, out_of_bounds_ok=True):
        """Rows from the bin nearest ``min_f`` to the bin nearest ``max_f`` Hz (inclusive).

        With ``out_of_bounds_ok=False``, a band reaching outside the spectrogram's frequencies
        raises :class:`~opso_core.errors.OpsoValueError`.
        """
        if min_f >= max_f:
            raise OpsoValueError(f"min_f must be less than max_f (got min_f={min_f}, max_f={max_f})")
        if not out_of_bounds_ok and (min_f < self.frequencies.min() or max_f > self.frequencies.max()):
            raise OpsoValueError(
                f"band [{min_f}, {max_f}] Hz reaches outside the spectrogram's frequencies "
                f"[{self.frequencies.min()}, {self.frequencies.max()}] Hz"
            )
        rows = nearest_range(self.frequencies, min_f, max_f)
        return self._spawn(spectrogram=self.spectrogram[rows, :], frequencies=self.frequencies[rows])

    # ------------------------------------------------------------------ values

    def limit_db_range(self, min_db=-100, max_db=-20):
        """Clip values to ``[min_db, max_db]`` (like Audacity's gain and range)."""
        if not max_db > min_db:
            raise OpsoValueError(f"max_db must be greater than min_db (got {min_db}, {max_db})")
        return self._spawn(spectrogram=np.clip(self.spectrogram, min_db, max_db))

    def linear_scale(self, feature_range=(0, 1)):
        """Map ``decibel_limits`` linearly onto ``feature_range``."""
        _check_feature_range(feature_range)
        return self._spawn(spectrogram=linear_scale(self.spectrogram, in_range=self.decibel_limits,
                                                    out_range=feature_range))

    def min_max_scale(self, feature_range=(0, 1)):
        """Map the minimum and maximum value linearly onto ``feature_range``."""
        _check_feature_range(feature_range)
        return self._spawn(spectrogram=min_max_scale(self.spectrogram, feature_range=feature_range))

    def amplitude(self, freq_range=None):
        """Sum of the values over frequency, per window: shape (n_times,).

        ``freq_range=[low, high]`` (Hz) sums only that band (see :meth:`bandpass`). Summed in
        float64, whatever the values' precision.
        """
        if freq_range is None:
            return np.sum(self.spectrogram, 0, dtype=np.float64)
        return np.sum(self.bandpass(freq_range[0], freq_range[1]).spectrogram, 0, dtype=np.float64)

    def net_amplitude(self, signal_band, reject_bands=None):
        """Amplitude in ``signal_band`` per Hz minus the amplitude in ``reject_bands`` per Hz.

        The signal band's amplitude is divided by its bandwidth; each reject band's amplitude by
        the total bandwidth of all reject bands. With reject bands, negative values are set to 0.

        Returns
        -------
        numpy.ndarray, shape (n_times,)
        """
        net = self.amplitude(signal_band) / (signal_band[1] - signal_band[0])
        if reject_bands is not None and len(reject_bands) > 0:
            reject_bands = np.asarray(reject_bands, dtype=float)
            total_bandwidth = float(np.sum(reject_bands[:, 1] - reject_bands[:, 0]))
            for band in reject_bands:
                net = net - self.amplitude(band) / total_bandwidth
            net = np.maximum(net, 0)
        return np.asarray(net)

    # ------------------------------------------------------------------ output

    def to_image(self, shape=None, channels=1, colormap=None, invert=False, return_type="pil"):
        """Image of the spectrogram: low frequencies at the bottom.

        Values are mapped linearly from ``decibel_limits`` to [0, 1] (clipped), so by default
        -20 dB (loud) is white and -100 dB (quiet) black; ``invert=True`` swaps them.

        Parameters
        ----------
        shape : (int, int), optional
            Output (height, width) in pixels; None (or a None entry) keeps that dimension.
        channels : int
            1 for greyscale, 3 for RGB (required with ``colormap``).
        colormap : str, optional
            A matplotlib colormap name such as "jet".
        invert : bool
        return_type : {"pil", "np", "torch"}

        Returns
        -------
        PIL.Image.Image, numpy.ndarray or torch.Tensor
            PIL image (h, w[, 3]) of uint8 in [0, 255]; or float32 array/tensor of shape
            (channels, h, w) with values in [0, 1].
        """
        if return_type not in _RETURN_TYPES:
            raise OpsoValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}")
        if int(channels) != channels or channels < 1:
            raise OpsoValueError(f"channels must be a whole number >= 1, got {channels}")
        if colormap is not None and channels != 3:
            raise OpsoValueError(f"channels must be 3 to use a colormap, got {channels}")
        array = linear_scale(self.spectrogram, in_range=self.decibel_limits, out_range=(0, 1))
        array = np.clip(array[::-1, :], 0, 1)
        if invert:
            array = 1 - array
        if colormap is not None:
            try:
                import matplotlib
            except ImportError as exc:
                raise missing_dependency("matplotlib", "plot") from exc
            array = matplotlib.colormaps[colormap](array)[:, :, :3]
        else:
            array = array[:, :, None]  # one channel: resized once, then repeated
        if shape is None:
            shape = array.shape[:2]
        shape = (array.shape[0] if shape[0] is None else int(shape[0]),
                 array.shape[1] if shape[1] is None else int(shape[1]))
        if tuple(shape) != array.shape[:2]:  # as 0.9.0's skimage.transform.resize (opso_core.image_resize)
            array = resize_image(array, shape)
        if colormap is None and channels > 1:
            array = np.repeat(array, channels, axis=2)

        if return_type == "pil":
            from PIL import Image

            pixels = (array * 255).astype(np.uint8)  # truncated, as 0.9.0's np.uint8(array * 255)
            return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
        chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
        if return_type == "np":
            return chw
        try:
            import torch
        except ImportError as exc:
            raise missing_dependency("torch", "ml") from exc
        return torch.from_numpy(chw)

    def plot(self, inline=True, fname=None, show_colorbar=False):
        """Plot with matplotlib (greyscale, dark = loud); ``fname`` saves the figure (.png/.pdf)."""
        plt = _pyplot()
        import matplotlib.colors

        norm = matplotlib.colors.Normalize(vmin=self.decibel_limits[0], vmax=self.decibel_limits[1])
        plt.pcolormesh(self.times, self.frequencies, self.spectrogram, shading="auto", cmap="Greys",
                       norm=norm)
        plt.xlabel("time (sec)")
        plt.ylabel("frequency (Hz)")
        if show_colorbar:
            plt.colorbar()
        _finish_plot(plt, inline, fname)


def _pyplot():
    try:
        from matplotlib import pyplot as plt
    except ImportError as exc:
        raise missing_dependency("matplotlib", "plot") from exc
    return plt


def _finish_plot(plt, inline, fname):
    if fname:
        plt.savefig(fname)
    if inline:
        import matplotlib

        if matplotlib.get_backend().lower() != "agg" and os.environ.get("MPLBACKEND", "").lower() != "agg":
            plt.show()


def _check_feature_range(feature_range):
    if len(feature_range) != 2:
        raise OpsoValueError(f"feature_range must be (low, high), got {feature_range!r}")
    if feature_range[1] < feature_range[0]:
        raise OpsoValueError(f"feature_range must be increasing, got {feature_range!r}")


class MelSpectrogram(Spectrogram):
    """Immutable mel spectrogram: rows are mel bands (pseudo-logarithmic frequency) instead of FFT bins.

    The linear power spectrogram (as :meth:`Spectrogram.from_audio`) is multiplied by a mel filter
    bank normalised so that its rows sum to 1 on average, then converted to dB.
    """

    @classmethod
    def from_audio(cls, audio, window_type="hann", window_samples=None, window_length_sec=None,
                   overlap_samples=None, overlap_fraction=None, fft_size=None,
                   decibel_limits=(-100, -20), dB_scale=True, scaling="spectrum", n_mels=64,
                   norm="slaney", htk=False):
        """Mel spectrogram of an Audio object.

        Parameters are those of :meth:`Spectrogram.from_audio`, plus:

        n_mels : int
            Number of mel bands. [default: 64] Values above about ``window_samples / 10`` give
            empty rows.
        norm : {"slaney", None} or number
            Mel filter normalisation (as librosa). [default: "slaney"]
        htk : bool
            HTK mel scale instead of Slaney's. [default: False]

        Returns
        -------
        MelSpectrogram
            Shape ``(n_mels, n_windows)``; ``frequencies`` are ``n_mels`` mel-spaced values from 0
            to ``sample_rate / 2`` Hz.
        """
        from opso_core.audio import Audio

        if not isinstance(audio, Audio):
            raise OpsoTypeError(f"from_audio expects an Audio object, got {type(audio).__name__}")
        params = SpectrogramParams.resolve(
            audio.sample_rate, window_type=window_type, window_samples=window_samples,
            window_length_sec=window_length_sec, overlap_samples=overlap_samples,
            overlap_fraction=overlap_fraction, fft_size=fft_size, decibel_limits=decibel_limits,
            dB_scale=dB_scale, scaling=scaling)
        power = stft_power(audio.samples, audio.sample_rate, params)
        bank = mel_filter_bank(audio.sample_rate, params.nfft, n_mels=n_mels, htk=htk, norm=norm)
        bank = bank / np.sum(bank, 1).mean()
        mel = bank @ power
        values = power_to_db(mel, params.decibel_limits) if dB_scale else mel
        return cls(values, mel_frequencies(n_mels, fmin=0, fmax=audio.sample_rate / 2, htk=htk),
                   window_times(params, len(audio.samples), audio.sample_rate), params.decibel_limits,
                   window_samples=params.window_samples, overlap_samples=params.overlap_samples,
                   window_type=params.window_type, audio_sample_rate=audio.sample_rate,
                   scaling=params.scaling)

    def plot(self, inline=True, fname=None, show_colorbar=False):
        """Plot with the mel rows evenly spaced (imshow), labelled with their frequencies."""
        plt = _pyplot()
        import matplotlib.colors

        norm = matplotlib.colors.Normalize(vmin=self.decibel_limits[0], vmax=self.decibel_limits[1])
        plt.imshow(self.spectrogram[::-1], cmap="Greys", norm=norm, aspect="auto")
        yvals = self.frequencies.round(-2).astype(int)
        y_idx = np.linspace(0, len(yvals) - 1, min(8, len(yvals))).astype(int)
        plt.yticks(len(yvals) - 1 - y_idx, yvals[y_idx])
        if len(self.times):
            x_idx = np.linspace(0, len(self.times) - 1, min(6, len(self.times))).astype(int)
            plt.xticks(x_idx, self.times.round(2)[x_idx])
        plt.ylabel("frequency (Hz): mel scale")
        plt.xlabel("time (sec)")
        if show_colorbar:
            plt.colorbar()
        _finish_plot(plt, inline, fname)


def spectrograms_from_clips(samples, sample_rate, params: SpectrogramParams | None = None, workers=None,
                            dtype=np.float32, **from_audio_kwargs):
    """Spectrograms of many equal-length clips in one vectorised call.

    Gives the same values as ``Spectrogram.from_audio(Audio(clip, sample_rate), **kwargs)`` for
    each row (computed by the same code), without a Python loop over clips.

    Parameters
    ----------
    samples : numpy.ndarray of shape (n_clips, n_samples), or a sequence of Audio or 1-D arrays
        The clips, all of the same length: a 2-D array, or what ``Audio.split`` returns (its list
        of clips), which is stacked here.
    sample_rate : int
        Hz; every Audio in ``samples`` must have this rate.
    params : SpectrogramParams, optional
        Resolved settings; otherwise ``from_audio_kwargs`` (``window_samples``,
        ``overlap_fraction``, ``decibel_limits``, ...) are resolved as ``from_audio`` does.
    workers : int, optional
        FFT threads.
    dtype : numpy dtype
        Output dtype. [default: float32]

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        ``values`` (n_clips, n_frequencies, n_times), ``frequencies`` (Hz), ``times`` (s).
    """
    if params is None:
        params = SpectrogramParams.resolve(sample_rate, **from_audio_kwargs)
    elif from_audio_kwargs:
        raise OpsoValueError("give either params or from_audio keyword arguments, not both")
    return spectrogram_batch(_clip_array(samples, sample_rate), sample_rate, params, workers=workers, dtype=dtype)


def _clip_array(samples, sample_rate) -> np.ndarray:
    """``samples`` as a 2-D array (n_clips, n_samples): a list of Audio or of 1-D arrays is stacked."""
    if isinstance(samples, np.ndarray):
        if samples.ndim != 2:
            raise OpsoValueError(f"samples must be a 2-D array (n_clips, n_samples) or a list of clips; got an array "
                                 f"of shape {samples.shape}")
        return samples
    clips = []
    for i, clip in enumerate(samples):
        if hasattr(clip, "samples") and hasattr(clip, "sample_rate"):
            if clip.sample_rate != sample_rate:
                raise OpsoValueError(f"clip {i} has sample rate {clip.sample_rate} Hz, not {sample_rate} Hz")
            clip = clip.samples
        clips.append(np.asarray(clip))
    if not clips:
        raise OpsoValueError("no clips given")
    lengths = sorted({len(c) for c in clips})
    if any(c.ndim != 1 for c in clips) or len(lengths) > 1:
        raise OpsoValueError(f"clips must be 1-D and of one length; got lengths {lengths[0]}..{lengths[-1]} samples "
                             "(Audio.split's last clip is shorter unless final_clip='full' or 'extend': drop it, "
                             "or split with one of those)")
    return np.stack(clips)
