"""Typed errors for opso_core.

Every error is a subclass of :class:`OpsoError` *and* of the builtin that best describes it, so callers
can catch either ``except opso_core.errors.OpsoError`` or ``except ValueError``.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = [
    "AudioFileNotFoundError",
    "AudioFormatError",
    "AudioOutOfBoundsError",
    "AudioReadError",
    "DimensionError",
    "GetDurationError",
    "MissingDependencyError",
    "NoValidSamplesError",
    "OpsoError",
    "OpsoAssertionError",
    "OpsoIndexError",
    "OpsoTypeAssertionError",
    "OpsoTypeError",
    "OpsoTypeValueError",
    "OpsoValueError",
    "OpsoValueIndexError",
    "TruncatedAudioError",
    "TruncatedAudioWarning",
    "MixdownWarning",
    "warn_caller",
    "OutOfBoundsWarning",
    "ParseError",
    "PreprocessingError",
]


class OpsoError(Exception):
    """Base class of every error raised by opso."""


class OpsoValueError(OpsoError, ValueError):
    """An argument has the right type but an invalid value."""


class OpsoTypeError(OpsoError, TypeError):
    """An argument has the wrong type."""


class OpsoAssertionError(OpsoValueError, AssertionError):
    """An argument has an invalid value, where OpenSoundscape 0.9.0 checked it with ``assert``: ported
    ``except AssertionError`` clauses keep working, ``except ValueError`` works too."""


class OpsoTypeValueError(OpsoTypeError, ValueError):
    """An argument has the wrong type, where OpenSoundscape 0.9.0 raised ``ValueError``."""


class OpsoTypeAssertionError(OpsoTypeError, AssertionError):
    """An argument has the wrong type, where OpenSoundscape 0.9.0 checked it with ``assert``."""


class DimensionError(OpsoValueError, TypeError):
    """An array has the wrong number of dimensions or a shape that does not match, where OpenSoundscape
    0.9.0 raised ``TypeError``; also a ``ValueError``."""


class OpsoIndexError(OpsoError, IndexError):
    """An index (channel, sample, position) is out of range."""


class OpsoValueIndexError(OpsoValueError, IndexError):
    """A position (a column number, say) is out of range, where OpenSoundscape 0.9.0 raised ``IndexError``;
    also a ``ValueError``."""


class NoValidSamplesError(OpsoError, IndexError):
    """Every sample of a dataset failed to load or preprocess (prediction, training, CAMs), where
    OpenSoundscape 0.9.0 raised ``IndexError``; the message names the first failures and their cause."""


class AudioOutOfBoundsError(OpsoValueError):
    """The requested time period is not (fully) contained in the audio."""


class AudioReadError(OpsoError, OSError):
    """An audio file or stream could not be read (missing, empty, not audio, corrupt)."""


class AudioFileNotFoundError(AudioReadError, FileNotFoundError):
    """The audio file or URL does not exist."""


class AudioFormatError(AudioReadError):
    """The file is readable but its format or header is unsupported or inconsistent."""


class TruncatedAudioError(AudioReadError):
    """The file holds fewer audio frames than its header declares."""


class GetDurationError(OpsoValueError):
    """The duration of an audio file could not be determined."""


class ParseError(OpsoValueError):
    """A string (file name, metadata comment, timestamp) could not be parsed."""


class PreprocessingError(OpsoError):
    """A sample could not be preprocessed; the cause is chained (``raise ... from``).

    Also importable as ``opso_core.preprocess.utils.PreprocessingError`` (OpenSoundscape's place).
    """


class MissingDependencyError(OpsoError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TruncatedAudioWarning(UserWarning):
    """Warned when a file holds fewer frames than its header declares (the file was cut short)."""


class MixdownWarning(UserWarning):
    """Warned when a multi-channel file is mixed down to one channel."""


class OutOfBoundsWarning(UserWarning):
    """Warned when a requested time period is only partly inside the audio."""


def missing_dependency(package: str, extra: str) -> MissingDependencyError:
    """Build the error raised when an optional ``package`` is missing.

    Parameters
    ----------
    package : str
        Import name of the missing package (e.g. ``"matplotlib"``).
    extra : str
        Name of the ``opso`` extra that installs it (e.g. ``"plot"``).
    """
    return MissingDependencyError(
        f"{package} is needed for this feature but is not installed. "
        f"Install it with: pip install 'opso[{extra}]'  (or: pip install {package})"
    )


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside opso_core (and outside torch, whose
    ``no_grad`` decorator wraps prediction), so the warning names the user's line whatever the depth."""
    torch = sys.modules.get("torch")  # no torch frames unless torch is loaded
    skipped = [_PACKAGE_DIR]
    if getattr(torch, "__file__", None):
        skipped.append(os.path.dirname(os.path.abspath(torch.__file__)))
    level, frame = 2, sys._getframe(1)  # level 2: warn_caller's caller
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not any(path.startswith(folder + os.sep) for folder in skipped):
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
