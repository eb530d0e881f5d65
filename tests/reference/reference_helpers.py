"""What the reference scripts (run with the real OpenSoundscape 0.9.0) and opso's tests must compute the
same way: the network's weights and the description of a signature. Standard library, numpy and torch
only, so both environments import it (``tests/reference`` on ``sys.path``)."""

from __future__ import annotations

import inspect

import numpy as np


def deterministic_weights(network) -> None:
    """Set every parameter and buffer of ``network`` from its position alone (no random numbers):
    the same weights in any environment. Batch-norm running variances stay positive."""
    import torch

    with torch.no_grad():
        for k, (name, tensor) in enumerate(sorted(network.state_dict().items())):
            if not tensor.is_floating_point():
                continue
            values = torch.sin(torch.arange(tensor.numel(), dtype=torch.float64) * 0.731 + k)
            scale = 1.0 / max(1.0, float(np.sqrt(tensor[0].numel()))) if tensor.ndim > 1 else 0.1
            if name.endswith("running_var"):
                values = 1.0 + 0.5 * values.abs()
            elif name.endswith("weight") and tensor.ndim == 1:  # batch-norm scale
                values = 1.0 + 0.1 * values
            else:
                values = values * scale
            tensor.copy_(values.reshape(tensor.shape).to(tensor.dtype))


def describe_signature(obj) -> list | None:
    """``[[name, kind, repr(default) or None], ...]`` of ``obj``'s parameters; None when it has no
    introspectable signature."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name, None if p.default is inspect.Parameter.empty else repr(p.default)]
            for p in signature.parameters.values()]
