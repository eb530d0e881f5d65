"""Image resizing as OpenSoundscape 0.9.0 does it (``skimage.transform.resize``), without scikit-image.

0.9.0 turns spectrograms into images with ``skimage.transform.resize(array, (h, w, channels))``: its
defaults smooth each axis that shrinks with a Gaussian of standard deviation ``(factor - 1) / 2``
(``scipy.ndimage.gaussian_filter``, mirrored edges, kernel radius ``int(4 sigma + 0.5)``), then
interpolate linearly at ``(i + 0.5) * factor - 0.5`` (``scipy.ndimage.zoom(order=1,
grid_mode=True)``, mirrored edges), where ``factor = n_in / n_out``. Both steps are linear and act
on one axis at a time, so resizing an axis is one matrix, ``R = Z @ G`` of shape ``(n_out, n_in)``,
and an image is resized as ``R_h @ image @ R_w.T``. :func:`resize_matrix` builds that matrix; numpy
(``Spectrogram.to_image``) and torch (batches on a GPU) apply the same one, so the CNN's input is the
same on every path and equals 0.9.0's to float rounding.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from opso_core.errors import OpsoValueError

__all__ = ["resize_image", "resize_matrix"]


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Indices (or coordinates) reflected into ``[0, n - 1]`` about the edge samples, which are not
    repeated (scipy.ndimage's ``mirror``: d c b | a b c d | c b a)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index > n - 1, period - index, index)


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter1d(x, sigma, mode="mirror")`` as an (n, n) matrix."""
    radius = int(4.0 * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return np.eye(n)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / sigma**2 * offsets.astype(np.float64) ** 2)
    kernel /= kernel.sum()
    matrix = np.zeros((n, n))
    rows = np.arange(n)[:, None]
    np.add.at(matrix, (np.broadcast_to(rows, (n, len(offsets))), _mirror(rows + offsets, n)),
              np.broadcast_to(kernel, (n, len(offsets))))
    return matrix


def _zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``scipy.ndimage.zoom(x, n_out / n_in, order=1, mode="mirror", grid_mode=True)`` as a matrix."""
    coords = _mirror((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, n_in)
    lower = np.floor(coords).astype(np.int64)
    weight = coords - lower
    upper = _mirror(lower + 1, n_in)
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, np.minimum(lower, n_in - 1)), 1.0 - weight)
    np.add.at(matrix, (rows, upper), weight)
    return matrix


@lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The linear map that resizes one axis from ``n_in`` to ``n_out`` samples as 0.9.0's image resize.

    Returns
    -------
    numpy.ndarray, shape (n_out, n_in), float64
        Read-only (cached). Rows sum to 1; every weight is >= 0, so outputs stay within the input's range.
    """
    if int(n_in) != n_in or int(n_out) != n_out or n_in < 1 or n_out < 1:
        raise OpsoValueError(f"axis lengths must be whole numbers >= 1, got {n_in} -> {n_out}")
    factor = n_in / n_out
    sigma = max(0.0, (factor - 1.0) / 2.0)
    matrix = _zoom_matrix(n_in, n_out) @ _gaussian_matrix(n_in, sigma)
    matrix.setflags(write=False)
    return matrix


@lru_cache(maxsize=64)
def _sparse_taps(n_in: int, n_out: int, dtype: str):
    """The non-zero weights of :func:`resize_matrix`, row by row: indices ``(n_out, k)`` and weights
    ``(n_out, k)`` (rows with fewer taps padded with weight 0), for a gather-and-sum that needs no BLAS
    (a multithreaded BLAS call here leaves its threads spinning against the caller's next work)."""
    matrix = resize_matrix(n_in, n_out)
    nonzero = matrix != 0
    k = max(1, int(nonzero.sum(axis=1).max()))
    index = np.zeros((n_out, k), dtype=np.intp)
    weight = np.zeros((n_out, k), dtype=dtype)
    for i in range(n_out):
        cols = np.flatnonzero(nonzero[i])
        index[i, : len(cols)] = cols
        weight[i, : len(cols)] = matrix[i, cols]
    return index, weight


def _resize_axis0(array: np.ndarray, n_out: int) -> np.ndarray:
    index, weight = _sparse_taps(array.shape[0], n_out, array.dtype.name)
    out = weight[:, 0, None, None] * array[index[:, 0]]
    for k in range(1, index.shape[1]):
        out += weight[:, k, None, None] * array[index[:, k]]
    return out


def resize_image(array: np.ndarray, shape) -> np.ndarray:
    """Resize an image ``(height, width, channels)`` to ``shape = (height, width)``, channels kept.

    Each axis is a weighted sum of a few neighbouring rows (the non-zero weights of
    :func:`resize_matrix`), in float32 for float32 input and float64 otherwise; values stay within
    the input's range.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise OpsoValueError(f"image must be (height, width, channels), got shape {array.shape}")
    array = array.astype(np.float32 if array.dtype == np.float32 else np.float64, copy=False)
    height, width = int(shape[0]), int(shape[1])
    out = _resize_axis0(array, height)  # (height, w_in, c)
    return np.ascontiguousarray(_resize_axis0(out.transpose(1, 0, 2), width).transpose(1, 0, 2))
