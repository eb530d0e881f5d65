"""Spectrogram batches to network input on the device, as ``SpectrogramPreprocessor`` does one sample.

For inference over stored spectrograms (the pipeline's CNN stage): a batch of dB values
``(n, n_frequencies, n_times)`` goes through the non-augmentation steps after ``to_spec`` — the
``bandpass`` row selection, ``to_tensor`` (map ``decibel_limits`` to [0, 1], low frequencies at the
bottom, optional inversion and colormap, bilinear antialiased resize to ``(height, width)``) and
``rescale`` (``(x - mean) / std``) — as tensor operations on any device. The result equals
``SpectrogramPreprocessor.forward(..., bypass_augmentations=True).data`` for each clip to about
1e-5 (the resize is torch's antialiased bilinear instead of PIL's).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from opso_core.errors import OpsoValueError
from opso_core.spectrogram import nearest_range

__all__ = ["TensorSettings", "spectrograms_to_tensor"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TensorSettings:
    """What happens between a stored spectrogram and the network (hashable).

    Attributes
    ----------
    decibel_limits : (float, float)
    bandpass_hz : (float, float) or None
        Keep rows from the bin nearest the low to the bin nearest the high frequency.
    out_shape : (int, int, int)
        Height, width, channels.
    invert : bool
    colormap : str or None
        matplotlib colormap name (needs 3 channels).
    rescale : (float, float) or None
        (mean, std) of ``scale_tensor``.
    """

    decibel_limits: tuple[float, float] = (-100.0, -20.0)
    bandpass_hz: tuple[float, float] | None = None
    out_shape: tuple[int, int, int] = (224, 224, 3)
    invert: bool = False
    colormap: str | None = None
    rescale: tuple[float, float] | None = (0.5, 0.5)

    def __post_init__(self):
        if self.colormap is not None and self.out_shape[2] != 3:
            raise OpsoValueError("a colormap needs 3 output channels")


def spectrograms_to_tensor(values, frequencies, settings: TensorSettings, device=None) -> torch.Tensor:
    """Network input for a batch of spectrograms.

    Parameters
    ----------
    values : numpy.ndarray or torch.Tensor, shape (n, n_frequencies, n_times)
        dB values.
    frequencies : numpy.ndarray, shape (n_frequencies,)
        Hz.
    settings : TensorSettings
    device : torch.device, optional
        Where to compute (default: where ``values`` are).

    Returns
    -------
    torch.Tensor, shape (n, channels, height, width), float32
    """
    x = torch.as_tensor(values, dtype=torch.float32, device=device)
    if x.ndim != 3:
        raise OpsoValueError(f"values must be (n, n_frequencies, n_times), got {tuple(x.shape)}")
    if settings.bandpass_hz is not None:
        x = x[:, nearest_range(frequencies, *settings.bandpass_hz), :]
    lo, hi = settings.decibel_limits
    x = ((x - lo) / (hi - lo)).flip(1).clamp(0, 1)
    if settings.invert:
        x = 1 - x
    height, width, channels = settings.out_shape
    if settings.colormap is not None:
        import matplotlib

        cmap = matplotlib.colormaps[settings.colormap]
        lut = torch.as_tensor(cmap(np.arange(cmap.N))[:, :3], dtype=torch.float32, device=x.device)
        index = (x.double() * cmap.N).long().clamp(0, cmap.N - 1)  # as matplotlib: floor(x * N)
        x = lut[index].permute(0, 3, 1, 2)  # (n, 3, h, w)
    else:
        x = x[:, None]  # one channel now; copied to `channels` after the resize
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp(0, 1)
    if settings.colormap is None:
        x = x.expand(-1, channels, -1, -1)
    if settings.rescale is not None:
        mean, std = settings.rescale
        x = (x - mean) / std
    return x.contiguous()
