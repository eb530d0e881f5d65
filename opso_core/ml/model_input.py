"""What input a model expects: clip length, sample rate, spectrogram and image settings.

:func:`inference_spec` reads them from a saved model's description (``opso_model.json`` in the file
``CNN.save`` writes; never the weights, never a pickle) or from a live ``CNN``, for code that makes
the network's input itself, a batch at a time: the pipeline's CNN stage computes the spectrograms
with :meth:`InferenceSpec.spectrogram_params` and the network input with
:meth:`InferenceSpec.tensor_settings` and :func:`opso_core.ml.spectrogram_tensors.spectrograms_to_tensor`.

Which preprocessors have such a batch form is decided in one place, :func:`batch_form`, over a
common representation of a pipeline (:class:`PreprocessingSteps`, made from a live preprocessor or
from a saved description). ``CNN.predict``'s batch preprocessing
(:func:`opso_core.ml.batch_preprocessing.batch_preprocessor`) applies the same rule, allowing any
steps before ``to_spec`` there (they run per sample); a spec describes the whole input, so its
steps before ``to_spec`` may only be ``load_audio`` and ``trim_audio``.

Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from opso_core.errors import OpsoError, OpsoTypeError, OpsoValueError
from opso_core.ml.tensor_settings import TensorSettings
from opso_core.stft import SpectrogramParams

__all__ = ["AUDIO_STEPS", "BATCH_STEPS", "BatchForm", "InferenceSpec", "NotBatchableError", "PreprocessingStep",
           "PreprocessingSteps", "SampleRateError", "batch_form", "inference_spec"]

#: the preprocessor class whose steps have a batch form
BATCH_CLASS = "SpectrogramPreprocessor"
#: the steps from ``to_spec`` on that have a batch form, in the order they must run
BATCH_STEPS = ("to_spec", "bandpass", "to_tensor", "rescale")
#: the steps before ``to_spec`` that an :class:`InferenceSpec` describes (loading and trimming the clip)
AUDIO_STEPS = ("load_audio", "trim_audio")
#: stands in for a sample rate not known from the model, where only rate-free checks count (Hz)
_PROVISIONAL_SAMPLE_RATE_HZ = 32000


class NotBatchableError(OpsoValueError):
    """The model's preprocessing has no batch form; the message says which class or step is why."""


class SampleRateError(OpsoValueError):
    """Audio at the given sample rate cannot go through the model's preprocessing (every sample would fail)."""


@dataclasses.dataclass(frozen=True)
class PreprocessingStep:
    """One action of a preprocessor's pipeline, as :func:`batch_form` sees it.

    Attributes
    ----------
    name : str
        The action's key in the pipeline (``"to_spec"``, ...).
    bypass, is_augmentation : bool
        The action's flags.
    is_standard : bool
        The action is the preprocessor class's own action of that name (same class and function;
        parameters may differ), not one inserted or replaced by the user.
    params : dict
        The action's parameters (for ``to_spec``: ``Spectrogram.from_audio`` keyword arguments).
    """

    name: str
    bypass: bool
    is_augmentation: bool
    is_standard: bool
    params: dict


@dataclasses.dataclass(frozen=True)
class PreprocessingSteps:
    """A preprocessor's class, output shape and pipeline, from a live object or a saved description.

    Attributes
    ----------
    preprocessor_class : str
        The class name for opso's own classes (``"SpectrogramPreprocessor"``), else
        ``module.QualifiedName``.
    out_shape : object
        The preprocessor's ``out_shape`` as found: (height, width, channels) when valid.
    steps : tuple of PreprocessingStep
        In pipeline order.
    """

    preprocessor_class: str
    out_shape: object
    steps: tuple[PreprocessingStep, ...]

    @classmethod
    def of_preprocessor(cls, preprocessor) -> PreprocessingSteps:
        """The steps of a live preprocessor (``is_standard`` by comparison with a freshly built one)."""
        from opso_core.preprocess import preprocessors as pp

        kind = type(preprocessor)
        name = kind.__name__ if getattr(pp, kind.__name__, None) is kind else f"{kind.__module__}.{kind.__qualname__}"
        reference = pp.SpectrogramPreprocessor(1.0).pipeline if kind is pp.SpectrogramPreprocessor else None
        pipeline = getattr(preprocessor, "pipeline", None)
        steps = []
        for key, action in (pipeline.items() if pipeline is not None else ()):
            standard = reference is not None and key in reference.index and \
                pp.is_standard_action(action, reference[key])
            steps.append(PreprocessingStep(name=key, bypass=bool(getattr(action, "bypass", False)),
                                           is_augmentation=bool(getattr(action, "is_augmentation", False)),
                                           is_standard=standard, params=dict(getattr(action, "params", {}))))
        return cls(name, getattr(preprocessor, "out_shape", None), tuple(steps))

    @classmethod
    def of_description(cls, description: dict) -> PreprocessingSteps:
        """The steps of a saved preprocessor (the ``"preprocessor"`` entry of a model description).

        A saved description names its class's own actions only (``CNN.save`` refuses others, and
        loading builds each action from the class's pipeline by name), so every step is standard.
        """
        from opso_core.ml.persistence import from_json_value

        init = from_json_value(description["init"])
        steps = tuple(PreprocessingStep(name=key, bypass=bool(saved["bypass"]),
                                        is_augmentation=bool(saved["is_augmentation"]), is_standard=True,
                                        params=from_json_value(saved["params"]))
                      for key, saved in description["actions"].items())
        return cls(description["class"], init.get("out_shape"), steps)


