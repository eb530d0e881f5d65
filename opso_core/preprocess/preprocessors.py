"""Preprocessors: an ordered pipeline of actions and a way to run it (``opensoundscape.preprocess.preprocessors``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from opso_core.errors import (
    OpsoAssertionError,
    OpsoTypeAssertionError,
    OpsoTypeError,
    OpsoValueError,
)
from opso_core.preprocess import actions
from opso_core.preprocess.actions import (
    Action,
    AudioClipLoader,
    AudioTrim,
    BaseAction,
    Overlay,
    SpectrogramToTensor,
)
from opso_core.preprocess.utils import PreprocessingError
from opso_core.sample import AudioSample
from opso_core.spectrogram import Spectrogram

__all__ = ["BasePreprocessor", "SpectrogramPreprocessor", "is_standard_action"]


def is_standard_action(action, standard) -> bool:
    """Whether ``action`` is the same step as ``standard`` (a preprocessor's own, as built): the same
    class and, for an :class:`Action`, the same function. Parameters and flags may differ."""
    return type(action) is type(standard) and \
        getattr(action, "action_fn", None) == getattr(standard, "action_fn", None)


class BasePreprocessor:
    """An ordered ``pipeline`` (a pandas Series ``name -> Action``) applied by :meth:`forward`.

    Parameters
    ----------
    sample_duration : float, optional
        Seconds of audio per sample (actions such as AudioTrim use it).
    """

    def __init__(self, sample_duration=None):
        self.pipeline = pd.Series({}, dtype=object)
        self.sample_duration = sample_duration

    def __repr__(self):
        return f"Preprocessor with pipeline:\n{self.pipeline}"

    def insert_action(self, action_index, action, after_key=None, before_key=None):
        """Insert ``action`` named ``action_index`` after or before an existing key (default: at the end).

        In place. Names must be unique.
        """
        if after_key is not None and before_key is not None:
            raise OpsoValueError("give after_key or before_key, not both")
        if action_index in self.pipeline.index:
            raise OpsoAssertionError(f"an action named {action_index!r} is already in the pipeline; choose another name")
        if not isinstance(action, BaseAction):
            raise OpsoTypeError(f"action must be a BaseAction, got {type(action).__name__}")
        keys = list(self.pipeline.index)
        if after_key is None and before_key is None:
            position = len(keys)
        else:
            key = after_key if after_key is not None else before_key
            if key not in keys:
                raise OpsoValueError(f"no action named {key!r} in the pipeline ({keys})")
            position = keys.index(key) + (1 if after_key is not None else 0)
        new = pd.Series([action], index=[action_index], dtype=object)
        self.pipeline = pd.concat([self.pipeline.iloc[:position], new, self.pipeline.iloc[position:]])

    def remove_action(self, action_index):
        """Remove the action named ``action_index`` (in place)."""
        if action_index not in self.pipeline.index:
            raise OpsoValueError(f"no action named {action_index!r} in the pipeline")
        self.pipeline = self.pipeline.drop(action_index)

    def forward(self, sample, break_on_type=None, break_on_key=None, bypass_augmentations=False, trace=False):
        """Run the pipeline on one sample.

        Parameters
        ----------
        sample : AudioSample, str or path-like
        break_on_type : type, optional
            Stop before the first action of this class.
        break_on_key : str, optional
            Stop before the action with this name.
        bypass_augmentations : bool
            Skip actions with ``is_augmentation=True``.
        trace : bool
            Keep each step's output in ``sample.trace`` (a Series indexed like the pipeline).

        Returns
        -------
        AudioSample

        Raises
        ------
        PreprocessingError
            Any failure of an action, with the cause chained.
        """
        if break_on_key is not None and break_on_key not in self.pipeline.index:
            raise OpsoAssertionError(f"break_on_key {break_on_key!r} is not an action of the pipeline")
        sample = self._generate_sample(sample)
        if trace:
            sample.trace = pd.Series(index=self.pipeline.index, dtype=object)
        try:
            for key, action in self.pipeline.items():
                if (break_on_type is not None and type(action) is break_on_type) or key == break_on_key:
                    if trace:
                        sample.trace[key] = "## Pipeline terminated ##"
                    break
                if action.bypass:
                    if trace:
                        sample.trace[key] = "## Bypassed ##"
                    continue
                if action.is_augmentation and bypass_augmentations:
                    if trace:
                        sample.trace[key] = "## Bypassed ##"
                    continue
                action.go(sample)
                if trace:
                    sample.trace[key] = sample.data.clone() if hasattr(sample.data, "clone") else sample.data
        except Exception as exc:
            sample.preprocessing_exception = exc
            raise PreprocessingError(f"failed to preprocess sample from {sample.source}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        sample.preprocessor = None
        sample.target_duration = None
        return sample

    def _generate_sample(self, sample):
        if isinstance(sample, str | Path):
            sample = AudioSample(sample)
        elif not isinstance(sample, AudioSample):
            raise OpsoTypeAssertionError(f"sample must be an AudioSample or a file path, got {type(sample).__name__}")
        sample.preprocessor = self
        sample.target_duration = self.sample_duration
        return sample


class SpectrogramPreprocessor(BasePreprocessor):
    """Audio file -> spectrogram tensor, with augmentations (the CNN's default preprocessor).

    Pipeline (as OpenSoundscape 0.9.0): ``load_audio``, ``random_trim_audio`` (augmentation),
    ``trim_audio``, ``to_spec``, ``bandpass`` (0-11025 Hz, out of bounds not allowed),
    ``to_tensor``, [``overlay`` when ``overlay_df`` is given], ``time_mask``, ``frequency_mask``,
    ``add_noise`` (std 0.005), ``rescale`` ((x - 0.5) / 0.5), ``random_affine``.

    Parameters
    ----------
    sample_duration : float
        Seconds per sample; longer audio is trimmed, shorter extended with silence.
    overlay_df : pandas.DataFrame, optional
        Files (index) and labels to overlay as augmentation.
    out_shape : (int, int, int)
        Output (height, width, channels). [default: (224, 224, 3)]
    """

    def __init__(self, sample_duration, overlay_df=None, out_shape=(224, 224, 3)):
        super().__init__(sample_duration=sample_duration)
        self.out_shape = tuple(out_shape)
        steps = {
            "load_audio": AudioClipLoader(),
            "random_trim_audio": AudioTrim(is_augmentation=True, random_trim=True),
            "trim_audio": AudioTrim(),
            "to_spec": Action(Spectrogram.from_audio),
            "bandpass": Action(Spectrogram.bandpass, min_f=0, max_f=11025, out_of_bounds_ok=False),
            "to_tensor": SpectrogramToTensor(),
        }
        if overlay_df is not None:
            steps["overlay"] = Overlay(is_augmentation=True, overlay_df=overlay_df, update_labels=False)
        steps.update({
            "time_mask": Action(actions.time_mask, is_augmentation=True),
            "frequency_mask": Action(actions.frequency_mask, is_augmentation=True),
            "add_noise": Action(actions.tensor_add_noise, is_augmentation=True, std=0.005),
            "rescale": Action(actions.scale_tensor),
            "random_affine": Action(actions.torch_random_affine, is_augmentation=True),
        })
        self.pipeline = pd.Series(steps, dtype=object)

    def _generate_sample(self, sample):
        sample = super()._generate_sample(sample)
        sample.target_shape = self.out_shape
        return sample
