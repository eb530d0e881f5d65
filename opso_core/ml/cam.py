"""Class activation maps (``opensoundscape.ml.cam``): which parts of a sample drive a class's score.

Gradient-based methods are computed here (no extra dependency): ``gradcam``, ``hirescam``,
``gradcam++``, ``xgradcam``, ``layercam``, ``eigencam``, ``eigengradcam``, ``gradcamelementwise``.
``scorecam``, ``ablationcam`` and ``fullgrad`` (and any ``pytorch_grad_cam`` CAM class passed as
``method``) use the ``pytorch-grad-cam`` package when it is installed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from opso_core.errors import OpsoAssertionError, OpsoValueError, missing_dependency
from opso_core.ml.prediction import inference_dataset, sample_error, warn_about_inputs
from opso_core.ml.safe_dataset import SafeDataset, no_valid_samples

__all__ = ["CAM", "BUILTIN_METHODS", "generate_cams"]

BUILTIN_METHODS = ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam",
                   "gradcamelementwise")
_GRAD_CAM_PACKAGE_METHODS = {"scorecam": "ScoreCAM", "ablationcam": "AblationCAM", "fullgrad": "FullGrad"}
_EPS = 1e-7


class CAM:
    """Activation maps (and guided backpropagation maps) of one sample.

    Parameters
    ----------
    base_image : torch.Tensor, shape (channels, height, width)
        The preprocessed sample.
    activation_maps : pandas.Series, optional
        Class -> 2-d array (height, width) in [0, 1]; the class is None when maps were made for
        each sample's top-scoring class.
    gbp_maps : pandas.Series, optional
        Class -> guided backpropagation map, (channels, height, width).
    """

    def __init__(self, base_image, activation_maps=None, gbp_maps=None):
        self.base_image = base_image
        self.activation_maps = activation_maps
        self.gbp_maps = gbp_maps

    def __repr__(self):
        classes = [] if self.activation_maps is None else list(self.activation_maps.index)
        return f"<CAM classes={classes}>"

    def plot(self, target_class=None, mode="activation", show_base=True, alpha=0.5, cmap="inferno",
             interpolation="bilinear", figsize=None, plt_show=True, save_path=None):
        """Plot the base image with the activation map, the guided backprop map or their product.

        ``mode``: "activation", "backprop", "backprop_and_activation" or None (base image only).
        Returns ``(fig, ax)``.
        """
        from matplotlib import pyplot as plt

        if mode not in ("activation", "backprop", "backprop_and_activation", None):
            raise OpsoValueError(f"mode must be 'activation', 'backprop', 'backprop_and_activation' or None; got {mode!r}")
        fig, ax = plt.subplots(figsize=figsize)
        if show_base:
            base = self.base_image.detach().cpu().numpy()
            base = base.mean(axis=0) if base.shape[0] != 3 else np.transpose(base, (1, 2, 0)).mean(axis=2)
            base = (base - base.min()) / max(float(base.max() - base.min()), _EPS)
            ax.imshow(np.stack([base] * 3, axis=-1))
        overlay = None
        if mode in ("activation", "backprop_and_activation"):
            if self.activation_maps is None or target_class not in self.activation_maps.index:
                raise OpsoValueError(f"no activation map for class {target_class!r}")
            overlay = np.asarray(self.activation_maps[target_class])
        if mode in ("backprop", "backprop_and_activation"):
            if self.gbp_maps is None or target_class not in self.gbp_maps.index:
                raise OpsoValueError(f"no guided backprop map for class {target_class!r}; use guided_backprop=True")
            gbp = np.abs(np.asarray(self.gbp_maps[target_class])).mean(axis=0)
            gbp = gbp / max(float(gbp.max()), _EPS)
            overlay = gbp if overlay is None else overlay * gbp
        if overlay is not None:
            ax.imshow(overlay, cmap=cmap, alpha=alpha, interpolation=interpolation, vmin=0, vmax=1)
        ax.set_title(f"{mode or 'sample'} for class {target_class}")
        ax.axis("off")
        if save_path is not None:
            fig.savefig(save_path)
        if plt_show:
            import matplotlib

            if matplotlib.get_backend().lower() != "agg":
                plt.show()
        return fig, ax


def _weighted(acts, grads, method):
    if method == "gradcam":
        return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
    if method == "hirescam":
        return (grads * acts).sum(1)
    if method == "xgradcam":
        weights = (grads * acts).sum(dim=(2, 3), keepdim=True) / (acts.sum(dim=(2, 3), keepdim=True) + _EPS)
        return (weights * acts).sum(1)
    if method == "gradcam++":
        g2, g3 = grads**2, grads**3
        aij = g2 / (2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3 + _EPS)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        weights = (F.relu(grads) * aij).sum(dim=(2, 3), keepdim=True)
        return (weights * acts).sum(1)
    if method == "layercam":
        return (F.relu(grads) * acts).sum(1)
    if method == "gradcamelementwise":
        return F.relu(grads * acts).sum(1)
    if method in ("eigencam", "eigengradcam"):
        data = acts if method == "eigencam" else grads * acts
        maps = []
        for sample in data:  # first principal component of the channels at each position
            k, h, w = sample.shape
            flat = sample.reshape(k, -1).T
            flat = flat - flat.mean(dim=0, keepdim=True)
            _, _, vt = torch.linalg.svd(flat, full_matrices=False)
            maps.append((flat @ vt[0]).reshape(h, w))
        return torch.stack(maps)
    raise OpsoValueError(f"unknown CAM method {method!r}")


def _normalise(cam):
    cam = F.relu(cam)
    flat = cam.flatten(1)
    lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    return ((flat - lo) / (hi - lo).clamp_min(_EPS)).reshape(cam.shape)


def _guided_backprop(network, x, class_index):
    relus = [m for m in network.modules() if isinstance(m, torch.nn.ReLU)]
    inplace = [m.inplace for m in relus]
    handles = []
    for m in relus:
        m.inplace = False
        handles.append(m.register_full_backward_hook(lambda mod, gin, gout: (torch.clamp(gin[0], min=0.0),)))
    try:
        x = x.detach().clone().requires_grad_(True)
        network.zero_grad()
        network(x)[:, class_index].sum().backward()
        return x.grad.detach().cpu()
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(relus, inplace, strict=True):
            m.inplace = flag


def _package_cam(model, method, layers, x, class_indices):
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise missing_dependency("grad-cam", "cam") from exc
    cls = getattr(pytorch_grad_cam, _GRAD_CAM_PACKAGE_METHODS[method]) if isinstance(method, str) else method
    with cls(model=model.network, target_layers=layers) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in class_indices])
    return torch.as_tensor(maps)


def generate_cams(model, samples, method="gradcam", classes=None, target_layers=None, guided_backprop=False,
                  split_files_into_clips=True, bypass_augmentations=True, batch_size=1, num_workers=0):
    """Activation maps for each sample, attached as ``sample.cam`` (a :class:`CAM`).

    Parameters
    ----------
    model : CNN
    samples : list of paths or pandas.DataFrame
        As for ``CNN.predict``.
    method : str, pytorch_grad_cam class, or None
        See the module docstring; None makes no activation maps (e.g. only guided backprop).
    classes : list of str, optional
        Make a map per listed class; None: one map for each sample's top-scoring class (stored
        under the class None).
    target_layers : list of torch.nn.Module, optional
        Default: the network's ``cam_target_layers`` (the architectures set it as OpenSoundscape 0.9.0
        does: ResNets ``[layer4]``, VGG/AlexNet/SqueezeNet/DenseNet ``[features[-1]]``, Inception
        ``[Mixed_7c]``), else the module its ``cam_layer`` names. Maps of several layers are averaged.
    guided_backprop : bool
        Also compute guided backpropagation maps (``cam.gbp_maps``).

    Returns
    -------
    list of AudioSample
        Preprocessed samples, each with a ``cam`` attribute.
    """
    if classes is not None:
        unknown = set(classes) - set(model.classes)
        if unknown:
            raise OpsoAssertionError(  # 0.9.0 asserted it: ported `except AssertionError` still catches it
                f"classes {sorted(unknown, key=str)} are not classes of the model {model.classes}")
    if method is not None and isinstance(method, str) and method not in BUILTIN_METHODS + tuple(_GRAD_CAM_PACKAGE_METHODS):
        raise OpsoValueError(f"method must be one of {BUILTIN_METHODS + tuple(_GRAD_CAM_PACKAGE_METHODS)}, a "
                             f"pytorch_grad_cam CAM class, or None; got {method!r}")
    network = model.network.to(model.device)
    network.eval()
    if target_layers is None:
        target_layers = default_cam_layers(network)
    dataset = inference_dataset(samples, model.preprocessor, split_files_into_clips=split_files_into_clips,
                                bypass_augmentations=bypass_augmentations)
    warn_about_inputs(model, samples, dataset)  # as 0.9.0, whose CAMs go through predict's dataset checks
    safe = SafeDataset(dataset, invalid_sample_behavior="none")
    out = []
    for start in range(0, len(safe), batch_size):
        batch = [safe[i] for i in range(start, min(start + batch_size, len(safe)))]
        good = [s for s in batch if s is not None and s.data is not None]
        if not good:
            out.extend(batch)
            continue
        x = torch.stack([s.data for s in good]).to(model.device)
        activations, gradients, handles = {}, {}, []
        for i, layer in enumerate(target_layers):
            handles.append(layer.register_forward_hook(_keep_output_and_its_gradient(i, activations, gradients)))
        try:
            with torch.enable_grad():
                logits = network(x.requires_grad_(True))
            if classes is None:
                targets = {None: logits.argmax(dim=1).tolist()}
            else:
                targets = {c: [model.classes.index(c)] * len(good) for c in classes}
            maps = {c: [] for c in targets}
            gbps = {c: [] for c in targets}
            for cls, indices in targets.items():
                if method is None:
                    pass
                elif not isinstance(method, str) or method in _GRAD_CAM_PACKAGE_METHODS:
                    maps[cls] = _package_cam(model, method, target_layers, x.detach(), indices)
                else:
                    network.zero_grad()
                    with torch.enable_grad():
                        logits[torch.arange(len(good)), torch.as_tensor(indices)].sum().backward(retain_graph=True)
                    layer_maps = []
                    for i in range(len(target_layers)):
                        cam = _weighted(activations[i].detach(), gradients[i].detach(), method)
                        cam = F.interpolate(_normalise(cam)[:, None], size=x.shape[-2:], mode="bilinear",
                                            align_corners=False)[:, 0]
                        layer_maps.append(cam)
                    maps[cls] = torch.stack(layer_maps).mean(0).cpu()
                if guided_backprop:
                    gbps[cls] = torch.stack([_guided_backprop(network, x[j : j + 1], indices[j])[0]
                                             for j in range(len(good))])
        finally:
            for h in handles:
                h.remove()
        for j, sample in enumerate(good):
            act = pd.Series({c: np.asarray(maps[c][j]) for c in targets}, dtype=object) if method is not None else None
            gbp = pd.Series({c: np.asarray(gbps[c][j]) for c in targets}, dtype=object) if guided_backprop else None
            sample.cam = CAM(sample.data.detach().cpu(), activation_maps=act, gbp_maps=gbp)
        out.extend(batch)
    if len(safe) and len(safe._invalid_indices) == len(safe):
        raise no_valid_samples(sorted(map(str, safe._invalid_samples)), sample_error(dataset, safe._invalid_indices[0]))
    return out


def _keep_output_and_its_gradient(i, activations, gradients):
    """A forward hook storing the layer's output as ``activations[i]`` and, through a tensor hook, its
    gradient as ``gradients[i]`` (a module backward hook fails on a layer whose output is modified in
    place, as DenseNet's ReLU modifies ``features``). The output is kept, not copied: after such an
    in-place ReLU it holds the features the classifier uses, as pytorch-grad-cam (0.9.0's CAMs) sees
    them on the CPU."""

    def hook(module, inputs, output):
        activations[i] = output.detach()
        if output.requires_grad:
            output.register_hook(lambda grad: gradients.__setitem__(i, grad))

    return hook


def default_cam_layers(network):
    """The layers CAMs are made from when none are given: ``network.cam_target_layers`` (a list of modules,
    as OpenSoundscape 0.9.0's architectures carry it, and as a user may set it), else the module named by
    ``network.cam_layer``."""
    layers = getattr(network, "cam_target_layers", None)
    if layers is not None:
        return list(layers)
    layer_name = getattr(network, "cam_layer", None)
    if layer_name is None:
        raise OpsoValueError("this network has no default CAM layer: set network.cam_target_layers = [module] "
                             "or pass target_layers=[module]")
    return [network.get_submodule(layer_name)]
