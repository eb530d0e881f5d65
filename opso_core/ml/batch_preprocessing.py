"""Inference preprocessing a batch at a time: ``SpectrogramPreprocessor``'s steps after the audio,
as array operations over the whole batch.

``CNN.predict`` runs a model's preprocessor once per sample, as OpenSoundscape does. For the
standard ``SpectrogramPreprocessor`` at inference (augmentations bypassed), everything after the
audio is loaded and trimmed — ``to_spec``, ``bandpass``, ``to_tensor``, ``rescale`` — has a batch
form that gives the same numbers (:func:`opso_core.stft.spectrogram_batch`, the same float64 STFT;
:func:`opso_core.ml.spectrogram_tensors.spectrograms_to_tensor`, the same image scaling and
OpenSoundscape 0.9.0's resize, to float32 rounding). :func:`batch_preprocessor` decides whether a
preprocessor qualifies, with the rule :func:`opso_core.ml.model_input.batch_form` that also
decides what :func:`~opso_core.ml.model_input.inference_spec` can describe; anything else
(another class, an inserted or replaced step, an active augmentation after ``to_spec``) keeps the
per-sample path. Samples whose batch step fails are
retried one at a time with the preprocessor's own steps, so errors are the ones the per-sample path
raises.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import torch

from opso_core.errors import OpsoError
from opso_core.ml.model_input import BATCH_STEPS, NotBatchableError, PreprocessingSteps, batch_form
from opso_core.ml.spectrogram_tensors import (
    TensorSettings,
    spectrograms_on_device,
    spectrograms_to_tensor,
)
from opso_core.stft import SpectrogramParams, spectrogram_batch

__all__ = ["BATCH_STEPS", "BatchPreprocessor", "batch_preprocessor"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class BatchPreprocessor:
    """A ``SpectrogramPreprocessor`` split for batch inference.

    Attributes
    ----------
    audio_steps : BasePreprocessor
        A copy of the preprocessor whose pipeline stops before ``to_spec`` (load, trim, any audio
        step): run per sample by the dataset.
    spectrogram_steps : BasePreprocessor
        A copy holding the pipeline from ``to_spec`` on: the per-sample reference, used for samples
        the batch step cannot take.
    to_spec : dict
        ``Spectrogram.from_audio`` keyword arguments.
    bandpass : dict or None
        ``Spectrogram.bandpass`` keyword arguments (``min_f``, ``max_f`` Hz, ``out_of_bounds_ok``).
    to_tensor, rescale : dict or None
        Parameters of those steps (None when bypassed).
    out_shape : (int, int, int)
        Height, width, channels of each sample's tensor.
    """

    audio_steps: object
    spectrogram_steps: object
    to_spec: dict
    bandpass: dict | None
    to_tensor: dict | None
    rescale: dict | None
    out_shape: tuple

    def tensors(self, samples, device=None):
        """Network input for a batch of samples whose ``data`` is their loaded, trimmed Audio.

        Samples of equal sample rate and length are transformed together; a group the batch step
        cannot take (audio shorter than a window, a band outside its frequencies) goes through
        :attr:`spectrogram_steps` one sample at a time.

        Parameters
        ----------
        samples : list of AudioSample
        device : torch.device, optional
            Where the tensors are made (CUDA: the STFT runs there too).

        Returns
        -------
        (torch.Tensor or None, list of int, list of (int, Exception))
            The tensors (n_ok, channels, height, width) float32, in order; the positions in
            ``samples`` they belong to; the positions that failed, with their error (a
            :class:`~opso_core.preprocess.utils.PreprocessingError`, as the per-sample path raises).

        Raises
        ------
        PreprocessingError
            Never for a failing sample (it is returned); only for an error outside the samples.
        """
        groups: dict[tuple, list[int]] = {}
        for i, sample in enumerate(samples):
            groups.setdefault((float(sample.data.sample_rate), len(sample.data.samples)), []).append(i)
        pieces = []  # (positions, their tensors)
        failures = []
        for (sample_rate, _), positions in groups.items():
            try:
                pieces.append((positions, self._group_tensors([samples[i].data.samples for i in positions],
                                                              sample_rate, device)))
            except OpsoError as exc:  # the per-sample steps raise the user-facing error, sample by sample
                logger.debug("batch preprocessing fell back to single samples: %s", exc)
                for i in positions:
                    try:
                        done = self.spectrogram_steps.forward(samples[i], bypass_augmentations=True)
                        pieces.append(([i], done.data.to(device=device, dtype=torch.float32)[None]))
                    except Exception as sample_exc:
                        failures.append((i, sample_exc))
        if not pieces:
            return None, [], failures
        positions = [i for piece_positions, _ in pieces for i in piece_positions]
        x = pieces[0][1] if len(pieces) == 1 else torch.cat([t for _, t in pieces])  # one group: no copy
        order = sorted(range(len(positions)), key=positions.__getitem__)
        if order != list(range(len(order))):  # several groups: back to the samples' order
            x = x[order]
        return x, sorted(positions), failures

    def _group_tensors(self, audio, sample_rate, device):
        params = SpectrogramParams.resolve(sample_rate, **self.to_spec)
        if not params.dB_scale:
            raise _NotBatchable("to_spec without dB_scale gives power, which to_tensor does not take")
        frequencies = params.frequencies(sample_rate)
        if self.bandpass is not None:
            low, high = self.bandpass["min_f"], self.bandpass["max_f"]
            if low >= high or (not self.bandpass.get("out_of_bounds_ok", True) and
                               (low < frequencies.min() or high > frequencies.max())):
                raise _NotBatchable(f"band {low}-{high} Hz: left to Spectrogram.bandpass to report")
        stacked = np.stack(audio)
        if device is not None and torch.device(device).type == "cuda":
            values = spectrograms_on_device(torch.from_numpy(stacked), sample_rate, params, device=device)
        else:
            values, frequencies, _ = spectrogram_batch(stacked, sample_rate, params)
        settings = TensorSettings.from_steps(self.out_shape, params.decibel_limits, bandpass=self.bandpass,
                                             to_tensor=self.to_tensor, rescale=self.rescale)
        return spectrograms_to_tensor(values, frequencies, settings, device=device)


class _NotBatchable(OpsoError):
    """A group of samples the batch step leaves to the per-sample steps."""


def batch_preprocessor(preprocessor, bypass_augmentations=True) -> BatchPreprocessor | None:
    """The batch form of ``preprocessor`` for inference, or None when it has none.

    It has one when it is a ``SpectrogramPreprocessor`` (not a subclass) whose active steps from
    ``to_spec`` on are a subset of ``to_spec, bandpass, to_tensor, rescale``, in that order, each the
    standard action (same class and function), with ``to_spec`` (in dB) and ``to_tensor`` active.
    Steps before ``to_spec`` (loading, trimming, audio augmentations) may be anything: they run per
    sample. The rule is :func:`opso_core.ml.model_input.batch_form` (the one ``inference_spec``
    applies); why a preprocessor has no batch form is logged at DEBUG level.

    Parameters
    ----------
    preprocessor : BasePreprocessor
    bypass_augmentations : bool
        As given to ``predict``: augmentations are then inactive.

    Returns
    -------
    BatchPreprocessor or None
    """
    try:
        form = batch_form(PreprocessingSteps.of_preprocessor(preprocessor), bypass_augmentations=bypass_augmentations)
    except NotBatchableError as exc:
        logger.debug("per-sample preprocessing: %s", exc)
        return None
    audio_steps = copy.copy(preprocessor)
    audio_steps.pipeline = preprocessor.pipeline.iloc[:form.split]
    spectrogram_steps = copy.copy(preprocessor)
    spectrogram_steps.pipeline = preprocessor.pipeline.iloc[form.split:]
    return BatchPreprocessor(audio_steps=audio_steps, spectrogram_steps=spectrogram_steps, to_spec=form.to_spec,
                             bandpass=form.bandpass, to_tensor=form.to_tensor, rescale=form.rescale,
                             out_shape=form.out_shape)
