"""Machine learning with PyTorch (``opensoundscape.ml``): CNNs, datasets, losses, samplers, CAMs.

Importing these modules needs torch: ``pip install 'opso[ml]'``.
"""

__all__ = ["CNN", "InceptionV3", "load_model", "load_outdated_model"]

_FROM_CNN = set(__all__)


def __getattr__(name):
    """``from opso_core.ml import load_model`` (and ``CNN``, ``InceptionV3``, ``load_outdated_model``),
    imported on first use, so that ``import opso_core.ml`` stays light."""
    if name in _FROM_CNN:
        from opso_core.ml import cnn

        return getattr(cnn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
