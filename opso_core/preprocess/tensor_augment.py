"""SpecAugment-style masks on batches of spectrogram tensors (``opensoundscape.preprocess.tensor_augment``)."""

from __future__ import annotations

import random

__all__ = ["freq_mask", "time_mask"]


def _mask(spec, width_max, max_masks, replace_with_zero, axis):
    cloned = spec.clone()
    size = cloned.shape[axis]
    for _ in range(random.randint(0, max_masks) if max_masks > 0 else 0):
        width = random.randrange(0, width_max + 1) if width_max > 0 else 0
        if width == 0 or width >= size:
            continue
        start = random.randrange(0, size - width)
        value = 0 if replace_with_zero else cloned.mean()
        index = [slice(None)] * cloned.ndim
        index[axis] = slice(start, start + width)
        cloned[tuple(index)] = value
    return cloned


def freq_mask(spec, F=30, max_masks=3, replace_with_zero=False):
    """Mask up to ``max_masks`` horizontal bands, each up to ``F`` rows, of a (batch, c, h, w) tensor.

    Masked values are the tensor's mean (or 0 with ``replace_with_zero``).
    """
    return _mask(spec, F, max_masks, replace_with_zero, axis=-2)


def time_mask(spec, T=40, max_masks=3, replace_with_zero=False):
    """Mask up to ``max_masks`` vertical bands, each up to ``T`` columns, of a (batch, c, h, w) tensor."""
    return _mask(spec, T, max_masks, replace_with_zero, axis=-1)
