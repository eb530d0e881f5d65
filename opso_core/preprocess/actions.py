"""Actions: the steps of a preprocessing pipeline (``opensoundscape.preprocess.actions``).

An action takes an :class:`~opso_core.sample.AudioSample` and transforms its ``data`` in place
(a path becomes Audio, Audio becomes a Spectrogram, a Spectrogram a tensor, ...). Its settings are
``params``, a pandas Series that can be edited directly or with :meth:`BaseAction.set`.
``bypass=True`` skips an action; ``is_augmentation=True`` marks it as one that
``bypass_augmentations`` skips (prediction, validation).
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pandas as pd

from opso_core.audio import Audio, mix
from opso_core.errors import OpsoAssertionError, OpsoValueError
from opso_core.preprocess import tensor_augment as tensaug
from opso_core.preprocess.utils import PreprocessingError, get_args, get_reqd_args
from opso_core.sample import AudioSample

__all__ = [
    "Action", "AudioClipLoader", "AudioTrim", "BaseAction", "Overlay", "SpectrogramToTensor",
    "audio_add_noise", "audio_random_gain", "frequency_mask", "image_to_tensor", "overlay",
    "scale_tensor", "tensor_add_noise", "time_mask", "torch_color_jitter", "torch_random_affine",
    "trim_audio",
]


class BaseAction:
    """Parent of all actions: ``params``, ``bypass``, ``is_augmentation``, ``set``/``get``, ``go``."""

    def __init__(self):
        self.params = pd.Series(dtype=object)
        self.returns_labels = False
        self.is_augmentation = False
        self.bypass = False

    def __repr__(self):
        return f"{'## Bypassed ## ' if self.bypass else ''}{'Augmentation ' if self.is_augmentation else ''}Action"

    def go(self, x, **kwargs):
        """Transform ``x`` (an :class:`~opso_core.sample.AudioSample`) in place (subclasses override)."""

    def set(self, **kwargs):
        """Change parameters; only names already in ``params`` are accepted."""
        unknown = set(kwargs) - set(self.params.index)
        if unknown:
            raise OpsoAssertionError(f"unexpected parameters {sorted(unknown)}; this action's parameters and "
                                 f"current values are:\n{self.params}")
        for key, value in kwargs.items():
            self.params[key] = value

    def get(self, arg):
        """Current value of parameter ``arg``."""
        return self.params[arg]


class Action(BaseAction):
    """An action that calls ``fn(sample.data, **params)``.

    ``fn`` takes the data as its first argument: a function (``trim_audio(audio, ...)``) or a
    method (``Spectrogram.bandpass(self, ...)``). Its other parameters and their defaults become
    ``params``; required ones must be given as keyword arguments.
    """

    def __init__(self, fn, is_augmentation=False, **kwargs):
        super().__init__()
        self.action_fn = fn
        self.is_augmentation = is_augmentation
        args = get_args(fn)
        self.params = pd.Series(dict(list(args.items())[1:]), dtype=object)
        self.set(**kwargs)
        missing = set(get_reqd_args(fn)[1:]) - set(kwargs)
        if missing:
            raise OpsoAssertionError(f"these required arguments of {getattr(fn, '__name__', fn)} were not given: "
                                 f"{sorted(missing)}")

    def __repr__(self):
        return (f"{'## Bypassed ## ' if self.bypass else ''}{'Augmentation ' if self.is_augmentation else ''}"
                f"Action calling {self.action_fn}")

    def go(self, sample, **kwargs):
        sample.data = self.action_fn(sample.data, **dict(self.params, **kwargs))


class AudioClipLoader(Action):
    """Load the sample's clip (``start_time``, ``duration``) of its file with :meth:`Audio.from_file`.

    Parameters are those of ``Audio.from_file`` except ``offset`` and ``duration``, which come from
    the sample.
    """

    def __init__(self, **kwargs):
        super().__init__(Audio.from_file, **kwargs)
        self.params = self.params.drop(["offset", "duration"])

    def go(self, sample, **kwargs):
        offset = 0 if sample.start_time is None else sample.start_time
        sample.data = self.action_fn(sample.data, offset=offset, duration=sample.duration,
                                     **dict(self.params, **kwargs))


class AudioTrim(Action):
    """Trim (or extend with silence) the sample's audio to the preprocessor's sample duration."""

    def __init__(self, **kwargs):
        super().__init__(trim_audio, **kwargs)

    def go(self, sample, **kwargs):
        self.action_fn(sample, **dict(self.params, **kwargs))


def trim_audio(sample, extend=True, random_trim=False, tol=1e-5):
    """Trim a sample's audio to ``sample.target_duration`` seconds (AudioSample -> AudioSample).

    Parameters
    ----------
    sample : AudioSample
        ``data`` is Audio; ``target_duration`` the wanted length (None: no change).
    extend : bool
        Pad audio shorter than the target with silence; otherwise raise.
    random_trim : bool
        Take the clip from a uniformly random start instead of from 0.
    tol : float
        Seconds of shortfall tolerated before extending.
    """
    audio = sample.data
    if len(audio.samples) == 0:
        raise OpsoValueError("received zero-length audio")
    if sample.target_duration is not None:
        if audio.duration + tol <= sample.target_duration:
            if not extend:
                raise OpsoValueError(
                    f"the audio ({audio.duration} s) is shorter than the sample duration "
                    f"({sample.target_duration} s); use extend=True to pad it with silence")
            audio = audio.extend(sample.target_duration)
        start_time = np.random.uniform() * (audio.duration - sample.target_duration) if random_trim else 0.0
        audio = audio.trim(start_time, start_time + sample.target_duration)
        sample.data = audio
        sample.start_time = start_time if sample.start_time is None else sample.start_time + start_time
        sample.duration = sample.target_duration
    return sample


class SpectrogramToTensor(BaseAction):
    """Turn the sample's Spectrogram into a float tensor of shape ``sample.target_shape`` (h, w, c)
    -> (c, h, w), values in [0, 1] (``Spectrogram.to_image``)."""

    def __init__(self, colormap=None, invert=False):
        super().__init__()
        self.params["colormap"] = colormap
        self.params["invert"] = invert

    def go(self, sample, **kwargs):
        params = dict(self.params, **kwargs)
        shape = sample.target_shape
        sample.data = sample.data.to_image(shape=shape[0:2], channels=shape[2], return_type="torch",
                                           colormap=params["colormap"], invert=params["invert"])


def audio_random_gain(audio, dB_range=(-30, 0), clip_range=(-1, 1)):
    """Apply a gain (dB) drawn uniformly from ``dB_range`` (Audio -> Audio)."""
    return audio.apply_gain(dB=random.uniform(dB_range[0], dB_range[1]), clip_range=clip_range)


def audio_add_noise(audio, noise_dB=-30, signal_dB=0, color="white"):
    """Mix noise of ``color`` at ``noise_dB`` dBFS into the audio after a ``signal_dB`` gain.

    Either level may be a (min, max) range to draw from uniformly (Audio -> Audio).
    """
    if np.ndim(noise_dB) > 0:
        noise_dB = random.uniform(noise_dB[0], noise_dB[1])
    if np.ndim(signal_dB) > 0:
        signal_dB = random.uniform(signal_dB[0], signal_dB[1])
    noise = Audio.noise(duration=audio.duration, sample_rate=audio.sample_rate, color=color, dBFS=noise_dB)
    return mix([audio, noise], gain=[signal_dB, 0])


def torch_color_jitter(tensor, brightness=0.3, contrast=0.3, saturation=0.3, hue=0):
    """torchvision ``ColorJitter`` (Tensor -> Tensor)."""
    from torchvision import transforms

    return transforms.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)(tensor)


def torch_random_affine(tensor, degrees=0, translate=(0.3, 0.1), fill=0):
    """torchvision ``RandomAffine`` with ``fill`` on every channel (Tensor -> Tensor)."""
    from torchvision import transforms

    channels = tensor.shape[-3]
    return transforms.RandomAffine(degrees=degrees, translate=translate, fill=[fill] * channels)(tensor)


def image_to_tensor(img, greyscale=False):
    """PIL image in [0, 255] to a float tensor in [0, 1], RGB (3 channels) or greyscale (1)."""
    from torchvision import transforms

    img = img.convert("L" if greyscale else "RGB")
    return transforms.ToTensor()(img)


def scale_tensor(tensor, input_mean=0.5, input_std=0.5):
    """``(x - input_mean) / input_std`` with a fixed mean and std (not per image) (Tensor -> Tensor)."""
    from torchvision import transforms

    return transforms.Normalize(input_mean, input_std)(tensor)


def time_mask(tensor, max_masks=3, max_width=0.2):
    """Mask up to ``max_masks`` vertical bars, each up to ``max_width`` of the width (Tensor -> Tensor)."""
    width_px = int(tensor.shape[-1] * max_width)
    return tensaug.time_mask(tensor.unsqueeze(0), T=width_px, max_masks=max_masks).squeeze(0)


def frequency_mask(tensor, max_masks=3, max_width=0.2):
    """Mask up to ``max_masks`` horizontal bars, each up to ``max_width`` of the height (Tensor -> Tensor)."""
    height_px = int(tensor.shape[-2] * max_width)
    return tensaug.freq_mask(tensor.unsqueeze(0), F=height_px, max_masks=max_masks).squeeze(0)


def tensor_add_noise(tensor, std=1):
    """Add Gaussian noise with standard deviation ``std`` (Tensor -> Tensor)."""
    import torch

    return tensor + torch.empty_like(tensor).normal_(mean=0, std=std)


class Overlay(Action):
    """Blend other samples (from ``overlay_df``) into the sample; an augmentation.

    Required: ``overlay_df`` (audio files as index, class columns or none) and ``update_labels``.
    See :func:`overlay` for the other parameters.
    """

    def __init__(self, is_augmentation=True, **kwargs):
        if "overlay_df" not in kwargs:
            raise OpsoValueError("Overlay needs overlay_df (a DataFrame of audio files as index)")
        super().__init__(overlay, is_augmentation=is_augmentation, **kwargs)
        self.returns_labels = True
        overlay_df = kwargs["overlay_df"]
        overlay_df = overlay_df[~overlay_df.index.duplicated()]
        if "different" in overlay_df.columns and kwargs.get("overlay_class") == "different":
            warnings.warn("a class is named 'different', but overlay_class='different' means 'any file "
                          "sharing no class with the sample'; consider renaming the class", stacklevel=2)
        self.overlay_df = overlay_df
        self.params = self.params.drop("overlay_df")

    def go(self, sample, **kwargs):
        self.action_fn(sample, overlay_df=self.overlay_df, **dict(self.params, **kwargs))


def overlay(sample, overlay_df, update_labels, overlay_class=None, overlay_prob=1, max_overlay_num=1,
            overlay_weight=0.5):
    """Blend samples from ``overlay_df`` into ``sample`` (weighted average of the tensors).

    Parameters
    ----------
    sample : AudioSample
        With ``labels`` and ``preprocessor`` set (the overlay samples are preprocessed by the same
        pipeline up to the Overlay action).
    overlay_df : pandas.DataFrame
        Audio files as index, class columns (0/1) or none.
    update_labels : bool
        Add the overlaid sample's labels to the sample's.
    overlay_class : None, "different" or a class name
        Draw any file, a file sharing no positive class with the sample, or a file of that class.
    overlay_prob : float
        Probability of each further overlay.
    max_overlay_num : int
        At most this many overlays.
    overlay_weight : float or (float, float)
        Weight of the overlay in (0, 1), or a range to draw it from.
    """
    if not (overlay_class in ("different", None) or overlay_class in overlay_df.columns):
        raise OpsoAssertionError(f"overlay_class must be 'different', None or a column of overlay_df; got {overlay_class!r}")
    if not 0 <= overlay_prob <= 1:
        raise OpsoAssertionError(f"overlay_prob must be in [0, 1], got {overlay_prob}")
    weights = list(overlay_weight) if np.ndim(overlay_weight) > 0 else [overlay_weight]
    if len(weights) not in (1, 2) or not all(0 < w < 1 for w in weights) or (len(weights) == 2 and weights[1] <= weights[0]):
        raise OpsoAssertionError(f"overlay_weight must be in (0, 1) or an increasing (min, max) pair in it; got {overlay_weight!r}")
    if overlay_class is not None:
        if len(overlay_df.columns) == 0:
            raise OpsoAssertionError("overlay_df must have label columns when overlay_class is given")
        if overlay_class != "different" and overlay_df[overlay_class].sum() == 0:
            raise OpsoAssertionError(f"overlay_df has no positive labels for class {overlay_class!r}")
    if len(overlay_df.columns) > 0 and sample.labels is not None and list(overlay_df.columns) != list(sample.labels.index):
        raise OpsoAssertionError("overlay_df must have the same class columns as the sample's labels, or none")

    performed = 0
    while overlay_prob > np.random.uniform() and performed < max_overlay_num:
        if overlay_class is None:
            overlay_path = random.choice(list(overlay_df.index))
        elif overlay_class == "different":
            for _ in range(100):
                candidate = random.randint(0, len(overlay_df) - 1)
                if not np.logical_and(overlay_df.values[candidate, :], sample.labels.values).any():
                    break
            else:
                raise OpsoValueError("no overlay sample without the sample's classes found in 100 random draws")
            overlay_path = overlay_df.index[candidate]
        else:
            overlay_path = np.random.choice(overlay_df[overlay_df[overlay_class] == 1].index.values)
        try:
            overlay_sample = AudioSample.from_series(overlay_df.loc[overlay_path])
            overlay_sample = sample.preprocessor.forward(overlay_sample, break_on_type=Overlay)
        except PreprocessingError as exc:
            overlay_df = overlay_df.drop(overlay_path)
            warnings.warn(f"invalid overlay sample {overlay_path}: {exc}", stacklevel=2)
            if len(overlay_df) < 1:
                raise OpsoValueError("tried every overlay_df sample; none could be preprocessed") from exc
            continue
        weight = random.uniform(weights[0], weights[1]) if len(weights) == 2 else weights[0]
        sample.data = sample.data * (1 - weight) + overlay_sample.data * weight
        if update_labels and overlay_sample.labels is not None and len(overlay_sample.labels) > 0:
            sample.labels = pd.Series(np.logical_or(sample.labels.values, overlay_sample.labels.values).astype(int),
                                      index=sample.labels.index, name=sample.labels.name)
        performed += 1
    return sample
