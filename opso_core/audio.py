"""Audio: an immutable container of mono samples and their sample rate (``opensoundscape.audio``).

Methods return new objects ("out of place")::

    audio = Audio.from_file("rec.wav", offset=2.0, duration=1.0)   # seeks, does not decode the file
    audio = audio.resample(22050)                                   # assign the result!

Differences from OpenSoundscape 0.9.0, all deliberate:

- a WAV file whose header declares more frames than it holds (a cut-short recording) warns
  (:class:`~opso_core.errors.TruncatedAudioWarning`) or raises, instead of loading short silently;
- a multi-channel file is mixed down with a :class:`~opso_core.errors.MixdownWarning` (use
  :func:`load_channels_as_audio` for separate channels);
- ``normalize()`` with no arguments scales the peak to 1.0 as documented (0.9.0 returned silence);
- any fsspec URL (``s3://...``) works where a path does, with ``storage_options``.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from opso_core.aru import audiomoth_start_time, parse_audiomoth_metadata
from opso_core.audio_info import AudioFileInfo, audio_file_info
from opso_core.errors import (
    AudioFormatError,
    AudioOutOfBoundsError,
    AudioReadError,
    MissingDependencyError,
    MixdownWarning,
    OpsoAssertionError,
    OpsoTypeError,
    OpsoTypeValueError,
    OpsoValueError,
    OutOfBoundsWarning,
    ParseError,
    TruncatedAudioError,
    TruncatedAudioWarning,
    missing_dependency,
)
from opso_core.signal_processing import tdoa
from opso_core.storage import is_local, local_path, open_binary
from opso_core.utils import generate_clip_times_df

__all__ = [
    "DEFAULT_RESAMPLE_TYPE",
    "RESAMPLE_TYPES",
    "Audio",
    "AudioOutOfBoundsError",
    "OpsoLoadAudioInputError",
    "bandpass_filter",
    "butter_bandpass",
    "clipping_detector",
    "concat",
    "estimate_delay",
    "generate_opso_metadata_str",
    "load_channels_as_audio",
    "load_clips",
    "mix",
    "parse_opso_metadata",
    "resample_samples",
]

DEFAULT_RESAMPLE_TYPE = "soxr_hq"

_SOXR_QUALITIES = {"soxr_qq": "QQ", "soxr_lq": "LQ", "soxr_mq": "MQ", "soxr_hq": "HQ", "soxr_vhq": "VHQ"}
# resampy's Kaiser filters are approximated by a polyphase filter with a Kaiser window
_POLYPHASE_WINDOWS = {"polyphase": ("kaiser", 5.0), "kaiser_fast": ("kaiser", 9.0),
                      "kaiser_best": ("kaiser", 14.769656459379492)}
#: Accepted values of ``resample_type``.
RESAMPLE_TYPES = (*_SOXR_QUALITIES, *_POLYPHASE_WINDOWS, "fft", "scipy")

_OUT_OF_BOUNDS_MODES = ("warn", "raise", "ignore")
_TRUNCATED_MODES = ("warn", "raise", "ignore")
_OPSO_METADATA_PREFIX = "opso_metadata"


class OpsoMetadata(dict):
    """The metadata read from an opso_metadata comment: a plain dict, except that
    ``metadata["opensoundscape_version"]``, the key 0.9.0 writes its own version under, gives the
    ``opso_core_version`` that wrote the file, so code ported by changing its imports reads what it
    read before. The key is not stored (the dictionary compares equal to what was saved)."""

    def __missing__(self, key):
        if key == "opensoundscape_version" and "opso_core_version" in self:
            return self["opso_core_version"]
        raise KeyError(key)
# samples that differ from an integer sample index by less than this are that index (float error)
_SAMPLE_INDEX_TOLERANCE = 1e-6


class OpsoLoadAudioInputError(AudioReadError):
    """The input given to an Audio loader cannot be loaded (kept for OpenSoundscape compatibility)."""


def resample_samples(samples: np.ndarray, from_hz: int, to_hz: int, resample_type=DEFAULT_RESAMPLE_TYPE):
    """Resample a 1-d or (frames, channels) array from ``from_hz`` to ``to_hz``.

    Parameters
    ----------
    samples : numpy.ndarray, shape (n,) or (n, channels)
    from_hz, to_hz : int
        Sample rates in Hz.
    resample_type : str
        ``"soxr_hq"`` (default; also ``soxr_vhq``, ``soxr_mq``, ``soxr_lq``, ``soxr_qq``),
        ``"polyphase"``, ``"kaiser_best"``, ``"kaiser_fast"`` (scipy polyphase filters with a Kaiser
        window) or ``"fft"``/``"scipy"`` (``scipy.signal.resample``).

    Returns
    -------
    numpy.ndarray
        About ``n * to_hz / from_hz`` frames, same dtype as ``samples``.
    """
    if resample_type not in RESAMPLE_TYPES:
        raise OpsoValueError(f"resample_type must be one of {RESAMPLE_TYPES}, got {resample_type!r}")
    from_hz, to_hz = int(from_hz), int(to_hz)
    if from_hz <= 0 or to_hz <= 0:
        raise OpsoValueError(f"sample rates must be positive, got {from_hz} -> {to_hz} Hz")
    if from_hz == to_hz or len(samples) == 0:
        return np.array(samples, copy=True)
    dtype = samples.dtype if np.issubdtype(samples.dtype, np.floating) else np.float32
    if resample_type in _SOXR_QUALITIES:
        import soxr

        out = soxr.resample(np.ascontiguousarray(samples, dtype=np.float64 if dtype == np.float64
                                                 else np.float32), from_hz, to_hz,
                            quality=_SOXR_QUALITIES[resample_type])
    elif resample_type in _POLYPHASE_WINDOWS:
        g = math.gcd(from_hz, to_hz)
        from scipy.signal import resample_poly

        out = resample_poly(samples, to_hz // g, from_hz // g, axis=0,
                            window=_POLYPHASE_WINDOWS[resample_type])
    else:
        from scipy.signal import resample

        out = resample(samples, int(round(len(samples) * to_hz / from_hz)), axis=0)
    return np.asarray(out, dtype=dtype)


def _sample_index(time_s: float, sample_rate: int) -> int:
    """Index of the sample at ``time_s`` (rounded down, tolerant to float error such as 2.3*32000)."""
    exact = time_s * sample_rate
    nearest = round(exact)
    if abs(exact - nearest) < _SAMPLE_INDEX_TOLERANCE:
        return int(nearest)
    return int(math.floor(exact))


def _json_safe(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def generate_opso_metadata_str(metadata_dictionary: dict, version="v0.1") -> str:
    """Serialise an ``Audio.metadata`` dictionary into the comment-tag string ``opso_metadata{json}``.

    ``recording_start_time`` (an aware datetime) is stored in ISO format. See
    :func:`parse_opso_metadata` for the inverse.
    """
    if version != "v0.1":
        raise OpsoValueError(f"opso_metadata version {version!r} is not implemented (use 'v0.1')")
    from opso_core import __version__

    metadata = dict(metadata_dictionary)
    metadata["opso_metadata_version"] = version
    metadata["opso_core_version"] = __version__
    return _OPSO_METADATA_PREFIX + json.dumps(_json_safe(metadata))


def parse_opso_metadata(comment_string: str) -> dict:
    """Parse a comment tag written by :func:`generate_opso_metadata_str` back into a dictionary."""
    if not comment_string.startswith(_OPSO_METADATA_PREFIX):
        raise ParseError("comment string does not begin with 'opso_metadata'")
    try:
        metadata = json.loads(comment_string[len(_OPSO_METADATA_PREFIX):])
    except json.JSONDecodeError as exc:
        raise ParseError(f"opso_metadata comment is not valid JSON: {exc}") from exc
    version = metadata.get("opso_metadata_version")
    if version != "v0.1":
        raise ParseError(f"parsing opso_metadata version {version!r} is not implemented")
    if metadata.get("recording_start_time"):
        metadata["recording_start_time"] = datetime.datetime.fromisoformat(
            metadata["recording_start_time"]
        )
    return OpsoMetadata(metadata)


def _metadata_from_info(info: AudioFileInfo) -> dict:
    """Metadata dictionary for a file: tags, header facts, parsed AudioMoth or opso fields (no
    ``filesize``, as in OpenSoundscape 0.9.0: it would not describe a saved copy)."""
    metadata = info.soundfile_metadata()
    metadata.pop("filesize")
    comment = metadata.get("comment") or ""
    if comment.startswith(_OPSO_METADATA_PREFIX):
        try:
            saved = parse_opso_metadata(comment)
        except ParseError as exc:
            warnings.warn(f"{info.path}: could not parse opso metadata in the comment tag: {exc}",
                          stacklevel=3)
        else:
            header_facts = {k: metadata[k] for k in ("samplerate", "frames", "format", "subtype",
                                                     "sections", "duration")}
            metadata = OpsoMetadata({**saved, **header_facts})
    elif "AudioMoth" in (metadata.get("artist") or "") or (
            comment.startswith("Recorded at") and "AudioMoth" in comment):
        try:
            metadata = parse_audiomoth_metadata(metadata)
        except ParseError as exc:
            warnings.warn(f"{info.path} looks like an AudioMoth file but its comment could not be "
                          f"parsed: {exc}", stacklevel=3)
    return metadata


class Audio:
    """Mono audio samples and their sample rate; immutable.

    Parameters
    ----------
    samples : array-like, shape (n,)
        Sample values, nominally in [-1, 1]. Integer input is converted to float32.
    sample_rate : int
        Samples per second (Hz), > 0.
    resample_type : str
        Default resampling method of this object (see :func:`resample_samples`).
    metadata : dict, optional
        Free-form metadata (tags, ``recording_start_time``, ...).

    Attributes
    ----------
    samples : numpy.ndarray, shape (n,)
    sample_rate : int
    resample_type : str
    metadata : dict or None
    """

    __slots__ = ("samples", "sample_rate", "resample_type", "metadata")

    def __init__(self, samples, sample_rate, resample_type=DEFAULT_RESAMPLE_TYPE, metadata=None):
        if not isinstance(samples, np.ndarray | list | tuple):
            raise OpsoTypeValueError(
                f"Audio samples must be a numpy array or list of numbers, got {type(samples).__name__}"
            )
        arr = np.asarray(samples)
        if arr.ndim != 1:
            raise OpsoValueError(
                f"Audio holds one channel: samples must be 1-d, got shape {arr.shape}. "
                "Use load_channels_as_audio() for multi-channel files."
            )
        if not (np.issubdtype(arr.dtype, np.number) or arr.size == 0) or np.iscomplexobj(arr):
            raise OpsoTypeValueError(f"Audio samples must be real numbers, got dtype {arr.dtype}")
        if not isinstance(samples, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)  # lists and integer PCM become float32, as in OpenSoundscape
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float | np.number):
            raise OpsoTypeValueError(
                f"sample_rate must be a number of samples per second, got {sample_rate!r}"
            )
        if not math.isfinite(sample_rate) or sample_rate <= 0 or int(sample_rate) != sample_rate:
            raise OpsoValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate}")
        if resample_type not in RESAMPLE_TYPES:
            raise OpsoValueError(f"resample_type must be one of {RESAMPLE_TYPES}, got {resample_type!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise OpsoTypeValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        object.__setattr__(self, "samples", arr)
        object.__setattr__(self, "sample_rate", int(sample_rate))
        object.__setattr__(self, "resample_type", resample_type)
        object.__setattr__(self, "metadata", metadata)

    def __setattr__(self, name, value):
        """Attributes can be set, as in OpenSoundscape 0.9.0 (``audio.metadata = {...}``), and are checked
        as the constructor checks them. Methods never modify an object: they return new ones."""
        if name not in self.__slots__:
            raise AttributeError(f"Audio has no attribute {name!r}; its attributes are {self.__slots__}")
        fields = {key: getattr(self, key) for key in self.__slots__}
        fields[name] = value
        object.__setattr__(self, name, getattr(self.__class__(**fields), name))

    def __reduce__(self):
        return (self.__class__, (self.samples, self.sample_rate, self.resample_type, self.metadata))

    def _spawn(self, **kwargs) -> Audio:
        """Copy of this object with some of its fields replaced."""
        unknown = set(kwargs) - set(self.__slots__)
        if unknown:
            raise OpsoAssertionError(f"_spawn takes only {self.__slots__}, got {sorted(unknown)}")
        fields = {key: getattr(self, key) for key in self.__slots__}
        fields.update(kwargs)
        return self.__class__(**fields)

    def _metadata_copy(self, **updates) -> dict | None:
        if self.metadata is None:
            return None
        metadata = dict(self.metadata)
        metadata.update({k: v for k, v in updates.items() if k in metadata or k == "duration"})
        return metadata

    def __repr__(self):
        return f"<Audio(samples={self.samples.shape}, sample_rate={self.sample_rate})>"

    # ------------------------------------------------------------------ constructors

    @classmethod
    def silence(cls, duration, sample_rate) -> Audio:
        """Zero-valued audio of ``duration`` seconds (rounded down to whole samples)."""
        if duration < 0:
            raise OpsoValueError(f"duration must be >= 0 seconds, got {duration}")
        return cls(np.zeros(_sample_index(duration, sample_rate), dtype=np.float32), sample_rate)

    @classmethod
    def noise(cls, duration, sample_rate, color="white", dBFS=-10, seed=None) -> Audio:
        """Noise of a given spectral colour.

        Parameters
        ----------
        duration : float
            Seconds.
        sample_rate : int
            Hz.
        color : {"white", "pink", "brown", "brownian", "blue", "violet"}
            Shape of the power spectral density: white flat, pink 1/f, brown 1/f², blue f, violet f².
        dBFS : float
            Target RMS level in dB relative to a full-scale sine. Samples are clipped to [-1, 1].
        seed : int or numpy.random.Generator, optional
            For reproducible noise; None uses numpy's global random state (as OpenSoundscape does).
        """
        # amplitude spectra: PSD ∝ f^k  <=>  |amplitude| ∝ f^(k/2)
        exponents = {"white": 0.0, "pink": -0.5, "brown": -1.0, "brownian": -1.0,
                     "blue": 0.5, "violet": 1.0}
        if color not in exponents:
            raise OpsoValueError(f"color must be one of {sorted(exponents)}, got {color!r}")
        n = _sample_index(duration, sample_rate)
        if n == 0:
            return cls(np.zeros(0, dtype=np.float32), sample_rate)
        if seed is None:
            white = np.random.randn(n)
        else:
            white = np.random.default_rng(seed).standard_normal(n)
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        shape = np.ones_like(f)
        nonzero = f > 0
        shape[nonzero] = f[nonzero] ** exponents[color]
        if exponents[color] < 0:
            shape[~nonzero] = 0.0  # no DC offset for red-ish noise
        samples = np.fft.irfft(spectrum * shape, n)
        rms = np.sqrt(np.mean(samples**2))
        if rms > 0:
            samples *= 10 ** (dBFS / 20) / np.sqrt(2) / rms
        return cls(np.clip(samples, -1, 1).astype(np.float32), sample_rate)

    @classmethod
    def from_file(
        cls,
        path,
        sample_rate=None,
        resample_type=DEFAULT_RESAMPLE_TYPE,
        dtype=np.float32,
        load_metadata=True,
        offset=None,
        duration=None,
        start_timestamp=None,
        out_of_bounds_mode="warn",
        *,
        storage_options: dict[str, Any] | None = None,
        on_truncated="warn",
    ) -> Audio:
        """Load audio (or a segment of it) from a file or fsspec URL.

        WAV, FLAC, OGG and MP3 are read through libsndfile. A segment (``offset``, ``duration``)
        is read by seeking, so loading 5 s from a 24 h file reads only those 5 s.

        Parameters
        ----------
        path : str or path-like
            Local path or fsspec URL (``s3://bucket/x.wav``).
        sample_rate : int, optional
            Resample to this rate (Hz); None keeps the file's rate.
        resample_type : str
            See :func:`resample_samples`. [default: "soxr_hq"]
        dtype : numpy dtype
            Sample dtype. [default: float32]
        load_metadata : bool
            Attach the file's tags as ``metadata``; AudioMoth comments are parsed into
            ``recording_start_time``, ``device_id``, ``gain_setting``, ``battery_state``,
            ``temperature_C``.
        offset : float, optional
            Start of the segment in seconds from the start of the file. [default: 0]
        duration : float, optional
            Length of the segment in seconds; None reads to the end.
        start_timestamp : datetime.datetime, optional
            Aware datetime of the segment start, instead of ``offset``; needs a recording start
            time from an AudioMoth comment or an AudioMoth-style file name (UTC).
        out_of_bounds_mode : {"warn", "raise", "ignore"}
            What to do when the requested segment is not fully inside the file.
        storage_options : dict, optional
            fsspec options (credentials, endpoint) for remote URLs.
        on_truncated : {"warn", "raise", "ignore"}
            What to do when the WAV header declares more audio than the file holds.

        Returns
        -------
        Audio

        Raises
        ------
        AudioReadError
            The file is missing, empty, not audio or corrupt (subclasses say which).
        AudioOutOfBoundsError
            With ``out_of_bounds_mode="raise"``, the segment is not inside the file.
        TruncatedAudioError
            With ``on_truncated="raise"``, the file is cut short.
        """
        if out_of_bounds_mode not in _OUT_OF_BOUNDS_MODES:
            raise OpsoValueError(f"out_of_bounds_mode must be one of {_OUT_OF_BOUNDS_MODES}, "
                                 f"got {out_of_bounds_mode!r}")
        if on_truncated not in _TRUNCATED_MODES:
            raise OpsoValueError(f"on_truncated must be one of {_TRUNCATED_MODES}, got {on_truncated!r}")
        if duration is not None and duration < 0:
            raise OpsoValueError(f"duration must be >= 0 seconds, got {duration}")
        if offset is not None and offset < 0:
            raise OpsoValueError(f"offset must be >= 0 seconds, got {offset}")
        path = os.fspath(path)
        info = audio_file_info(path, storage_options=storage_options)
        native_hz = info.sample_rate_hz

        def out_of_bounds(message):
            if out_of_bounds_mode == "raise":
                raise AudioOutOfBoundsError(f"{path}: {message}")
            if out_of_bounds_mode == "warn":
                warnings.warn(f"{path}: {message}", OutOfBoundsWarning, stacklevel=3)

        if info.truncated:
            message = (f"{path}: the header declares {info.declared_frames} frames "
                       f"({info.declared_frames / native_hz:.3f} s) but the file holds only "
                       f"{info.frames} ({info.duration_s:.3f} s); the recording was cut short")
            if on_truncated == "raise":
                raise TruncatedAudioError(message)
            if on_truncated == "warn":
                warnings.warn(message + "; loading the frames that exist", TruncatedAudioWarning,
                              stacklevel=2)

        metadata = _metadata_from_info(info) if load_metadata else None

        # --- where does the segment start? ---
        if start_timestamp is not None:
            if offset is not None:
                raise OpsoValueError("give either start_timestamp or offset, not both")
            if not isinstance(start_timestamp, datetime.datetime) or start_timestamp.tzinfo is None:
                raise OpsoAssertionError("start_timestamp must be a time-zone-aware datetime.datetime")
            recording_start = (metadata or _metadata_from_info(info)).get("recording_start_time")
            if not isinstance(recording_start, datetime.datetime):
                try:
                    recording_start = audiomoth_start_time(path, to_utc=True)
                except ParseError as exc:
                    raise OpsoAssertionError(
                        f"{path}: no recording start time in the metadata (AudioMoth comment) or "
                        "the file name, so start_timestamp cannot be used; pass offset instead"
                    ) from exc
            offset = (start_timestamp - recording_start).total_seconds()
        elif offset is None:
            offset = 0.0
        offset = float(offset)

        # --- which frames exist? ---
        requested_start = _sample_index(offset, native_hz) if offset >= 0 else -_sample_index(-offset, native_hz)
        requested_frames = None if duration is None else int(round(duration * native_hz))
        start_frame = max(0, requested_start)
        stop_frame = info.frames if requested_frames is None else min(info.frames,
                                                                      requested_start + requested_frames)
        stop_frame = max(stop_frame, start_frame)
        if requested_start < 0:
            out_of_bounds(f"the requested time period begins {-offset:.3f} s before the recording")
        n_frames = min(stop_frame, info.frames) - start_frame if start_frame < info.frames else 0

        samples = _read_frames(path, start_frame, n_frames, dtype, storage_options)
        if samples.shape[1] > 1:
            warnings.warn(
                f"{path} has {samples.shape[1]} channels; mixing them down to one. Use "
                "load_channels_as_audio() to keep them apart.", MixdownWarning, stacklevel=2)
        samples = _mix_to_mono(samples)

        if len(samples) == 0 and (requested_frames is None or requested_frames > 0):
            out_of_bounds("the audio object has zero samples (offset is past the end of the file)")
        elif requested_frames is not None and len(samples) < requested_frames and requested_start >= 0:
            out_of_bounds(f"audio is shorter than requested: {len(samples) / native_hz} s instead of "
                          f"{duration} s")

        out_hz = native_hz
        if sample_rate is not None and int(sample_rate) != native_hz:
            samples = resample_samples(samples, native_hz, int(sample_rate), resample_type)
            out_hz = int(sample_rate)

        if metadata is not None:
            metadata["duration"] = len(samples) / out_hz
            metadata["samplerate"] = out_hz
            metadata["channels"] = 1
            if start_frame != 0 or duration is not None:
                metadata["filesize"] = np.nan
            if isinstance(metadata.get("recording_start_time"), datetime.datetime) and start_frame > 0:
                metadata["recording_start_time"] += datetime.timedelta(seconds=start_frame / native_hz)
        return cls(np.asarray(samples, dtype=dtype), out_hz, resample_type=resample_type,
                   metadata=metadata)

    @classmethod
    def from_bytesio(cls, bytesio, sample_rate=None, resample_type=DEFAULT_RESAMPLE_TYPE) -> Audio:
        """Load audio from an in-memory file (``io.BytesIO`` holding WAV, FLAC, ... bytes).

        Multi-channel data is mixed down with a :class:`MixdownWarning`.
        """
        try:
            data, native_hz = soundfile.read(bytesio, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
            raise AudioFormatError(f"the in-memory data is not readable audio ({exc})") from exc
        if data.shape[1] > 1:
            warnings.warn(f"audio has {data.shape[1]} channels; mixing them down to one",
                          MixdownWarning, stacklevel=2)
        samples = data.mean(axis=1, dtype=np.float32)
        if sample_rate is not None and int(sample_rate) != native_hz:
            samples = resample_samples(samples, native_hz, int(sample_rate), resample_type)
            native_hz = int(sample_rate)
        return cls(samples, native_hz, resample_type=resample_type)

    @classmethod
    def from_url(cls, url, sample_rate=None, resample_type="kaiser_fast", storage_options=None) -> Audio:
        """Load audio from a URL (any fsspec protocol: http(s), s3, gs, ...); ``resample_type`` defaults
        to ``"kaiser_fast"`` as in OpenSoundscape 0.9.0 (``from_file``'s default is ``"soxr_hq"``)."""
        return cls.from_file(url, sample_rate=sample_rate, resample_type=resample_type,
                             storage_options=storage_options)

    # ------------------------------------------------------------------ measurements

    @property
    def duration(self) -> float:
        """Length in seconds: ``len(samples) / sample_rate``."""
        return len(self.samples) / self.sample_rate

    @property
    def rms(self) -> float:
        """Root-mean-square of the samples (NaN for empty audio)."""
        if len(self.samples) == 0:
            return float("nan")
        return float(np.sqrt(np.mean(np.square(self.samples, dtype=np.float64))))

    @property
    def dBFS(self) -> float:
        """RMS level in decibels relative to a full-scale sine wave: ``20 log10(rms * sqrt(2))``."""
        rms = self.rms
        if rms == 0:
            return float("-inf")
        return float(20 * np.log10(rms * np.sqrt(2)))

    # ------------------------------------------------------------------ display

    def _to_ipdisplay_audio(self, normalize=False, autoplay=False):
        try:
            import IPython.display
        except ImportError as exc:
            raise missing_dependency("IPython", "notebooks") from exc
        return IPython.display.Audio(data=self.samples, rate=self.sample_rate,
                                     normalize=normalize, autoplay=autoplay)

    def _repr_html_(self):
        try:
            return self._to_ipdisplay_audio()._repr_html_()
        except MissingDependencyError:
            return None

    def show_widget(self, normalize=False, autoplay=False):
        """Display an IPython audio player widget (needs IPython, e.g. in Jupyter)."""
        try:
            import IPython.display
        except ImportError as exc:
            raise missing_dependency("IPython", "notebooks") from exc

        IPython.display.display(self._to_ipdisplay_audio(normalize=normalize, autoplay=autoplay))

    # ------------------------------------------------------------------ time operations

    def trim(self, start_time, end_time) -> Audio:
        """Audio from ``start_time`` to ``end_time`` seconds (clamped to the audio's extent).

        A ``recording_start_time`` in the metadata is moved by ``start_time``.
        """
        if end_time < start_time:
            raise OpsoValueError(f"end_time ({end_time}) must not be before start_time ({start_time})")
        start_sample = max(0, _sample_index(start_time, self.sample_rate))
        end_sample = max(start_sample, _sample_index(end_time, self.sample_rate))
        trimmed = self.samples[start_sample:end_sample]
        metadata = self._metadata_copy(duration=len(trimmed) / self.sample_rate)
        if metadata is not None and isinstance(metadata.get("recording_start_time"), datetime.datetime):
            metadata["recording_start_time"] += datetime.timedelta(seconds=start_sample / self.sample_rate)
        return self._spawn(samples=trimmed, metadata=metadata)

    def extend(self, length) -> Audio:
        """Pad with silence at the end to ``length`` seconds (must not be shorter than the audio)."""
        total = int(round(length * self.sample_rate))
        if total < len(self.samples):
            raise OpsoValueError(f"extend() cannot shorten audio ({self.duration} s) to {length} s; "
                                 "use trim()")
        extended = np.pad(self.samples, (0, total - len(self.samples)))
        return self._spawn(samples=extended,
                           metadata=self._metadata_copy(duration=total / self.sample_rate))

    def loop(self, length=None, n=None) -> Audio:
        """Repeat the audio to ``length`` seconds, or ``n`` times in all (give exactly one)."""
        if (length is None) == (n is None):
            raise OpsoValueError("give exactly one of length (seconds) or n (repetitions)")
        if len(self.samples) == 0:
            raise OpsoValueError("cannot loop empty audio")
        if length is not None:
            if length < 0:
                raise OpsoValueError(f"length must be >= 0 seconds, got {length}")
            looped = np.resize(self.samples, int(round(length * self.sample_rate)))
        else:
            if int(n) != n or n < 0:
                raise OpsoValueError(f"n must be a whole number >= 0, got {n}")
            looped = np.tile(self.samples, int(n))
        return self._spawn(samples=looped,
                           metadata=self._metadata_copy(duration=len(looped) / self.sample_rate))

    def resample(self, sample_rate, resample_type=None) -> Audio:
        """Audio at a new sample rate (Hz); ``resample_type`` defaults to the object's own."""
        resample_type = resample_type or self.resample_type
        samples = resample_samples(self.samples, self.sample_rate, int(sample_rate), resample_type)
        metadata = self._metadata_copy(duration=len(samples) / int(sample_rate))
        if metadata is not None and "samplerate" in metadata:
            metadata["samplerate"] = int(sample_rate)
        return self._spawn(samples=samples, sample_rate=int(sample_rate),
                           resample_type=resample_type, metadata=metadata)

    def split(self, clip_duration, clip_overlap=0, final_clip=None):
        """Split into clips of ``clip_duration`` seconds.

        Parameters
        ----------
        clip_duration : float
            Seconds per clip.
        clip_overlap : float
            Seconds shared by consecutive clips (negative leaves gaps). [default: 0]
        final_clip : {None, "extend", "remainder", "full"}
            Handling of the last partial clip, see :func:`opso_core.utils.generate_clip_times_df`;
            "extend" pads that clip with silence to full length.

        Returns
        -------
        (list of Audio, pandas.DataFrame)
            The clips and a table with ``start_time``, ``end_time`` (s) of each.
        """
        clip_df = generate_clip_times_df(full_duration=self.duration, clip_duration=clip_duration,
                                         clip_overlap=clip_overlap, final_clip=final_clip)
        clips = []
        for start, end in zip(clip_df["start_time"], clip_df["end_time"], strict=True):
            clip = self.trim(start, end)
            if final_clip == "extend" and end > self.duration:
                clip = clip.extend(clip_duration)
            clips.append(clip)
        if not clips:
            warnings.warn(
                f"audio of {self.duration} s with clip_duration={clip_duration} and "
                f"final_clip={final_clip!r} gives no clips; returning an empty list",
                OutOfBoundsWarning, stacklevel=2)
        return clips, clip_df

    def split_and_save(self, destination, prefix, clip_duration, clip_overlap=0, final_clip=None,
                       dry_run=False):
        """Split into clips and save each as ``{destination}/{prefix}_{start}s_{end}s.wav``.

        Returns
        -------
        pandas.DataFrame
            Indexed by ``file`` (the clip paths), with ``start_time``, ``end_time`` (s).
            With ``dry_run=True`` only the table is made; nothing is written.
        """
        clip_df = generate_clip_times_df(full_duration=self.duration, clip_duration=clip_duration,
                                         clip_overlap=clip_overlap, final_clip=final_clip)
        names = [f"{destination}/{prefix}_{float(s)}s_{float(e)}s.wav"
                 for s, e in zip(clip_df["start_time"], clip_df["end_time"], strict=True)]
        if not dry_run:
            clips, _ = self.split(clip_duration, clip_overlap=clip_overlap, final_clip=final_clip)
            for clip, name in zip(clips, names, strict=True):
                clip.save(name)
        clip_df.index = names
        clip_df.index.name = "file"
        return clip_df

    # ------------------------------------------------------------------ frequency operations

    def spectrum(self):
        """Single-sided amplitude spectrum.

        Returns
        -------
        (numpy.ndarray, numpy.ndarray), each of shape (n // 2,)
            ``2/n * |FFT|`` and the frequencies (Hz) of the bins.
        """
        n = len(self.samples)
        if n < 2:
            raise OpsoValueError("spectrum() needs at least 2 samples")
        fft = np.abs(np.fft.rfft(self.samples.astype(np.float64))[: n // 2]) * (2.0 / n)
        frequencies = np.fft.rfftfreq(n, d=1 / self.sample_rate)[: n // 2]
        return fft, frequencies

    def _filtered(self, sos) -> Audio:
        padlen = 3 * (2 * len(sos) + 1)
        if len(self.samples) <= padlen:
            raise OpsoValueError(
                f"audio of {len(self.samples)} samples is too short for this filter "
                f"(needs more than {padlen}); lower the order or use longer audio"
            )
        from scipy.signal import sosfiltfilt

        filtered = sosfiltfilt(sos, self.samples).astype(self.samples.dtype)
        return self._spawn(samples=filtered)

    def bandpass(self, low_f, high_f, order) -> Audio:
        """Zero-phase Butterworth band-pass between ``low_f`` and ``high_f`` Hz (-3 dB points).

        ``order`` is the Butterworth order (steepness). Needs ``0 < low_f < high_f < sample_rate/2``.
        """
        return self._filtered(butter_bandpass(low_f, high_f, self.sample_rate, order=order))

    def lowpass(self, cutoff_f, order) -> Audio:
        """Zero-phase Butterworth low-pass at ``cutoff_f`` Hz (-3 dB)."""
        _check_cutoff(cutoff_f, self.sample_rate)
        from scipy.signal import butter

        return self._filtered(butter(order, cutoff_f, btype="lowpass", fs=self.sample_rate, output="sos"))

    def highpass(self, cutoff_f, order) -> Audio:
        """Zero-phase Butterworth high-pass at ``cutoff_f`` Hz (-3 dB)."""
        _check_cutoff(cutoff_f, self.sample_rate)
        from scipy.signal import butter

        return self._filtered(butter(order, cutoff_f, btype="highpass", fs=self.sample_rate, output="sos"))

    # ------------------------------------------------------------------ level operations

    def normalize(self, peak_level=None, peak_dBFS=None) -> Audio:
        """Scale so that the largest absolute sample equals ``peak_level`` (default 1.0).

        ``peak_dBFS`` gives the peak in decibels full scale instead (-3 dBFS = 0.708). All-zero
        audio is returned unchanged.
        """
        if peak_level is not None and peak_dBFS is not None:
            raise OpsoValueError("give peak_level or peak_dBFS, not both")
        if peak_dBFS is not None:
            if peak_dBFS > 0:
                warnings.warn(f"peak_dBFS={peak_dBFS} > 0 asks for clipping-level audio", stacklevel=2)
            peak_level = 10 ** (peak_dBFS / 20)
        elif peak_level is None:
            peak_level = 1.0
        abs_max = float(np.max(np.abs(self.samples))) if len(self.samples) else 0.0
        if abs_max == 0:
            return self._spawn()
        return self._spawn(samples=(self.samples * (peak_level / abs_max)).astype(self.samples.dtype))

    def apply_gain(self, dB, clip_range=(-1, 1)) -> Audio:
        """Multiply samples by ``10**(dB/20)``, then clip to ``clip_range`` (None: no clipping)."""
        samples = self.samples * (10 ** (dB / 20))
        if clip_range is not None:
            samples = np.clip(samples, clip_range[0], clip_range[1])
        return self._spawn(samples=samples.astype(self.samples.dtype))

    # ------------------------------------------------------------------ saving

    def save(self, path, metadata_format="opso", soundfile_subtype=None, soundfile_format=None,
             suppress_warnings=False, *, storage_options=None):
        """Write the audio to a file (WAV by default; any format libsndfile writes).

        Parameters
        ----------
        path : str or path-like
            Local path (missing parent folders are created) or fsspec URL; the format follows the
            extension unless ``soundfile_format``.
        metadata_format : {"opso", "opso_metadata_v0.1", "soundfile", None}
            "opso" stores the whole metadata dictionary as JSON in the comment tag (read back by
            :meth:`from_file`); "soundfile" writes only the standard tag fields; None writes none.
            Tags are supported for WAV and AIFF.
        soundfile_subtype, soundfile_format : str, optional
            See ``soundfile.write`` (e.g. subtype ``"PCM_16"``, ``"FLOAT"``).
        storage_options : dict, optional
            fsspec options for remote URLs.
        """
        from opso_core.audio_info import SOUNDFILE_TAG_FIELDS

        if metadata_format not in ("opso", "opso_metadata_v0.1", "soundfile", None):
            raise OpsoValueError(f"unknown metadata_format {metadata_format!r}; use 'opso', "
                                 "'opso_metadata_v0.1', 'soundfile' or None")
        path = os.fspath(path)
        suffix = Path(path).suffix.upper()
        fmt = soundfile_format or (suffix[1:] if suffix else "WAV")
        tags = {}
        if metadata_format is not None and self.metadata is not None:
            if fmt.upper() not in ("WAV", "AIFF", "AIF"):
                if not suppress_warnings:
                    warnings.warn(f"metadata is only saved for WAV and AIFF files, not {fmt}",
                                  stacklevel=2)
            else:
                # empty strings are left out: libsndfile refuses them ("bad string"; 0.9.0 fails to save)
                tags = {k: str(v) for k, v in self.metadata.items()
                        if k in SOUNDFILE_TAG_FIELDS and v is not None and str(v) != ""}
                if metadata_format != "soundfile":
                    tags["comment"] = generate_opso_metadata_str(self.metadata)

        def write(target):
            with soundfile.SoundFile(target, "w", samplerate=self.sample_rate, channels=1,
                                     subtype=soundfile_subtype, format=fmt) as sf:
                for key, value in tags.items():
                    setattr(sf, key, value)
                sf.write(self.samples)

        try:
            if is_local(path):
                Path(local_path(path)).parent.mkdir(parents=True, exist_ok=True)
                write(local_path(path))
            else:
                import fsspec

                buffer = io.BytesIO()
                write(buffer)
                with fsspec.open(path, "wb", **(storage_options or {})) as f:
                    f.write(buffer.getvalue())
        except (soundfile.LibsndfileError, TypeError, ValueError) as exc:
            raise OpsoValueError(f"could not save audio to {path} as {fmt}: {exc}") from exc


def _check_cutoff(cutoff_f, sample_rate):
    if not 0 < cutoff_f < sample_rate / 2:
        raise OpsoValueError(f"cutoff frequency must be between 0 and sample_rate/2 "
                             f"({sample_rate / 2} Hz), got {cutoff_f}")


def _read_frames(path, start_frame, n_frames, dtype, storage_options) -> np.ndarray:
    """Read ``n_frames`` frames from ``start_frame`` as an array of shape (frames, channels)."""
    read_dtype = "float64" if np.dtype(dtype) == np.float64 else "float32"

    def read(source):
        with soundfile.SoundFile(source) as sf:
            if n_frames <= 0:
                return np.zeros((0, sf.channels), dtype=read_dtype)
            if start_frame:
                sf.seek(start_frame)
            if read_dtype == "float32" and sf.subtype == "PCM_16":
                # libsndfile's own conversion (x / 32768) done in numpy: the same values, 6x faster
                frames = sf.read(frames=n_frames, dtype="int16", always_2d=True).astype(np.float32)
                frames *= np.float32(1 / 32768)
                return frames
            return sf.read(frames=n_frames, dtype=read_dtype, always_2d=True)

    try:
        if is_local(path):
            return read(local_path(path))
        with open_binary(path, storage_options) as f:
            return read(f)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise AudioFormatError(f"{path}: could not decode audio ({exc})") from exc


def _mix_to_mono(frames: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,): the mean of the channels, in the frames' dtype."""
    return frames.mean(axis=1, dtype=frames.dtype) if frames.shape[1] > 1 else frames[:, 0]


def load_clips(path, start_times, clip_duration, sample_rate=None, *, info: AudioFileInfo | None = None,
               resample_type=DEFAULT_RESAMPLE_TYPE, storage_options=None) -> np.ndarray:
    """Many equal-length clips of one file, read with as few seeks as possible.

    Clip ``i`` equals ``Audio.from_file(path, offset=start_times[i], duration=clip_duration,
    sample_rate=sample_rate).samples`` (mixed to mono, float32), padded with silence where the file
    ends first. Clips close together are read as one segment; the file is never decoded whole.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL.
    start_times : array-like of float, shape (n_clips,)
        Seconds from the start of the file.
    clip_duration : float
        Seconds.
    sample_rate : int, optional
        Hz; clips of a file at another rate are resampled clip by clip. Default: the file's rate.
    info : AudioFileInfo, optional
        The file's header, if already read (saves a read on object storage).
    resample_type : str
    storage_options : dict, optional

    Returns
    -------
    numpy.ndarray, shape (n_clips, round(clip_duration * sample_rate)), float32
    """
    info = info or audio_file_info(path, storage_options=storage_options)
    native = info.sample_rate_hz
    sample_rate = int(sample_rate or native)
    n_out = int(round(clip_duration * sample_rate))
    n_native = int(round(clip_duration * native))
    first = np.array([_sample_index(float(t), native) for t in np.atleast_1d(start_times)], dtype=np.int64)
    out = np.zeros((len(first), n_out), dtype=np.float32)
    if not len(first):
        return out
    order = np.argsort(first, kind="stable")
    # contiguous runs of clips (gaps shorter than a clip) are read as one segment each
    breaks = np.flatnonzero(np.diff(first[order]) > 2 * n_native) + 1
    for run in np.split(order, breaks):
        seg_start = int(first[run].min())
        seg_stop = min(int(first[run].max()) + n_native, info.frames)
        segment = _mix_to_mono(_read_frames(path, seg_start, seg_stop - seg_start, np.float32, storage_options))
        for row in run:
            piece = segment[first[row] - seg_start : first[row] - seg_start + n_native]
            if native != sample_rate:
                piece = resample_samples(piece, native, sample_rate, resample_type)
            piece = piece[:n_out]
            out[row, : len(piece)] = piece
    return out


def load_channels_as_audio(path, sample_rate=None, resample_type=DEFAULT_RESAMPLE_TYPE, dtype=np.float32,
                           offset=0, duration=None, metadata=True, *, storage_options=None):
    """Load each channel of a file as its own :class:`Audio`.

    Parameters are as for :meth:`Audio.from_file`. Each object's metadata gets
    ``channel="i of n"`` and ``channels=1``.

    Returns
    -------
    list of Audio
        One per channel, in file order.
    """
    path = os.fspath(path)
    info = audio_file_info(path, storage_options=storage_options)
    hz = info.sample_rate_hz
    start = _sample_index(offset or 0, hz)
    n = info.frames - start if duration is None else min(int(round(duration * hz)), info.frames - start)
    data = _read_frames(path, start, max(0, n), dtype, storage_options)
    base_metadata = _metadata_from_info(info) if metadata else None
    out = []
    for i in range(data.shape[1]):
        samples = data[:, i]
        out_hz = hz
        if sample_rate is not None and int(sample_rate) != hz:
            samples = resample_samples(samples, hz, int(sample_rate), resample_type)
            out_hz = int(sample_rate)
        channel_md = None
        if base_metadata is not None:
            channel_md = dict(base_metadata, channels=1, channel=f"{i + 1} of {data.shape[1]}",
                              duration=len(samples) / out_hz, samplerate=out_hz)
        out.append(Audio(np.asarray(samples, dtype=dtype), out_hz, resample_type=resample_type,
                         metadata=channel_md))
    return out


def _check_audio_list(audio_objects, what="audio_objects") -> list:
    audio_objects = list(audio_objects)
    if not audio_objects:
        raise OpsoValueError(f"{what} is empty")
    for a in audio_objects:
        if not isinstance(a, Audio):
            raise OpsoTypeError(f"all elements of {what} must be Audio objects, got {type(a).__name__}")
    return audio_objects


def concat(audio_objects, sample_rate=None) -> Audio:
    """Join Audio objects end to end, resampling to ``sample_rate`` (default: the first's rate).

    Metadata is discarded; the first object's ``resample_type`` is kept.
    """
    audio_objects = _check_audio_list(audio_objects)
    sample_rate = int(sample_rate or audio_objects[0].sample_rate)
    samples = np.concatenate([a.resample(sample_rate).samples for a in audio_objects])
    return audio_objects[0]._spawn(samples=samples, sample_rate=sample_rate, metadata=None)


def mix(audio_objects, duration=None, gain=-3, offsets=None, sample_rate=None, clip_range=(-1, 1)) -> Audio:
    """Superimpose Audio objects.

    Parameters
    ----------
    audio_objects : iterable of Audio
    duration : float, optional
        Seconds of the result (shorter inputs padded, longer cut); None: the longest
        ``duration + offset``.
    gain : float, list of float, or None
        dB applied to every object, or one value per object. [default: -3]
    offsets : list of float, optional
        Start time (s) of each object in the mix.
    sample_rate : int, optional
        Rate of the result; default: the first object's.
    clip_range : (float, float) or None
        Clip the mixed samples to this range. [default: (-1, 1)]
    """
    audio_objects = _check_audio_list(audio_objects)
    n = len(audio_objects)
    if gain is not None and np.ndim(gain) > 0 and len(gain) != n:
        raise OpsoValueError(f"gain has {len(gain)} values for {n} audio objects")
    if offsets is not None and len(offsets) != n:
        raise OpsoValueError(f"offsets has {len(offsets)} values for {n} audio objects")
    if offsets is not None and min(offsets) < 0:
        raise OpsoValueError("offsets must be >= 0 seconds")
    sample_rate = int(sample_rate or audio_objects[0].sample_rate)
    offsets = list(offsets) if offsets is not None else [0.0] * n
    if duration is None:
        duration = max(a.duration + o for a, o in zip(audio_objects, offsets, strict=True))
    total = _sample_index(duration, sample_rate)
    mixdown = np.zeros(total, dtype=np.float64)
    for i, audio in enumerate(audio_objects):
        if gain is not None:
            audio = audio.apply_gain(gain[i] if np.ndim(gain) > 0 else gain, clip_range=None)
        if audio.sample_rate != sample_rate:
            audio = audio.resample(sample_rate)
        start = _sample_index(offsets[i], sample_rate)
        if start >= total:
            continue
        piece = audio.samples[: total - start]
        mixdown[start:start + len(piece)] += piece
    if clip_range is not None:
        mixdown = np.clip(mixdown, clip_range[0], clip_range[1])
    return audio_objects[0]._spawn(samples=mixdown.astype(np.float32), sample_rate=sample_rate,
                                   metadata=None)


def estimate_delay(audio, reference_audio, bandpass_range=None, bandpass_order=9, cc_filter="phat",
                   return_cc_max=False, max_delay=None, skip_ref_bandpass=False):
    """Delay (s) of ``audio`` relative to ``reference_audio`` by generalized cross correlation.

    If ``audio`` is 1 s behind the reference, returns 1.0. ``reference_audio`` is resampled to
    ``audio``'s rate when they differ.

    Parameters
    ----------
    bandpass_range : (low_f, high_f), optional
        Band-pass both signals (Hz) first; ``skip_ref_bandpass`` leaves the reference unfiltered.
    bandpass_order : int
    cc_filter : str
        See :func:`opso_core.signal_processing.gcc`. [default: "phat"]
    return_cc_max : bool
        Also return the correlation maximum.
    max_delay : float, optional
        Largest delay (s) considered.
    """
    sr = audio.sample_rate
    if reference_audio.sample_rate != sr:
        reference_audio = reference_audio.resample(sr)
    if bandpass_range is not None:
        low_f, high_f = bandpass_range
        audio = audio.bandpass(low_f, high_f, bandpass_order)
        if not skip_ref_bandpass:
            reference_audio = reference_audio.bandpass(low_f, high_f, bandpass_order)
    return tdoa(audio.samples, reference_audio.samples, cc_filter=cc_filter, sample_rate=sr,
                return_max=return_cc_max, max_delay=max_delay)


def butter_bandpass(low_f, high_f, sample_rate, order=9):
    """Second-order sections of a Butterworth band-pass filter (Hz, Hz, Hz)."""
    if not 0 < low_f < high_f:
        raise OpsoValueError(f"need 0 < low_f < high_f, got low_f={low_f}, high_f={high_f}")
    if high_f >= sample_rate / 2:
        raise OpsoValueError(f"high_f ({high_f} Hz) must be below sample_rate/2 ({sample_rate / 2} Hz)")
    if int(order) != order or order < 1:
        raise OpsoValueError(f"order must be a whole number >= 1, got {order}")
    from scipy.signal import butter

    return butter(int(order), [low_f, high_f], btype="band", fs=sample_rate, output="sos")


def bandpass_filter(signal, low_f, high_f, sample_rate, order=9):
    """Zero-phase Butterworth band-pass of a 1-d signal (``scipy.signal.sosfiltfilt``)."""
    from scipy.signal import sosfiltfilt

    return sosfiltfilt(butter_bandpass(low_f, high_f, sample_rate, order=order), signal)


def clipping_detector(samples, threshold=0.6) -> int:
    """Number of samples above ``threshold``."""
    return int(np.count_nonzero(np.asarray(samples) > threshold))
