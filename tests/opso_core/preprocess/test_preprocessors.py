"""Chapter 9's pipeline manipulations, and each action's shapes, ranges and switches."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from opso_core import Audio, Spectrogram
from opso_core.errors import OpsoValueError
from opso_core.preprocess import actions
from opso_core.preprocess.actions import Action, AudioClipLoader, AudioTrim, BaseAction, Overlay
from opso_core.preprocess.img_augment import time_split
from opso_core.preprocess.preprocessors import BasePreprocessor, SpectrogramPreprocessor
from opso_core.preprocess.tensor_augment import freq_mask, time_mask
from opso_core.preprocess.utils import PreprocessingError, get_args, get_reqd_args
from opso_core.sample import AudioSample
from opso_core.testing import tone

SR = 22050
DEFAULT_PIPELINE = ["load_audio", "random_trim_audio", "trim_audio", "to_spec", "bandpass", "to_tensor",
                    "time_mask", "frequency_mask", "add_noise", "rescale", "random_affine"]


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("pp") / "tone.wav"
    tone(2000, 3.0, SR).save(path)
    return str(path)


def test_default_pipeline_as_chapter_9_prints():
    pre = SpectrogramPreprocessor(sample_duration=2)
    assert list(pre.pipeline.index) == DEFAULT_PIPELINE
    augmentations = [k for k, a in pre.pipeline.items() if a.is_augmentation]
    assert augmentations == ["random_trim_audio", "time_mask", "frequency_mask", "add_noise", "random_affine"]
    assert repr(pre.pipeline.load_audio).startswith("Action calling <bound method Audio.from_file")
    assert repr(pre.pipeline.random_trim_audio).startswith("Augmentation Action calling <function trim_audio")
    params = pre.pipeline.to_spec.params
    assert list(params.index) == ["window_type", "window_samples", "window_length_sec", "overlap_samples",
                                  "overlap_fraction", "fft_size", "decibel_limits", "dB_scale", "scaling"]
    assert params.decibel_limits == (-100, -20) and params.window_type == "hann"
    assert pre.pipeline.bandpass.params.min_f == 0 and pre.pipeline.bandpass.params.max_f == 11025
    assert pre.pipeline.add_noise.params["std"] == 0.005


def test_forward_shapes_and_ranges(wav):
    pre = SpectrogramPreprocessor(sample_duration=2.0, out_shape=(64, 48, 3))
    sample = pre.forward(wav, bypass_augmentations=True)
    assert isinstance(sample, AudioSample) and tuple(sample.data.shape) == (3, 64, 48)
    assert float(sample.data.min()) >= -1 and float(sample.data.max()) <= 1  # rescaled from [0, 1]
    assert sample.start_time == 0 and sample.duration == 2.0
    augmented = pre.forward(wav)
    assert tuple(augmented.data.shape) == (3, 64, 48)
    assert 0 <= augmented.start_time <= 1.0  # random trim of a 3 s file


def test_modify_params_with_set_and_directly(wav):
    pre = SpectrogramPreprocessor(sample_duration=2.0, out_shape=(32, 32, 1))
    pre.pipeline.to_spec.set(dB_scale=False)
    pre.pipeline.to_spec.params.window_samples = 256
    pre.pipeline.to_spec.params["overlap_fraction"] = 0.75
    assert pre.pipeline.to_spec.params.dB_scale is False
    with pytest.raises(OpsoValueError, match="unexpected parameters"):
        pre.pipeline.to_spec.set(windw_samples=3)
    sample = pre.forward(wav, bypass_augmentations=True, trace=True)
    spec = sample.trace["to_spec"]
    assert isinstance(spec, Spectrogram) and spec.window_samples == 256 and spec.overlap_samples == 192


def test_bypass_and_trace(wav):
    pre = SpectrogramPreprocessor(sample_duration=2.0, out_shape=(32, 32, 3))
    pre.pipeline.add_noise.bypass = True
    pre.pipeline.time_mask.bypass = True
    assert repr(pre.pipeline.add_noise).startswith("## Bypassed ##")
    sample = pre.forward(wav, trace=True, bypass_augmentations=True)
    assert sample.trace["add_noise"] == "## Bypassed ##"
    assert sample.trace["random_affine"] == "## Bypassed ##"
    assert isinstance(sample.trace["load_audio"], Audio)
    assert torch.equal(sample.trace["rescale"], sample.data)


def test_return_spectrogram_by_slicing_the_pipeline(wav):
    pre = SpectrogramPreprocessor(sample_duration=2.0)
    pre.pipeline = pre.pipeline[0:4]
    sample = pre.forward(wav, bypass_augmentations=True)
    assert isinstance(sample.data, Spectrogram)
    assert sample.data.spectrogram.shape[0] == 257


def test_break_on_key_and_type(wav):
    pre = SpectrogramPreprocessor(sample_duration=2.0)
    assert isinstance(pre.forward(wav, break_on_key="to_spec").data, Audio)
    assert isinstance(pre.forward(wav, break_on_type=actions.SpectrogramToTensor).data, Spectrogram)
    with pytest.raises(OpsoValueError):
        pre.forward(wav, break_on_key="nope")


def test_insert_and_remove_actions(wav):
    pre = SpectrogramPreprocessor(sample_duration=2.0, out_shape=(32, 32, 3))
    pre.remove_action("add_noise")
    assert "add_noise" not in pre.pipeline.index
    pre.insert_action("gain", Action(actions.audio_random_gain, dB_range=(-6, -5)), after_key="trim_audio")
    pre.insert_action("first", Action(lambda x: x), before_key="load_audio")
    pre.insert_action("last", Action(lambda x: x))
    keys = list(pre.pipeline.index)
    assert keys[0] == "first" and keys[keys.index("trim_audio") + 1] == "gain" and keys[-1] == "last"
    with pytest.raises(OpsoValueError, match="already"):
        pre.insert_action("gain", Action(lambda x: x))
    with pytest.raises(OpsoValueError):
        pre.insert_action("x", Action(lambda x: x), after_key="a", before_key="b")
    sample = pre.forward(wav, trace=True, bypass_augmentations=True)
    assert sample.trace["trim_audio"].rms > sample.trace["gain"].rms


def test_custom_action_and_preprocessor(wav):
    def multiply(audio, n):
        return audio._spawn(samples=audio.samples * n)

    with pytest.raises(OpsoValueError, match="required"):
        Action(multiply)
    pre = BasePreprocessor(sample_duration=None)
    pre.insert_action("load", AudioClipLoader())
    pre.insert_action("times3", Action(multiply, n=3))
    sample = pre.forward(wav)
    assert np.abs(sample.data.samples).max() == pytest.approx(1.5, rel=1e-3)


def test_errors_become_preprocessing_errors(tmp_path):
    pre = SpectrogramPreprocessor(sample_duration=2.0)
    with pytest.raises(PreprocessingError) as info:
        pre.forward(str(tmp_path / "missing.wav"))
    assert isinstance(info.value.__cause__, FileNotFoundError)
    low_rate = tmp_path / "low.wav"
    tone(1000, 3.0, 8000).save(low_rate)  # 0.9.0's bandpass refuses 0-11025 Hz at 8 kHz
    with pytest.raises(PreprocessingError):
        pre.forward(str(low_rate))
    pre.pipeline.bandpass.set(max_f=4000)
    assert pre.forward(str(low_rate), bypass_augmentations=True).data.shape[0] == 3


def test_audio_trim_extends_short_clips(tmp_path):
    short = tmp_path / "short.wav"
    tone(1000, 1.0, SR).save(short)
    pre = BasePreprocessor(sample_duration=2.5)
    pre.insert_action("load", AudioClipLoader())
    pre.insert_action("trim", AudioTrim())
    sample = pre.forward(str(short))
    assert sample.data.duration == 2.5 and not sample.data.samples[int(1.2 * SR):].any()
    pre.pipeline.trim.set(extend=False)
    with pytest.raises(PreprocessingError):
        pre.forward(str(short))


def test_tensor_actions():
    torch.manual_seed(0)
    x = torch.rand(3, 40, 50)
    masked = actions.time_mask(x, max_masks=5, max_width=0.2)
    assert masked.shape == x.shape
    masked = actions.frequency_mask(x, max_masks=5, max_width=0.2)
    assert masked.shape == x.shape
    noisy = actions.tensor_add_noise(torch.zeros(3, 100, 100), std=0.1)
    assert float(noisy.std()) == pytest.approx(0.1, rel=0.05)
    scaled = actions.scale_tensor(torch.ones(3, 4, 4))
    assert torch.equal(scaled, torch.ones(3, 4, 4))  # (1 - 0.5) / 0.5
    shifted = actions.torch_random_affine(torch.ones(3, 20, 20), translate=(0.5, 0.5), fill=0)
    assert shifted.shape == (3, 20, 20)
    jittered = actions.torch_color_jitter(torch.rand(3, 8, 8))
    assert jittered.shape == (3, 8, 8)
    img = Image.fromarray(np.full((10, 12), 255, dtype=np.uint8))
    t = actions.image_to_tensor(img)
    assert t.shape == (3, 10, 12) and float(t.max()) == 1.0
    assert actions.image_to_tensor(img, greyscale=True).shape == (1, 10, 12)


def test_spec_augment_masks():
    torch.manual_seed(1)
    import random

    random.seed(3)
    spec = torch.arange(2 * 1 * 10 * 20, dtype=torch.float32).reshape(2, 1, 10, 20)
    out = time_mask(spec, T=5, max_masks=3, replace_with_zero=True)
    zero_cols = (out[0, 0] == 0).all(dim=0).sum()
    assert 0 <= int(zero_cols) <= 15 and torch.equal(spec, spec.clone())  # input untouched
    out = freq_mask(spec, F=3, max_masks=2)
    assert out.shape == spec.shape


def test_audio_actions():
    a = tone(1000, 1.0, SR, amplitude=0.5)
    quieter = actions.audio_random_gain(a, dB_range=(-20, -20))
    assert quieter.rms == pytest.approx(a.rms / 10, rel=1e-3)
    noisy = actions.audio_add_noise(a, noise_dB=-20, signal_dB=0)
    assert noisy.rms > a.rms
    ranged = actions.audio_add_noise(a, noise_dB=(-60, -50), signal_dB=(-1, 0))
    assert ranged.duration == a.duration


def test_overlay(tmp_path, wav):
    other = tmp_path / "other.wav"
    tone(6000, 3.0, SR).save(other)
    overlay_df = pd.DataFrame({"a": [0], "b": [1]}, index=[str(other)])
    pre = SpectrogramPreprocessor(sample_duration=2.0, overlay_df=overlay_df, out_shape=(32, 32, 3))
    assert "overlay" in pre.pipeline.index and list(pre.pipeline.index).index("overlay") == 6
    pre.pipeline.overlay.set(overlay_class="different", update_labels=True)
    sample = AudioSample(wav, labels=pd.Series({"a": 1, "b": 0}))
    out = pre.forward(sample, bypass_augmentations=False)
    assert list(out.labels) == [1, 1]
    with pytest.raises(OpsoValueError):
        Overlay(update_labels=True)
    with pytest.raises(OpsoValueError):
        actions.overlay(sample, overlay_df, update_labels=False, overlay_weight=1.5)


def test_base_action_and_arg_helpers():
    a = BaseAction()
    assert repr(a) == "Action" and a.params.empty

    def f(x, y, z=3):
        return x

    assert get_args(f) == {"x": get_args(f)["x"], "y": get_args(f)["y"], "z": 3}
    assert get_reqd_args(f) == ["x", "y"]


def test_time_split():
    img = Image.fromarray(np.arange(20, dtype=np.uint8).reshape(2, 10))
    out = np.asarray(time_split(img, seed=1))
    assert sorted(out[0].tolist()) == list(range(10))
    assert out.shape == (2, 10)
