"""Augmentations of PIL images (``opensoundscape.preprocess.img_augment``)."""

from __future__ import annotations

import random

from PIL import Image

__all__ = ["time_split"]


def time_split(img: Image.Image, seed=None) -> Image.Image:
    """Cut an image at a random column and swap the left and right parts (``abcdef`` -> ``defabc``)."""
    rng = random.Random(seed)
    width, height = img.size
    cut = rng.randint(0, width - 1) if width > 1 else 0
    out = Image.new(img.mode, img.size)
    out.paste(img.crop((cut, 0, width, height)), (0, 0))
    out.paste(img.crop((0, 0, cut, height)), (width - cut, 0))
    return out
