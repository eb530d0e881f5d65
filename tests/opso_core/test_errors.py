"""opso's errors are also the built-ins OpenSoundscape 0.9.0 raised, so ported `except` clauses still catch them."""

import numpy as np
import pytest
import torch

import opso_core
from opso_core import Audio, Spectrogram
from opso_core.errors import (
    DimensionError,
    OpsoAssertionError,
    OpsoError,
    OpsoIndexError,
    OpsoTypeAssertionError,
    OpsoTypeValueError,
)
from opso_core.metrics import predict_multi_target_labels
from opso_core.preprocess import actions
from opso_core.preprocess.preprocessors import SpectrogramPreprocessor
from opso_core.preprocess.utils import show_tensor


@pytest.mark.parametrize(("cls", "builtins"), [
    (OpsoAssertionError, (ValueError, AssertionError)), (OpsoTypeAssertionError, (TypeError, AssertionError)),
    (OpsoTypeValueError, (TypeError, ValueError)), (DimensionError, (ValueError, TypeError)),
    (OpsoIndexError, (IndexError,))])
def test_classes_are_their_builtins(cls, builtins):
    error = cls("message")
    assert isinstance(error, OpsoError) and all(isinstance(error, b) for b in builtins)


def test_call_sites_raise_what_0_9_0_raised():
    with pytest.raises(AssertionError, match="unexpected parameters"):
        actions.Action(actions.scale_tensor, not_a_param=0)
    pre = SpectrogramPreprocessor(2.0)
    with pytest.raises(AssertionError, match="already in the pipeline"):  # the seed's chapter 9 example
        pre.insert_action("to_tensor", actions.Action(actions.tensor_add_noise, std=0.01), after_key="to_spec")
    with pytest.raises(AssertionError):
        pre.forward(3.5)
    with pytest.raises(TypeError, match="must be 2-d"):
        Spectrogram(np.zeros(5), np.zeros(5), np.zeros(5), (-100, -20))
    with pytest.raises(TypeError, match="shape mismatch"):
        Spectrogram(np.zeros((5, 10)), np.zeros(5), np.zeros(7), (-100, -20))
    with pytest.raises(ValueError):
        Audio("file.wav", 22050)
    with pytest.raises(ValueError):
        Audio(np.zeros(10), "fail")
    with pytest.raises(AssertionError):
        Audio(np.zeros(10), 10)._spawn(b=1)
    with pytest.raises(AssertionError):
        predict_multi_target_labels(torch.zeros(2, 3), threshold=[0.5, 0])
    with pytest.raises(IndexError, match="channel 2"):
        show_tensor(torch.zeros(1, 8, 8), channel=2)


def test_lazy_submodules_are_modules():
    """`from opso_core import annotations` is the module (a `from __future__ import annotations` in the
    package's __init__ once made it the __future__ feature object)."""
    from opso_core import annotations

    assert annotations is opso_core.annotations and hasattr(annotations, "categorical_to_one_hot")


def test_warn_caller_names_the_users_line():
    """Warnings from deep inside opso_core (through torch's no_grad wrapper too) point at the caller."""
    from opso_core.errors import warn_caller

    def inside_opso():  # stands for library code: pretend this frame is opso_core's
        warn_caller("careful")

    inside_opso.__code__ = inside_opso.__code__.replace(co_filename=opso_core.errors.__file__)
    with pytest.warns(UserWarning, match="careful") as caught:
        inside_opso()
    assert caught[0].filename == __file__

    def in_a_users_torch_folder():  # a user's own folder named torch is not torch's
        inside_opso()

    in_a_users_torch_folder.__code__ = in_a_users_torch_folder.__code__.replace(co_filename="/home/u/torch/run.py")
    with pytest.warns(UserWarning, match="careful") as caught:
        in_a_users_torch_folder()
    assert caught[0].filename == "/home/u/torch/run.py"


def test_no_valid_samples_error_is_an_index_error_naming_the_root_cause():
    from opso_core.errors import AudioFileNotFoundError, NoValidSamplesError, PreprocessingError
    from opso_core.ml.safe_dataset import no_valid_samples

    root = AudioFileNotFoundError("a.wav: no such audio file")
    wrapped = PreprocessingError("failed to preprocess sample from a.wav")
    wrapped.__cause__ = root
    error = no_valid_samples([f"{c}.wav" for c in "abcde"], wrapped)
    assert isinstance(error, NoValidSamplesError) and isinstance(error, IndexError)
    assert "a.wav, b.wav, c.wav and 2 more" in str(error)
    assert "AudioFileNotFoundError: a.wav: no such audio file" in str(error) and error.__cause__ is root
