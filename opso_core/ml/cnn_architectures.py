"""CNN architectures with an output layer sized to your classes (``opensoundscape.ml.cnn_architectures``).

Each wrapper builds a torchvision model, replaces its classifier with one of ``num_classes``
outputs and, for ``num_channels != 3``, its first convolution. ``weights="DEFAULT"`` downloads
torchvision's pretrained weights (cached under ``$TORCH_HOME``); without network access that fails
with :class:`PretrainedWeightsUnavailableError`, so pass ``weights=None`` offline (random init).

Every model made here remembers how it was made (``constructor_name``, ``constructor_kwargs``), so
:meth:`opso_core.ml.cnn.CNN.save` can describe it in JSON and rebuild it without pickle.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from opso_core.errors import OpsoAssertionError, OpsoError

__all__ = [
    "ARCH_DICT", "PretrainedWeightsUnavailableError", "alexnet", "build_architecture", "change_conv2d_channels",
    "change_fc_output_size", "densenet121", "efficientnet_b0", "efficientnet_b4", "efficientnet_widese_b0",
    "efficientnet_widese_b4", "freeze_params", "inception_v3", "list_architectures", "register_arch", "resnet18",
    "resnet34", "resnet50", "resnet101", "resnet152", "set_cam_layer", "squeezenet1_0", "vgg11_bn",
]

ARCH_DICT: dict = {}


class PretrainedWeightsUnavailableError(OpsoError, RuntimeError):
    """Pretrained weights could not be downloaded (usually: no network)."""


def register_arch(func):
    """Add an architecture function to ``ARCH_DICT`` (so ``CNN("name", ...)`` and safe saving know it).

    The function takes ``num_classes`` first and returns a ``torch.nn.Module``. Usable as a decorator.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        model = func(*args, **kwargs)
        bound = dict(zip(["num_classes", "freeze_feature_extractor", "weights", "num_channels"], args, strict=False))
        bound.update(kwargs)
        model.constructor_name = func.__name__
        model.constructor_kwargs = bound
        return model

    ARCH_DICT[func.__name__] = wrapper
    return wrapper


def list_architectures():
    """Names of the registered architectures."""
    return list(ARCH_DICT.keys())


