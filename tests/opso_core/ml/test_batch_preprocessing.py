"""CNN.predict's batch preprocessing: which preprocessors qualify, and that it gives the per-sample numbers."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch

import opso_core.ml.prediction as prediction
from opso_core.audio import Audio
from opso_core.ml import cnn_architectures as ca
from opso_core.ml.batch_preprocessing import batch_preprocessor
from opso_core.ml.cnn import CNN
from opso_core.preprocess import actions
from opso_core.preprocess.actions import Action
from opso_core.preprocess.preprocessors import SpectrogramPreprocessor
from opso_core.preprocess.utils import PreprocessingError
from opso_core.sample import AudioSample
from opso_core.testing import noise, pulse_train


def audio_samples(preprocessor, files):
    """Each file's sample after the batch form's audio steps (what the dataset gives the batch step)."""
    fast = batch_preprocessor(preprocessor)
    return fast, [fast.audio_steps.forward(AudioSample(str(f)), bypass_augmentations=True) for f in files]


def one_at_a_time(preprocessor, files):
    return torch.stack([preprocessor.forward(AudioSample(str(f)), bypass_augmentations=True).data for f in files])


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Two 22.05 kHz files, one 32 kHz file and one 16 kHz file, 2.5 s each, with calls."""
    root = tmp_path_factory.mktemp("batch")
    paths = {}
    for name, rate, seed in (("a", 22050, 1), ("b", 22050, 2), ("c", 32000, 3), ("low", 16000, 4)):
        sound = Audio(noise(2.5, rate, dBFS=-30, seed=seed).samples + pulse_train(10, 1500, 2.5, rate).samples, rate)
        paths[name] = root / f"{name}.wav"
        sound.save(paths[name])
    return paths


def test_the_standard_preprocessor_qualifies_and_changed_ones_do_not():
    pre = SpectrogramPreprocessor(2.0)
    fast = batch_preprocessor(pre)
    assert fast is not None
    assert list(fast.audio_steps.pipeline.index) == ["load_audio", "random_trim_audio", "trim_audio"]
    assert list(fast.spectrogram_steps.pipeline.index)[:3] == ["to_spec", "bandpass", "to_tensor"]
    assert fast.bandpass == {"min_f": 0, "max_f": 11025, "out_of_bounds_ok": False}
    assert fast.rescale == {"input_mean": 0.5, "input_std": 0.5}
    assert list(pre.pipeline.index)[0] == "load_audio" and len(pre.pipeline) == 11  # the original is untouched
    # augmentations after to_spec are active when not bypassed
    assert batch_preprocessor(pre, bypass_augmentations=False) is None
    # an audio step before to_spec runs per sample: still fine
    audio_step = SpectrogramPreprocessor(2.0)
    audio_step.insert_action("gain", Action(actions.audio_random_gain), after_key="trim_audio")
    assert batch_preprocessor(audio_step) is not None
    # a step after to_spec that has no batch form, or a replaced step, keeps the per-sample path
    extra = SpectrogramPreprocessor(2.0)
    extra.insert_action("limit", Action(lambda s: s.limit_db_range(-90, -30)), after_key="to_spec")
    assert batch_preprocessor(extra) is None
    replaced = SpectrogramPreprocessor(2.0)
    replaced.pipeline["to_tensor"] = Action(lambda s: torch.zeros(3, 224, 224))
    assert batch_preprocessor(replaced) is None
    no_tensor = SpectrogramPreprocessor(2.0)
    no_tensor.pipeline.to_tensor.bypass = True
    assert batch_preprocessor(no_tensor) is None

    class Custom(SpectrogramPreprocessor):
        pass

    assert batch_preprocessor(Custom(2.0)) is None
    bypassed = SpectrogramPreprocessor(2.0)
    bypassed.pipeline.bandpass.bypass = True
    bypassed.pipeline.rescale.bypass = True
    fast = batch_preprocessor(bypassed)
    assert fast.bandpass is None and fast.rescale is None


