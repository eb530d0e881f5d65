"""Spectrogram batches to network input on the device, as ``SpectrogramPreprocessor`` does one sample.

For inference over stored spectrograms (the pipeline's CNN stage): a batch of dB values
``(n, n_frequencies, n_times)`` goes through the non-augmentation steps after ``to_spec`` — the
``bandpass`` row selection, ``to_tensor`` (map ``decibel_limits`` to [0, 1], low frequencies at the
bottom, optional inversion and colormap, the resize to ``(height, width)`` as matrices of
:mod:`opso_core.image_resize`) and ``rescale`` (``(x - mean) / std``) — as tensor operations on any
device. The result equals ``SpectrogramPreprocessor.forward(..., bypass_augmentations=True).data``
for each clip to float32 rounding.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from opso_core.errors import OpsoValueError
from opso_core.image_resize import resize_matrix
from opso_core.ml.tensor_settings import TensorSettings
from opso_core.spectrogram import nearest_range
from opso_core.stft import DB_PER_NEPER, SpectrogramParams, transform_constants

__all__ = ["TensorSettings", "spectrograms_on_device", "spectrograms_to_tensor"]


# The two caches below are never evicted: a CUDA graph recorded with their tensors (the pipeline's CNN
# stage) reads their memory at every replay. They hold one small tensor per shape/settings and device.
@functools.cache
def _resize_tensor(n_in: int, n_out: int, device: torch.device, reverse_input: bool) -> torch.Tensor:
    """:func:`opso_core.image_resize.resize_matrix` as a float32 tensor on ``device`` (copied there once).

    With ``reverse_input`` its columns are in reverse order: ``m @ x`` is the resize of ``x`` flipped
    along its first axis, without the copy a flip makes.
    """
    matrix = resize_matrix(n_in, n_out)
    return torch.tensor(np.ascontiguousarray(matrix[:, ::-1] if reverse_input else matrix), dtype=torch.float32,
                        device=device)


@functools.cache
def _device_constants(params: SpectrogramParams, sample_rate: float, device: torch.device):
    """The window and the per-bin power scale as float64 tensors on ``device``, copied there once: a
    copy from ordinary host memory waits for the GPU's queue, so copying them per batch would make
    the CPU wait for every batch."""
    win, _, _, scale = transform_constants(params, sample_rate)
    return torch.tensor(win, device=device), torch.tensor(scale, device=device)


def spectrograms_on_device(samples, sample_rate, params: SpectrogramParams, device=None) -> torch.Tensor:
    """Spectrograms of a batch of equal-length clips computed with torch, where the network runs.

    The numbers of :func:`opso_core.stft.spectrogram_batch` (and so of ``Spectrogram.from_audio``):
    frames of ``window_samples`` every ``step_samples``, each frame's mean removed, windowed,
    zero-padded to ``nfft``, transformed in float64; power scaled as scipy does, then dB
    (``10 log10``, in float32, clipped to ``decibel_limits``) when ``params.dB_scale``. On a GPU this
    takes the spectrogram off the CPU cores that would otherwise feed the network (a data-centre GPU
    runs a ResNet18 on more clips per second than 16 cores compute spectrograms for).

    Parameters
    ----------
    samples : numpy.ndarray or torch.Tensor, shape (n_clips, n_samples)
        Audio (any float or integer dtype; integer PCM is taken as is, as ``spectrogram_batch`` does).
    sample_rate : float
        Hz.
    params : SpectrogramParams
    device : torch.device or str, optional
        Default: where ``samples`` are.

    Returns
    -------
    torch.Tensor, shape (n_clips, n_frequencies, n_times), float32
        dB values (or linear power when ``params.dB_scale`` is false).
    """
    x = torch.as_tensor(samples, device=device)
    if x.ndim != 2:
        raise OpsoValueError(f"samples must have shape (n_clips, n_samples), got {tuple(x.shape)}")
    n_times = params.n_times(x.shape[-1])
    if n_times < 1:
        raise OpsoValueError(f"audio of {x.shape[-1]} samples is shorter than one spectrogram window "
                             f"({params.window_samples} samples); use a shorter window or longer audio")
    win, scale = _device_constants(params, float(sample_rate), x.device)
    frames = x.to(torch.float64).unfold(-1, params.window_samples, params.step_samples)[:, :n_times]
    windowed = (frames - frames.mean(dim=-1, keepdim=True)) * win
    spectrum = torch.fft.rfft(windowed, n=params.nfft, dim=-1)
    power = torch.view_as_real(spectrum).square_().sum(dim=-1)
    power *= scale
    values = power.to(torch.float32)  # the log in float32, as spectrogram_batch computes it for float32 values
    if params.dB_scale:
        values = (values.log_() * DB_PER_NEPER).clamp_(*params.decibel_limits)
    return values.transpose(1, 2)


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
    x = (x - lo).div_(hi - lo).clamp_(0, 1)  # a new tensor: `values` is never written to
    if settings.invert:
        x = 1 - x
    height, width, channels = settings.out_shape
    resize = (x.shape[-2], x.shape[-1]) != (height, width)
    if settings.colormap is not None:
        import matplotlib

        cmap = matplotlib.colormaps[settings.colormap]
        lut = torch.as_tensor(cmap(np.arange(cmap.N))[:, :3], dtype=torch.float32, device=x.device)
        index = (x.flip(1).double() * cmap.N).long().clamp(0, cmap.N - 1)  # as matplotlib: floor(x * N)
        x = lut[index].permute(0, 3, 1, 2)  # (n, 3, h, w), low frequencies at the bottom
        flipped = True
    else:
        x = x[:, None]  # one channel now; copied to `channels` at the end
        flipped = False
    if resize:  # 0.9.0's skimage resize, as Spectrogram.to_image does it; the row matrix also flips
        rows = _resize_tensor(x.shape[-2], height, x.device, not flipped)
        cols = _resize_tensor(x.shape[-1], width, x.device, False)
        x = torch.matmul(torch.matmul(rows, x), cols.T).clamp_(0, 1)
    elif not flipped:
        x = x.flip(-2)  # low frequencies at the bottom
    if settings.rescale is not None:
        mean, std = settings.rescale
        x = (x - mean) / std
    if settings.colormap is None:
        x = x.expand(-1, channels, -1, -1)
    return x.contiguous()