def build_architecture(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture by name (``kwargs`` as for its function)."""
    if name not in ARCH_DICT:  # 0.9.0 asserts: OpsoAssertionError is an AssertionError and a ValueError
        raise OpsoAssertionError(f"unknown architecture {name!r}; choose one of {list_architectures()} "
                                 "or register your own with register_arch")
    return ARCH_DICT[name](**kwargs)


def freeze_params(model):
    """Turn off gradients for all of ``model``'s parameters."""
    for param in model.parameters():
        param.requires_grad = False


def change_conv2d_channels(conv2d, num_channels=3, reuse_weights=True):
    """A copy of ``conv2d`` taking ``num_channels`` input channels.

    With ``reuse_weights``, fewer channels get the mean of the original channels' weights; more
    channels cycle through the original ones.
    """
    new = nn.Conv2d(num_channels, conv2d.out_channels, kernel_size=conv2d.kernel_size, stride=conv2d.stride,
                    padding=conv2d.padding, dilation=conv2d.dilation, groups=conv2d.groups,
                    bias=conv2d.bias is not None, padding_mode=conv2d.padding_mode)
    if reuse_weights:
        with torch.no_grad():
            old = conv2d.weight
            if num_channels < old.shape[1]:
                new.weight[:] = old.mean(dim=1, keepdim=True).repeat(1, num_channels, 1, 1)
            else:
                for c in range(num_channels):
                    new.weight[:, c] = old[:, c % old.shape[1]]
            if conv2d.bias is not None:
                new.bias[:] = conv2d.bias
    return new


def change_fc_output_size(fc, num_classes):
    """A new ``nn.Linear`` with ``fc``'s input size and ``num_classes`` outputs (freshly initialised)."""
    return nn.Linear(fc.in_features, num_classes)


def _load(builder, weights, name):
    try:
        return builder(weights=weights)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        if weights is None:
            raise
        raise PretrainedWeightsUnavailableError(
            f"could not get pretrained weights {weights!r} for {name} ({type(exc).__name__}: {exc}). Without "
            "network access, pass weights=None (random initialisation), or put the weight file in torch's cache "
            "($TORCH_HOME/hub/checkpoints) beforehand") from exc


def _prepare(model, freeze_feature_extractor):
    if freeze_feature_extractor:
        freeze_params(model)
    return model


def _set(module, path, value):
    parent, _, last = path.rpartition(".")
    owner = module.get_submodule(parent)
    if last.isdigit():
        owner[int(last)] = value
    else:
        setattr(owner, last, value)


def _torchvision_arch(builder_name, num_classes, freeze_feature_extractor, weights, num_channels, *,
                      classifier, first_conv, cam_layer, builder=None):
    """A torchvision model with its ``classifier`` layer (dotted path) resized and ``first_conv`` adapted."""
    import torchvision.models as tvm

    model = _prepare(_load(builder or getattr(tvm, builder_name), weights, builder_name), freeze_feature_extractor)
    _set(model, classifier, change_fc_output_size(model.get_submodule(classifier), num_classes))
    if num_channels != 3:
        _set(model, first_conv, change_conv2d_channels(model.get_submodule(first_conv), num_channels))
    model.classifier_layer = classifier
    set_cam_layer(model, cam_layer)
    return model


def set_cam_layer(model, name: str) -> None:
    """Make the module ``name`` (dotted path; ``"features"`` means its last layer, as 0.9.0 chose) the
    network's default CAM layer: ``model.cam_layer`` (the name, kept through saving) and
    ``model.cam_target_layers`` (``[module]``, OpenSoundscape 0.9.0's attribute)."""
    if name == "features":
        name = f"features.{list(dict(model.features.named_children()))[-1]}"
    model.cam_layer = name
    model.cam_target_layers = [model.get_submodule(name)]


def _resnet(builder_name, num_classes, freeze_feature_extractor, weights, num_channels):
    return _torchvision_arch(builder_name, num_classes, freeze_feature_extractor, weights, num_channels,
                             classifier="fc", first_conv="conv1", cam_layer="layer4")


@register_arch
def resnet18(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """ResNet18 (input 224x224)."""
    return _resnet("resnet18", num_classes, freeze_feature_extractor, weights, num_channels)


@register_arch
def resnet34(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """ResNet34 (input 224x224)."""
    return _resnet("resnet34", num_classes, freeze_feature_extractor, weights, num_channels)


@register_arch
def resnet50(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """ResNet50 (input 224x224)."""
    return _resnet("resnet50", num_classes, freeze_feature_extractor, weights, num_channels)


@register_arch
def resnet101(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """ResNet101 (input 224x224)."""
    return _resnet("resnet101", num_classes, freeze_feature_extractor, weights, num_channels)


@register_arch
def resnet152(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """ResNet152 (input 224x224)."""
    return _resnet("resnet152", num_classes, freeze_feature_extractor, weights, num_channels)


@register_arch
def alexnet(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """AlexNet (input 224x224)."""
    return _torchvision_arch("alexnet", num_classes, freeze_feature_extractor, weights, num_channels,
                             classifier="classifier.6", first_conv="features.0", cam_layer="features")

@register_arch
def vgg11_bn(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """VGG11 with batch normalisation (input 224x224)."""
    return _torchvision_arch("vgg11_bn", num_classes, freeze_feature_extractor, weights, num_channels,
                             classifier="classifier.6", first_conv="features.0", cam_layer="features")

@register_arch
def squeezenet1_0(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """SqueezeNet 1.0 (input 224x224)."""
    import torchvision.models as tvm

    model = _prepare(_load(tvm.squeezenet1_0, weights, "squeezenet1_0"), freeze_feature_extractor)
    model.classifier[1] = nn.Conv2d(512, num_classes, kernel_size=(1, 1), stride=(1, 1))
    model.num_classes = num_classes
    if num_channels != 3:
        model.features[0] = change_conv2d_channels(model.features[0], num_channels)
    set_cam_layer(model, "features")
    return model


@register_arch
def densenet121(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """DenseNet121 (input 224x224)."""
    return _torchvision_arch("densenet121", num_classes, freeze_feature_extractor, weights, num_channels,
                             classifier="classifier", first_conv="features.conv0", cam_layer="features")

@register_arch
def inception_v3(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """Inception v3 (input 299x299; has an auxiliary output in training, see ``CNN``'s InceptionV3)."""
    import torchvision.models as tvm

    def build(weights):
        kwargs = {} if weights is not None else {"init_weights": True}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tvm.inception_v3(weights=weights, aux_logits=True, **kwargs)

    model = _prepare(_load(build, weights, "inception_v3"), freeze_feature_extractor)
    model.AuxLogits.fc = change_fc_output_size(model.AuxLogits.fc, num_classes)
    model.fc = change_fc_output_size(model.fc, num_classes)
    if num_channels != 3:
        model.Conv2d_1a_3x3.conv = change_conv2d_channels(model.Conv2d_1a_3x3.conv, num_channels)
    set_cam_layer(model, "Mixed_7c")
    return model


def _efficientnet(builder_name, num_classes, freeze_feature_extractor, weights, num_channels):
    return _torchvision_arch(builder_name, num_classes, freeze_feature_extractor, weights, num_channels,
                             classifier="classifier.1", first_conv="features.0.0", cam_layer="features")


@register_arch
def efficientnet_b0(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """EfficientNet-B0 (torchvision)."""
    return _efficientnet("efficientnet_b0", num_classes, freeze_feature_extractor, weights, num_channels)


@register_arch
def efficientnet_b4(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """EfficientNet-B4 (torchvision)."""
    return _efficientnet("efficientnet_b4", num_classes, freeze_feature_extractor, weights, num_channels)


def _widese(size, num_classes, freeze_feature_extractor, weights, num_channels):
    # OpenSoundscape took the "wide squeeze-and-excitation" EfficientNets from NVIDIA's torch hub
    # repository; that needs a download of code, not only weights. opso builds torchvision's
    # EfficientNet of the same size instead (random weights: the NVIDIA weights are not available).
    if weights is not None:
        raise PretrainedWeightsUnavailableError(
            f"pretrained weights for efficientnet_widese_{size} come from NVIDIA's torch hub repository, which "
            "opso does not download; pass weights=None (a torchvision EfficientNet of the same size)")
    return _efficientnet(f"efficientnet_{size}", num_classes, freeze_feature_extractor, None, num_channels)


@register_arch
def efficientnet_widese_b0(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """EfficientNet-B0 (wide-SE variant name kept for compatibility; see module notes)."""
    return _widese("b0", num_classes, freeze_feature_extractor, weights, num_channels)


@register_arch
def efficientnet_widese_b4(num_classes, freeze_feature_extractor=False, weights="DEFAULT", num_channels=3):
    """EfficientNet-B4 (wide-SE variant name kept for compatibility; see module notes)."""
    return _widese("b4", num_classes, freeze_feature_extractor, weights, num_channels)
