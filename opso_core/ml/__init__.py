"""Machine learning with PyTorch (``opensoundscape.ml``): CNNs, datasets, losses, samplers, CAMs.

Importing these modules needs torch: ``pip install 'opso[ml]'``; :mod:`~opso_core.ml.model_input`
(``inference_spec``: what input a saved model expects) does not.
"""

__all__ = ["CNN", "InceptionV3", "InferenceSpec", "NotBatchableError", "inference_spec", "load_model",
           "load_outdated_model"]

_FROM_CNN = {"CNN", "InceptionV3", "load_model", "load_outdated_model"}
# the module is not named inference_spec: importing a submodule binds its name in the package,
# which would hide the function of that name
_FROM_MODEL_INPUT = {"InferenceSpec", "NotBatchableError", "inference_spec"}


def __getattr__(name):
    """``from opso_core.ml import load_model`` (and ``CNN``, ``InceptionV3``, ``load_outdated_model``;
    ``inference_spec``, ``InferenceSpec``, ``NotBatchableError``), imported on first use, so that
    ``import opso_core.ml`` stays light."""
    if name in _FROM_CNN:
        from opso_core.ml import cnn

        return getattr(cnn, name)
    if name in _FROM_MODEL_INPUT:
        from opso_core.ml import model_input

        return getattr(model_input, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
