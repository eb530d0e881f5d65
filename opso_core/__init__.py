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
    # the classes OpenSoundscape 0.9.0's package exposes at its top level
    "AudioFileDataset": "opso_core.ml.datasets",
    "AudioSplittingDataset": "opso_core.ml.datasets",
    "Action": "opso_core.preprocess.actions",
    "SpectrogramPreprocessor": "opso_core.preprocess.preprocessors",
    "AudioSample": "opso_core.sample",
}
_LAZY_MODULES = ("annotations", "aru", "audio", "errors", "localization", "metrics", "ml", "preprocess",
                 "ribbit", "signal_processing", "spectrogram", "testing", "utils", "data_selection",
                 "sample", "taxa", "resources", "logging")
#: the modules 0.9.0 exposes at its top level under a short name
_MODULE_ALIASES = {"cnn": "opso_core.ml.cnn", "preprocessors": "opso_core.preprocess.preprocessors",
                   "actions": "opso_core.preprocess.actions"}

__all__ = ["Audio", "MelSpectrogram", "Spectrogram", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _LAZY_MODULES:
        return importlib.import_module(f"opso_core.{name}")
    if name in _MODULE_ALIASES:
        return importlib.import_module(_MODULE_ALIASES[name])
    raise AttributeError(f"module 'opso_core' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_MODULES) | set(_MODULE_ALIASES))
