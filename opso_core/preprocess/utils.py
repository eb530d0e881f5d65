"""Utilities for preprocessing (``opensoundscape.preprocess.utils``)."""

from __future__ import annotations

import inspect

import numpy as np

from opso_core.errors import OpsoIndexError, PreprocessingError

__all__ = ["PreprocessingError", "get_args", "get_reqd_args", "show_tensor", "show_tensor_grid"]


def get_args(func) -> dict:
    """Names and default values of ``func``'s parameters (``inspect.Parameter.empty`` when required)."""
    return {k: v.default for k, v in inspect.signature(func).parameters.items()
            if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}


def get_reqd_args(func) -> list:
    """Names of ``func``'s parameters that have no default."""
    return [k for k, v in inspect.signature(func).parameters.items()
            if v.default is inspect.Parameter.empty and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]


def _to_image(tensor, channel=None, transform_from_zero_centered=True, invert=True):
    arr = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
    if transform_from_zero_centered:
        arr = arr / 2 + 0.5
    if channel is not None:
        if not -arr.shape[0] <= channel < arr.shape[0]:
            raise OpsoIndexError(f"channel {channel} does not exist: the tensor has {arr.shape[0]} channel(s)")
        arr = arr[channel : channel + 1] if channel != -1 else arr[-1:]
    arr = np.clip(np.transpose(arr, (1, 2, 0)), 0, 1)
    if arr.shape[-1] == 1:
        arr = arr[:, :, 0]
    if invert:
        arr = 1 - arr
    return arr


def show_tensor(tensor, channel=None, transform_from_zero_centered=True, invert=True):
    """Plot a (channels, height, width) tensor as an image.

    ``transform_from_zero_centered`` maps [-1, 1] back to [0, 1] (undoing the default rescale);
    ``invert`` shows loud as dark.
    """
    from matplotlib import pyplot as plt

    arr = _to_image(tensor, channel, transform_from_zero_centered, invert)
    plt.imshow(arr, cmap="Greys" if arr.ndim == 2 else None, vmin=0, vmax=1)
    plt.axis("off")


def show_tensor_grid(tensors, columns, channel=None, transform_from_zero_centered=True, invert=True, labels=None):
    """Plot several tensors in a grid with ``columns`` columns, titled by ``labels``."""
    from matplotlib import pyplot as plt

    tensors = list(tensors)
    rows = int(np.ceil(len(tensors) / columns))
    fig = plt.figure(figsize=(columns * 3, rows * 3))
    for i, t in enumerate(tensors):
        ax = fig.add_subplot(rows, columns, i + 1)
        arr = _to_image(t, channel, transform_from_zero_centered, invert)
        ax.imshow(arr, cmap="Greys" if arr.ndim == 2 else None, vmin=0, vmax=1)
        ax.axis("off")
        if labels is not None:
            ax.set_title(str(labels[i]))
    return fig
