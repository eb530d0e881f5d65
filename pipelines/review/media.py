"""What the review page shows of a clip: its audio with context (WAV) and its spectrogram (PNG).

The audio is read from the archive (local or any fsspec URL) in the segment needed only: the clip plus
``context_s`` on each side, cut at the file's ends, at the file's own rate, mixed to mono as the run
read it, and scaled to a peak of -1 dBFS so quiet field recordings are audible (the page says so).

The spectrogram is the run's own where it kept one (``spectrograms.zarr`` holds a clip with this file,
start and end), else computed from the clip's audio with the run's spectrogram settings (a run with
``spectrogram.store: none``, or BirdNET's 3 s windows, which are not the store's clips). Loud is dark,
as in Raven and OpenSoundscape's plots; low frequencies at the bottom.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading

import numpy as np

from opso_core.audio import load_clips
from opso_core.audio_info import audio_file_info
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.spectrogram_store import STORE_NAME

__all__ = ["ClipAudio", "ClipMedia", "spectrogram_png", "wav_bytes"]

logger = logging.getLogger(__name__)

#: the image's size in pixels (width, height); the browser shows it at this size
IMAGE_SIZE = (640, 240)
PEAK_DBFS = -1.0


@dataclasses.dataclass(frozen=True)
class ClipAudio:
    """A clip's audio with context: ``samples`` (n,) float32 mono at ``sample_rate_hz``, starting
    ``offset_s`` seconds into the file; the clip itself is ``[clip_start_s, clip_end_s)`` of it."""

    samples: np.ndarray
    sample_rate_hz: int
    offset_s: float
    clip_start_s: float
    clip_end_s: float


def wav_bytes(samples: np.ndarray, sample_rate_hz: int, *, peak_dbfs: float | None = PEAK_DBFS) -> bytes:
    """16-bit PCM WAV of mono ``samples`` (float, shape (n,)), scaled to ``peak_dbfs`` unless None."""
    import soundfile as sf

    x = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak_dbfs is not None and peak > 0:
        x = x * np.float32(10 ** (peak_dbfs / 20) / peak)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(x, -1, 1), int(sample_rate_hz), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def spectrogram_png(values_db: np.ndarray, decibel_limits: tuple[float, float], *,
                    size: tuple[int, int] = IMAGE_SIZE, shade: tuple[float, float] | None = None) -> bytes:
    """A PNG of a spectrogram (``values_db`` shape (frequencies, times), dB; low frequency first): grey
    levels over ``decibel_limits``, loud dark; NaN white. ``shade``: the fractions of the width outside
    which the image is dimmed (the context around a clip)."""
    from PIL import Image

    low, high = decibel_limits
    v = np.nan_to_num((np.asarray(values_db, dtype=np.float64) - low) / (high - low), nan=0.0)
    grey = (255 * (1 - np.clip(v, 0, 1))).astype(np.uint8)[::-1]  # high frequencies on top
    image = Image.fromarray(grey, mode="L").resize(size, Image.Resampling.BILINEAR).convert("RGB")
    if shade is not None:
        pixels = np.asarray(image).copy()
        left, right = (int(round(f * size[0])) for f in shade)
        for part in (slice(0, max(left, 0)), slice(min(right, size[0]), size[0])):
            pixels[:, part] = (0.55 * pixels[:, part] + 0.45 * np.array([200, 215, 235])).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


class ClipMedia:
    """Reads clips' audio and spectrograms for one run (thread-safe; the store is opened once).

    Parameters
    ----------
    run_url : str
    run_config : dict
        The run's configuration as ``run.json`` records it.
    storage_options, input_storage_options : dict, optional
        fsspec options of the run folder and of the archive.
    context_s : float
        Seconds of audio played before and after each clip.
    """

    def __init__(self, run_url: str, run_config: dict, storage_options=None, input_storage_options=None, *,
                 context_s: float = 1.0):
        self.location = OutputLocation(run_url, storage_options)
        self.config = run_config or {}
        self.input_storage_options = input_storage_options or None
        self.context_s = float(context_s)
        self._lock = threading.Lock()
        self._store = None
        self._store_index = None

    # ---- audio
    def audio(self, file: str, start_s: float, end_s: float, *, context: bool = True) -> ClipAudio:
        """The clip ``[start_s, end_s)`` of ``file`` with ``context_s`` around it (cut at the file's ends)."""
        info = audio_file_info(file, storage_options=self.input_storage_options)
        pad = self.context_s if context else 0.0
        first = max(0.0, start_s - pad)
        last = min(info.duration_s, end_s + pad)
        last = max(last, min(end_s, info.duration_s), first + 1 / info.sample_rate_hz)
        samples = load_clips(file, [first], last - first, None, info=info,
                             storage_options=self.input_storage_options)[0]
        return ClipAudio(samples, info.sample_rate_hz, first, start_s - first, end_s - first)

    # ---- spectrograms
    def _params(self, sample_rate_hz: int):
        from pipelines.config import SpectrogramConfig

        section = {k: v for k, v in (self.config.get("spectrogram") or {}).items()
                   if k in SpectrogramConfig.model_fields}
        return SpectrogramConfig(**section).params(sample_rate_hz)

    def _stored_clip(self, file: str, start_s: float, end_s: float):
        """The store's index of this clip, or None (no store, or not one of its clips)."""
        with self._lock:
            if self._store_index is None:
                self._store_index = {}
                if self.location.exists(STORE_NAME):
                    try:
                        import xarray as xr

                        ds = xr.open_zarr(self.location.url_of(STORE_NAME), consolidated=True,
                                          storage_options=self.location.storage_options or None)
                        keys = zip(ds["file"].values.tolist(), np.round(ds["start_time"].values, 6).tolist(),
                                   np.round(ds["end_time"].values, 6).tolist(), strict=True)
                        self._store_index = {k: i for i, k in enumerate(keys)}
                        self._store = ds
                    except Exception as exc:  # an unreadable store: compute from the audio instead
                        logger.warning("review: cannot read %s (%s); spectrograms are computed from the audio",
                                       self.location.url_of(STORE_NAME), exc)
            return self._store_index.get((file, round(float(start_s), 6), round(float(end_s), 6)))

    def spectrogram(self, file: str, start_s: float, end_s: float) -> tuple[bytes, str]:
        """The clip's spectrogram as PNG bytes, and where it came from (``stored`` or ``computed``)."""
        index = self._stored_clip(file, start_s, end_s)
        if index is not None:
            values = self._store["spectrogram"].isel(clip=index).values
            limits = tuple(self._store.attrs.get("decibel_limits", (-100.0, -20.0)))
            if np.isfinite(values).any():
                return spectrogram_png(values, limits), "stored"
        from opso_core.spectrogram import spectrograms_from_clips

        clip = self.audio(file, start_s, end_s)
        rate = int((self.config.get("spectrogram") or {}).get("sample_rate") or clip.sample_rate_hz)
        samples = clip.samples
        if rate != clip.sample_rate_hz:
            from opso_core.audio import Audio

            samples = Audio(samples, clip.sample_rate_hz).resample(rate).samples
        params = self._params(rate)
        values, _, _ = spectrograms_from_clips(samples[None, :], rate, params=params, dtype=np.float32)
        duration = len(clip.samples) / clip.sample_rate_hz
        shade = (clip.clip_start_s / duration, clip.clip_end_s / duration)
        return spectrogram_png(values[0], tuple(params.decibel_limits), shade=shade), "computed"
