"""Utilities for opso's PyTorch models (``opensoundscape.ml.utils``)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from opso_core.errors import OpsoValueError
from opso_core.prefetch import one_ahead, prefetched  # their home before (torch-free now)

__all__ = ["PRECISIONS", "BaseModule", "apply_activation_layer", "best_device", "cas_dataloader",
           "collate_audio_samples_to_dict", "get_batch", "identity", "inference_input", "inference_network",
           "one_ahead", "precision_context", "prefetched"]

logger = logging.getLogger(__name__)

ACTIVATION_LAYERS = (None, "softmax", "sigmoid", "softmax_and_logit")


class BaseModule:
    """Base class for a model pipeline class (CNN); children define train, predict, save and load."""

    name = "BaseModule"

    def __init__(self, *args, **kwargs):
        super().__init__()


def identity(x):
    """Return ``x`` (a DataLoader ``collate_fn`` that keeps the list of samples)."""
    return x


def best_device() -> torch.device:
    """``cuda:0`` if a CUDA device is available, else ``mps`` on Apple silicon, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda:0")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def inference_network(network: torch.nn.Module, device=None) -> torch.nn.Module:
    """A copy of ``network`` made for fast inference; ``network`` itself is left as it is.

    In eval mode, batch normalisation folded into the convolution before it (``torch.fx``), and
    the weights in channels-last layout, which oneDNN's CPU convolutions and GPU tensor cores run
    fastest (ResNet18 on a 2-core CPU: 1.65x the eager network's throughput). Outputs equal the
    network's to about 1e-6 (float rounding). A network torch.fx cannot trace keeps its layers and
    only changes layout.
    """
    net = copy.deepcopy(network).eval()
    try:
        from torch.fx.experimental.optimization import fuse

        net = fuse(net, inplace=True)
    except Exception as exc:  # tracing fails on data-dependent control flow: keep the layers
        logger.debug("conv/batch-norm folding skipped (%s: %s)", type(exc).__name__, exc)
    return net.to(device=device, memory_format=torch.channels_last)


#: the arithmetic a network can run inference in: float32 (exact), or bfloat16/float16 autocast
PRECISIONS = ("float32", "bfloat16", "float16")


def precision_context(device, precision: str = "float32", cache: bool = True):
    """A context in which a network's forward pass runs in ``precision`` on ``device``.

    ``float32``: no change (``contextlib.nullcontext``). ``bfloat16`` / ``float16``: ``torch.autocast``
    on the device's type: convolutions and matrix products in the reduced type (tensor cores on a GPU),
    reductions and normalisations in float32. Take scores from ``logits.float()``. The score
    differences it causes are measured by ``benchmarks/cnn_precision.py``. ``cache=False`` turns off
    autocast's cache of cast weights, as capturing a CUDA graph requires.
    """
    import contextlib

    if precision not in PRECISIONS:
        raise OpsoValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    return torch.autocast(device_type=device_type, dtype=getattr(torch, precision), cache_enabled=cache)


def inference_input(x: torch.Tensor, device=None) -> torch.Tensor:
    """``x`` on ``device`` in the layout :func:`inference_network` networks expect (channels-last for images)."""
    if x.ndim == 4:
        return x.to(device=device, memory_format=torch.channels_last, non_blocking=True)
    return x.to(device=device, non_blocking=True)


def apply_activation_layer(x, activation_layer=None):
    """Apply an activation to raw scores (logits) of shape (n_samples, n_classes).

    ``None`` returns them unchanged; ``"softmax"`` makes each row sum to 1; ``"sigmoid"`` maps each
    value to (0, 1); ``"softmax_and_logit"`` applies softmax then the logit (inverse sigmoid).
    Accepts and returns a torch tensor (numpy input gives a tensor).
    """
    if activation_layer not in ACTIVATION_LAYERS:
        raise OpsoValueError(f"activation_layer must be one of {ACTIVATION_LAYERS}, got {activation_layer!r}")
    x = torch.as_tensor(x)
    if activation_layer is None:
        return x
    if activation_layer == "softmax":
        return torch.softmax(x, dim=1)
    if activation_layer == "sigmoid":
        return torch.sigmoid(x)
    return torch.logit(torch.softmax(x, dim=1), eps=1e-7)


def get_batch(array, batch_size, batch_number):
    """Items ``batch_number * batch_size`` up to the next ``batch_size`` of ``array`` (the last may be shorter)."""
    return array[batch_number * batch_size : (batch_number + 1) * batch_size]


def collate_audio_samples_to_dict(samples) -> dict:
    """Batch tensors and labels of AudioSamples: ``{"samples": (b, c, h, w), "labels": (b, n_classes)}``."""
    from opso_core.sample import collate_samples

    return collate_samples(samples)


def cas_dataloader(dataset, batch_size, num_workers):
    """A DataLoader using :class:`~opso_core.ml.sampling.ClassAwareSampler` (few classes per batch, evenly)."""
    from opso_core.ml.sampling import ClassAwareSampler

    labels = np.asarray(dataset.label_df.values)
    sampler = ClassAwareSampler(labels, num_samples_cls=max(1, batch_size // max(1, labels.shape[1])))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       pin_memory=False, sampler=sampler, collate_fn=identity)