@pytest.mark.parametrize("settings", ["default", "narrow band, inverted, one channel, no rescale", "window"])
def test_batch_tensors_equal_the_per_sample_steps(recordings, settings):
    if settings == "default":
        pre = SpectrogramPreprocessor(2.0)
    elif settings == "window":
        pre = SpectrogramPreprocessor(2.0, out_shape=(100, 150, 3))
        pre.pipeline.to_spec.set(window_samples=256, overlap_fraction=0.75, decibel_limits=(-90, -10))
    else:
        pre = SpectrogramPreprocessor(2.0, out_shape=(64, 96, 1))
        pre.pipeline.bandpass.set(min_f=500, max_f=6000)
        pre.pipeline.to_tensor.set(invert=True)
        pre.pipeline.rescale.bypass = True
    files = [recordings["a"], recordings["c"], recordings["b"]]  # two sample rates, interleaved
    fast, samples = audio_samples(pre, files)
    tensors, ok, failures = fast.tensors(samples)
    assert ok == [0, 1, 2] and failures == []
    expected = one_at_a_time(pre, files)
    assert tensors.shape == expected.shape == (3, pre.out_shape[2], *pre.out_shape[:2])
    assert tensors.dtype == torch.float32
    np.testing.assert_allclose(tensors.numpy(), expected.numpy(), atol=2e-5)
    assert float(expected.std()) > 0.05  # real images, not blank ones


def test_samples_the_batch_cannot_take_fail_with_the_per_sample_error(recordings):
    pre = SpectrogramPreprocessor(2.0)  # bandpass to 11,025 Hz, out of bounds not allowed: 16 kHz audio fails
    files = [recordings["a"], recordings["low"], recordings["b"]]
    fast, samples = audio_samples(pre, files)
    tensors, ok, failures = fast.tensors(samples)
    assert ok == [0, 2] and [i for i, _ in failures] == [1]
    assert isinstance(failures[0][1], PreprocessingError)
    with pytest.raises(PreprocessingError) as per_sample:
        pre.forward(AudioSample(str(recordings["low"])), bypass_augmentations=True)
    assert str(failures[0][1]) == str(per_sample.value)
    np.testing.assert_allclose(tensors.numpy(), one_at_a_time(pre, [files[0], files[2]]).numpy(), atol=2e-5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CNN(ca.resnet18(2, weights=None), ["frog", "other"], 2.0, sample_shape=(64, 64, 3))


def test_predict_gives_the_per_sample_scores(model, recordings, monkeypatch):
    files = [str(recordings[k]) for k in ("a", "c", "b")]
    batched = model.predict(files, batch_size=2, overlap_fraction=0.5, final_clip="full",
                            activation_layer="sigmoid")
    monkeypatch.setattr(prediction, "batch_preprocessor", lambda *a, **k: None)
    per_sample = model.predict(files, batch_size=2, overlap_fraction=0.5, final_clip="full",
                            activation_layer="sigmoid")
    pd.testing.assert_index_equal(batched.index, per_sample.index)
    assert len(batched) == 6  # 2.5 s files: clips at 0 and (moved back from 1) 0.5 s
    np.testing.assert_allclose(batched.values, per_sample.values, atol=1e-5)


def test_predict_scores_nan_for_samples_failing_in_the_batch_step(model, recordings, tmp_path, caplog):
    files = [str(recordings[k]) for k in ("a", "low", "b")]
    log = tmp_path / "invalid.txt"
    with caplog.at_level(logging.WARNING, logger="opso_core.ml.prediction"), \
            pytest.warns(UserWarning, match="1 of 3 samples could not be loaded or preprocessed; their scores are NaN"):
        scores, invalid = model.predict(files, batch_size=3, invalid_samples_log=log, return_invalid_samples=True)
    assert invalid == {files[1]}
    assert log.read_text().split() == [files[1]]
    assert scores.loc[files[1]].isna().all().all() and not scores.loc[files[0]].isna().any().any()
    assert "reaches outside the spectrogram's frequencies" in caplog.text
    with pytest.raises(PreprocessingError, match="reaches outside"):
        model.predict(files, batch_size=3, raise_errors=True)
