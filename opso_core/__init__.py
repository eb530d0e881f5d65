"""opso_core: OpenSoundscape 0.9.0's library, made for archives of bioacoustic recordings.

``from opso_core import Audio, Spectrogram, CNN`` works as ``from opensoundscape import ...`` does.
Heavy parts (torch) load only when first used: ``import opso_core`` stays fast.
"""


import importlib
from typing import Any

__version__ = "0.1.0"

from opso_core.audio import Audio
from opso_core.spectrogram import MelSpectrogram, Spectrogram

# name -> module that defines it; imported on first access (PEP 562)
_LAZY = {
    "CNN": "opso_core.ml.cnn",
    "InceptionV3": "opso_core.ml.cnn",
    "load_model": "opso_core.ml.cnn",
}
_LAZY_MODULES = ("annotations", "aru", "audio", "errors", "localization", "metrics", "ml", "preprocess",
                 "ribbit", "signal_processing", "spectrogram", "testing", "utils", "data_selection",
                 "sample", "taxa")

__all__ = ["Audio", "MelSpectrogram", "Spectrogram", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _LAZY_MODULES:
        return importlib.import_module(f"opso_core.{name}")
    raise AttributeError(f"module 'opso_core' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_MODULES))
