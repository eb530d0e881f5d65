"""The settings of ``SpectrogramPreprocessor``'s steps between a spectrogram and the network.

:class:`TensorSettings` is what :func:`opso_core.ml.spectrogram_tensors.spectrograms_to_tensor`
needs to turn a batch of dB spectrograms into network input. It lives apart from the tensor code so
that describing a model's input (:mod:`opso_core.ml.model_input`) does not import torch.
"""

from __future__ import annotations

import dataclasses

from opso_core.errors import OpsoValueError

__all__ = ["TensorSettings"]


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

    @classmethod
    def from_steps(cls, out_shape, decibel_limits, *, bandpass=None, to_tensor=None, rescale=None) -> TensorSettings:
        """The settings of ``SpectrogramPreprocessor`` steps given by their parameters.

        Parameters
        ----------
        out_shape : (int, int, int)
            The preprocessor's ``out_shape`` (height, width, channels).
        decibel_limits : (float, float)
            The ``to_spec`` step's (dB).
        bandpass, to_tensor, rescale : dict or None
            ``params`` of the ``bandpass`` (``min_f``, ``max_f`` in Hz), ``to_tensor`` (``colormap``,
            ``invert``) and ``rescale`` (``input_mean``, ``input_std``) steps; None where the step is
            bypassed or absent.
        """
        to_tensor = to_tensor or {}
        return cls(decibel_limits=(float(decibel_limits[0]), float(decibel_limits[1])),
                   bandpass_hz=None if bandpass is None else (float(bandpass["min_f"]), float(bandpass["max_f"])),
                   out_shape=tuple(int(v) for v in out_shape), invert=bool(to_tensor.get("invert", False)),
                   colormap=to_tensor.get("colormap"),
                   rescale=None if rescale is None else (float(rescale.get("input_mean", 0.5)),
                                                         float(rescale.get("input_std", 0.5))))