@dataclasses.dataclass(frozen=True)
class BatchForm:
    """The active inference steps of a preprocessor that has a batch form (:func:`batch_form`).

    Attributes
    ----------
    split : int
        Position of ``to_spec`` in the pipeline: the steps before it act on audio.
    load_audio, trim_audio : dict or None
        Parameters of those steps when active (only with ``any_audio_steps=False``).
    to_spec : dict
        ``Spectrogram.from_audio`` keyword arguments.
    bandpass : dict or None
        ``Spectrogram.bandpass`` keyword arguments (``min_f``, ``max_f`` Hz, ``out_of_bounds_ok``).
    to_tensor, rescale : dict or None
        Parameters of those steps (None when bypassed).
    out_shape : (int, int, int)
        Height, width, channels.
    """

    split: int
    load_audio: dict | None
    trim_audio: dict | None
    to_spec: dict
    bandpass: dict | None
    to_tensor: dict | None
    rescale: dict | None
    out_shape: tuple[int, int, int]


def _no_batch_form(why: str) -> NotBatchableError:
    return NotBatchableError(f"the model's preprocessing has no batch form: {why}")


def batch_form(steps: PreprocessingSteps, *, bypass_augmentations=True, any_audio_steps=True) -> BatchForm:
    """The rule for which preprocessors have a batch form at inference.

    One has when it is opso's ``SpectrogramPreprocessor`` (not a subclass) with a valid
    ``out_shape``, and its active steps from ``to_spec`` on (not bypassed; augmentations are
    inactive when ``bypass_augmentations``) are a subset of ``to_spec, bandpass, to_tensor,
    rescale``, in that order, each the class's own action, not an augmentation, with ``to_spec`` (in
    dB) and ``to_tensor`` active, and settings that resolve. Before ``to_spec``: anything when
    ``any_audio_steps`` (they run per sample, as ``CNN.predict`` does); else only the class's own
    ``load_audio`` (active) and ``trim_audio``.

    Parameters
    ----------
    steps : PreprocessingSteps
        ``PreprocessingSteps.of_preprocessor(p)`` or ``PreprocessingSteps.of_description(d)``.
    bypass_augmentations : bool
        As given to ``predict``.
    any_audio_steps : bool
        Whether steps before ``to_spec`` may be anything.

    Returns
    -------
    BatchForm

    Raises
    ------
    NotBatchableError
        Saying which class, step or setting has no batch form.
    """
    if steps.preprocessor_class != BATCH_CLASS:
        raise _no_batch_form(f"the preprocessor is a {steps.preprocessor_class}; only opso's {BATCH_CLASS} "
                             "(not a subclass) has one")
    names = [step.name for step in steps.steps]
    if "to_spec" not in names:
        raise _no_batch_form("the preprocessor has no 'to_spec' step")
    try:
        out_shape = tuple(steps.out_shape)
    except TypeError:
        out_shape = ()
    if len(out_shape) != 3 or not all(isinstance(v, int | np.integer) and v > 0 for v in out_shape):
        raise _no_batch_form(f"out_shape {steps.out_shape!r} is not (height, width, channels) of positive "
                             "whole numbers")
    split = names.index("to_spec")

    def active(step):
        return not step.bypass and not (step.is_augmentation and bypass_augmentations)

    audio = {}
    if not any_audio_steps:
        for step in filter(active, steps.steps[:split]):
            if step.is_augmentation:
                raise _no_batch_form(f"augmentation {step.name!r} is active (bypass_augmentations=False)")
            if step.name not in AUDIO_STEPS or not step.is_standard:
                raise _no_batch_form(f"step {step.name!r} before to_spec is not {BATCH_CLASS}'s own "
                                     f"{' or '.join(AUDIO_STEPS)}")
            audio[step.name] = dict(step.params)
        if "load_audio" not in audio:
            raise _no_batch_form("it has no active 'load_audio' step")
    batch = {}
    for step in filter(active, steps.steps[split:]):
        if step.is_augmentation:
            raise _no_batch_form(f"augmentation {step.name!r} after to_spec is active (bypass_augmentations=False)")
        if step.name not in BATCH_STEPS:
            raise _no_batch_form(f"step {step.name!r} after to_spec is not one of {', '.join(BATCH_STEPS)}")
        if not step.is_standard:
            raise _no_batch_form(f"step {step.name!r} is not {BATCH_CLASS}'s own {step.name!r} action "
                                 "(it was replaced)")
        batch[step.name] = dict(step.params)
    in_order = [name for name in BATCH_STEPS if name in batch]
    if list(batch) != in_order:
        raise _no_batch_form(f"its steps {list(batch)} run in another order than {in_order}")
    for needed in ("to_spec", "to_tensor"):
        if needed not in batch:
            raise _no_batch_form(f"its {needed!r} step is bypassed")
    to_spec = batch["to_spec"]
    rate = (audio.get("load_audio") or {}).get("sample_rate") or _PROVISIONAL_SAMPLE_RATE_HZ
    try:
        params = SpectrogramParams.resolve(rate, **to_spec)
        TensorSettings.from_steps(out_shape, params.decibel_limits, bandpass=batch.get("bandpass"),
                                  to_tensor=batch["to_tensor"], rescale=batch.get("rescale"))
    except (OpsoError, TypeError, KeyError, ValueError) as exc:  # the per-sample steps report these their way
        raise _no_batch_form(f"its step settings do not resolve ({type(exc).__name__}: {exc})") from exc
    if not params.dB_scale:
        raise _no_batch_form("'to_spec' has dB_scale=False (power, which to_tensor does not take)")
    return BatchForm(split=split, load_audio=audio.get("load_audio"), trim_audio=audio.get("trim_audio"),
                     to_spec=to_spec, bandpass=batch.get("bandpass"), to_tensor=batch["to_tensor"],
                     rescale=batch.get("rescale"), out_shape=tuple(int(v) for v in out_shape))


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """The input a model expects at inference (augmentations bypassed), a batch at a time.

    A clip of ``sample_duration_s`` seconds, resampled to ``sample_rate_hz``, becomes a spectrogram
    (``to_spec``), keeps the ``bandpass`` rows, and becomes an image of ``out_shape`` (``to_tensor``)
    scaled by ``rescale``: a float32 tensor of shape (channels, height, width) per clip.

    Attributes
    ----------
    classes : tuple of str
        The model's classes, in the order of its outputs.
    sample_duration_s : float
        Clip length the model takes (s).
    sample_rate_hz : int or None
        The ``load_audio`` step's resample rate (Hz); None: the audio's own rate.
    to_spec : dict
        ``Spectrogram.from_audio`` keyword arguments, as saved.
    bandpass : dict or None
        ``{"min_f", "max_f"}`` (Hz) and ``out_of_bounds_ok``; None when bypassed.
    to_tensor : dict or None
        ``SpectrogramToTensor`` parameters (``colormap``, ``invert``, ...).
    rescale : dict or None
        ``scale_tensor`` parameters (``input_mean``, ``input_std``); None when bypassed.
    out_shape : (int, int, int)
        Height, width, channels of each clip's tensor.
    """

    classes: tuple[str, ...]
    sample_duration_s: float
    sample_rate_hz: int | None
    to_spec: dict
    bandpass: dict | None
    to_tensor: dict | None
    rescale: dict | None
    out_shape: tuple[int, int, int]

    def spectrogram_params(self, sample_rate_hz: int) -> SpectrogramParams:
        """The resolved ``to_spec`` settings for audio at ``sample_rate_hz`` (Hz).

        Parameters
        ----------
        sample_rate_hz : int
            The rate of the audio the spectrogram is computed from: :attr:`sample_rate_hz` when not None.

        Raises
        ------
        OpsoValueError
            The settings do not resolve at that rate (a window of 0 samples, ...).
        """
        return SpectrogramParams.resolve(sample_rate_hz, **self.to_spec)

    def tensor_settings(self, sample_rate_hz: int) -> TensorSettings:
        """The settings of the steps between the dB spectrogram and the network (bandpass, image
        scaling and resize to ``out_shape``, rescale) for audio at ``sample_rate_hz`` (Hz), as
        :func:`opso_core.ml.spectrogram_tensors.spectrograms_to_tensor` takes them."""
        return TensorSettings.from_steps(self.out_shape, self.spectrogram_params(sample_rate_hz).decibel_limits,
                                         bandpass=self.bandpass, to_tensor=self.to_tensor, rescale=self.rescale)

    def check_sample_rate(self, sample_rate_hz: int) -> None:
        """Raise if audio at ``sample_rate_hz`` (Hz) cannot go through the preprocessing at all: a
        ``bandpass`` with ``out_of_bounds_ok=False`` reaching below 0 Hz or above the Nyquist
        frequency (``sample_rate_hz / 2``), which fails every sample.

        Raises
        ------
        SampleRateError
            An :class:`~opso_core.errors.OpsoValueError`, saying the band and the rate.
        """
        band = self.bandpass
        if band is None or band.get("out_of_bounds_ok", True):
            return
        nyquist = sample_rate_hz / 2
        if band["min_f"] < 0 or band["max_f"] > nyquist:
            raise SampleRateError(
                f"the model bandpasses {band['min_f']}-{band['max_f']} Hz with out_of_bounds_ok=False, but "
                f"audio at {sample_rate_hz} Hz reaches only {nyquist} Hz; every sample would fail (use audio "
                "at a higher sample rate, or change the model's bandpass)")


def _spec(classes, sample_duration, form: BatchForm) -> InferenceSpec:
    rate = (form.load_audio or {}).get("sample_rate")
    return InferenceSpec(classes=tuple(str(c) for c in classes), sample_duration_s=float(sample_duration),
                         sample_rate_hz=None if rate is None else int(rate), to_spec=form.to_spec,
                         bandpass=form.bandpass, to_tensor=form.to_tensor, rescale=form.rescale,
                         out_shape=form.out_shape)


def inference_spec(source) -> InferenceSpec:
    """What input a model expects, from its saved description or a live model.

    Parameters
    ----------
    source : bytes, str, path-like, file-like, dict or CNN
        A model file written by ``CNN.save`` (its bytes, its path, or an open binary file): only
        its description is read, never the weights, and nothing is unpickled; a parsed description
        (:func:`opso_core.ml.persistence.read_description`); or a live ``CNN`` (its
        ``preprocessor``, ``classes``).

    Returns
    -------
    InferenceSpec

    Raises
    ------
    NotBatchableError
        The model's preprocessing has no batch form (another preprocessor class, a step that is not
        one of ``load_audio, trim_audio, to_spec, bandpass, to_tensor, rescale``, a replaced step, ...):
        the message names the class or step.
    PickleNotAllowedError
        The file is a pickled model (``save(..., pickle=True)``, OpenSoundscape's ``.model``).
    OpsoValueError
        The file is not a model in opso's safe format (an audio file, a damaged description).
    FileNotFoundError
        No file at the path.
    OpsoTypeError
        ``source`` is none of the above.
    """
    from opso_core.ml import persistence

    if isinstance(source, dict):
        description = persistence.check_description(source)
    elif isinstance(source, bytes | bytearray | memoryview):
        description = persistence.read_description(bytes(source))
    elif isinstance(source, str | os.PathLike) or hasattr(source, "read"):
        description = persistence.read_description(source)
    elif hasattr(source, "preprocessor") and hasattr(source, "classes"):
        preprocessor = source.preprocessor
        form = batch_form(PreprocessingSteps.of_preprocessor(preprocessor), any_audio_steps=False)
        return _spec(source.classes, preprocessor.sample_duration, form)
    else:
        raise OpsoTypeError(f"inference_spec takes a model file (bytes, path, file-like), a model description "
                            f"or a CNN, not a {type(source).__name__}")
    form = batch_form(PreprocessingSteps.of_description(description["preprocessor"]), any_audio_steps=False)
    return _spec(description["classes"], description["sample_duration"], form)
