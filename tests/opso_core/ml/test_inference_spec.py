"""inference_spec: what input a saved model expects, read from its description (never its weights),
by the same rule as CNN.predict's batch preprocessing."""

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from opso_core.audio import Audio
from opso_core.errors import OpsoTypeError, OpsoValueError
from opso_core.ml import InferenceSpec, NotBatchableError, inference_spec
from opso_core.ml import cnn_architectures as ca
from opso_core.ml.batch_preprocessing import batch_preprocessor
from opso_core.ml.cnn import CNN
from opso_core.ml.model_input import PreprocessingSteps, SampleRateError, batch_form
from opso_core.ml.persistence import PickleNotAllowedError, read_description
from opso_core.ml.spectrogram_tensors import TensorSettings, spectrograms_to_tensor
from opso_core.preprocess import actions
from opso_core.preprocess.actions import Action
from opso_core.preprocess.preprocessors import BasePreprocessor, SpectrogramPreprocessor
from opso_core.sample import AudioSample
from opso_core.stft import SpectrogramParams, spectrogram_batch

SHAPE = (32, 48, 3)


def small_cnn():
    torch.manual_seed(0)
    return CNN(ca.resnet18(2, weights=None), ["frog", "other"], 2.0, sample_shape=SHAPE)


@pytest.fixture
def model():
    return small_cnn()


@pytest.fixture
def saved(model, tmp_path):
    model.save(tmp_path / "m.model")
    return tmp_path / "m.model"


def with_description(path, out, change):
    """A copy of a model file whose description ``change(description)`` edited (weights kept)."""
    with zipfile.ZipFile(path) as zf:
        description = json.loads(zf.read("opso_model.json"))
        weights = zf.read("weights.pt")
    change(description)
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("opso_model.json", json.dumps(description))
        zf.writestr("weights.pt", weights)
    return out


def test_a_saved_default_model_gives_its_settings(model, saved):
    spec = inference_spec(saved)
    assert isinstance(spec, InferenceSpec)
    assert spec.classes == ("frog", "other") == tuple(model.classes)
    assert spec.sample_duration_s == 2.0 == model.preprocessor.sample_duration
    assert spec.sample_rate_hz is None  # load_audio keeps each file's rate
    assert spec.to_spec == dict(model.preprocessor.pipeline.to_spec.params)
    assert spec.to_spec["decibel_limits"] == (-100, -20) and spec.to_spec["window_samples"] is None
    assert spec.bandpass == {"min_f": 0, "max_f": 11025, "out_of_bounds_ok": False}
    assert spec.to_tensor == {"colormap": None, "invert": False}
    assert spec.rescale == {"input_mean": 0.5, "input_std": 0.5}
    assert spec.out_shape == SHAPE == model.sample_shape
    params = spec.spectrogram_params(22050)
    assert (params.window_samples, params.overlap_samples, params.decibel_limits) == (512, 256, (-100.0, -20.0))
    assert spec.tensor_settings(22050) == TensorSettings(decibel_limits=(-100.0, -20.0), bandpass_hz=(0.0, 11025.0),
                                                         out_shape=SHAPE, invert=False, colormap=None,
                                                         rescale=(0.5, 0.5))


def test_bytes_paths_files_descriptions_and_the_model_agree(model, saved):
    spec = inference_spec(saved)
    data = saved.read_bytes()
    assert inference_spec(data) == spec
    assert inference_spec(bytearray(data)) == spec
    assert inference_spec(str(saved)) == spec
    with open(saved, "rb") as f:
        assert inference_spec(f) == spec
    assert inference_spec(io.BytesIO(data)) == spec
    assert inference_spec(read_description(data)) == spec
    assert inference_spec(model) == spec


def test_the_description_alone_is_read(saved, tmp_path):
    """No weights needed (load_model would fail on this file), and torch is never imported."""
    with zipfile.ZipFile(saved) as zf:
        text = zf.read("opso_model.json")
    bare = tmp_path / "description-only.model"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.writestr("opso_model.json", text)
    assert inference_spec(bare) == inference_spec(saved)
    script = ("import sys; from opso_core.ml import inference_spec; "
              f"spec = inference_spec({str(saved)!r}); "
              "assert spec.tensor_settings(22050).out_shape == (32, 48, 3); "
              "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_changed_settings_and_a_resampling_model(model, tmp_path):
    pre = SpectrogramPreprocessor(3.0, out_shape=(64, 96, 1))
    pre.pipeline.load_audio.set(sample_rate=16000)
    pre.pipeline.to_spec.set(window_samples=256, overlap_fraction=0.75, decibel_limits=(-90, -10))
    pre.pipeline.bandpass.set(min_f=500, max_f=6000)
    pre.pipeline.to_tensor.set(invert=True)
    pre.pipeline.rescale.bypass = True
    model = CNN(ca.resnet18(2, weights=None, num_channels=1), ["frog", "other"], 3.0, sample_shape=(64, 96, 1))
    model.preprocessor = pre
    model.save(tmp_path / "r.model")
    spec = inference_spec(tmp_path / "r.model")
    assert spec == inference_spec(model)
    assert spec.sample_rate_hz == 16000 and spec.sample_duration_s == 3.0 and spec.out_shape == (64, 96, 1)
    assert spec.rescale is None and spec.to_tensor["invert"] is True
    params = spec.spectrogram_params(16000)
    assert (params.window_samples, params.overlap_samples, params.decibel_limits) == (256, 192, (-90.0, -10.0))
    settings = spec.tensor_settings(16000)
    assert (settings.bandpass_hz, settings.invert, settings.rescale) == ((500.0, 6000.0), True, None)


@pytest.mark.parametrize("change", ["default", "window", "narrow"])
def test_spec_settings_equal_the_batch_preprocessors(change):
    """spectrogram_params/tensor_settings are what CNN.predict's batch form computes for the same model."""
    model = small_cnn()
    pre = model.preprocessor
    if change == "window":
        pre.pipeline.to_spec.set(window_length_sec=0.01, overlap_samples=50, fft_size=512, window_type="hamming")
    elif change == "narrow":
        pre.pipeline.bandpass.set(min_f=1000, max_f=4000, out_of_bounds_ok=True)
        pre.pipeline.to_tensor.set(colormap="viridis")
        pre.pipeline.rescale.set(input_mean=0.4, input_std=0.2)
    spec = inference_spec(model)
    fast = batch_preprocessor(pre)
    assert fast is not None
    assert (fast.to_spec, fast.bandpass, fast.to_tensor, fast.rescale, fast.out_shape) == \
        (spec.to_spec, spec.bandpass, spec.to_tensor, spec.rescale, spec.out_shape)
    for rate in (22050, 32000):
        params = SpectrogramParams.resolve(rate, **fast.to_spec)
        assert spec.spectrogram_params(rate) == params
        assert spec.tensor_settings(rate) == TensorSettings.from_steps(
            fast.out_shape, params.decibel_limits, bandpass=fast.bandpass, to_tensor=fast.to_tensor,
            rescale=fast.rescale)


def test_the_spec_reproduces_the_per_sample_tensor(labelled_files, saved, model):
    """What a pipeline does with the spec (one STFT, spectrograms_to_tensor) is the model's own input."""
    path = str(labelled_files.index[0])
    spec = inference_spec(saved)
    audio = Audio.from_file(path, duration=spec.sample_duration_s)
    rate = int(audio.sample_rate)
    spec.check_sample_rate(rate)
    values, frequencies, _ = spectrogram_batch(audio.samples[None], rate, spec.spectrogram_params(rate))
    got = spectrograms_to_tensor(values, frequencies, spec.tensor_settings(rate))
    expected = model.preprocessor.forward(AudioSample(path, start_time=0.0, duration=2.0),
                                          bypass_augmentations=True).data
    assert got.shape == (1, 3, 32, 48) and expected.shape == (3, 32, 48)
    np.testing.assert_allclose(got[0].numpy(), expected.numpy(), atol=2e-5)
    assert float(expected.std()) > 0.05


def test_steps_without_a_batch_form_are_named(model, saved, tmp_path):
    limit = model.preprocessor
    limit.insert_action("limit", Action(lambda s: s.limit_db_range(-90, -30)), after_key="to_spec")
    with pytest.raises(NotBatchableError, match="step 'limit' after to_spec"):
        inference_spec(model)
    assert batch_preprocessor(limit) is None  # the same rule

    def insert_limit(description):
        saved_actions = description["preprocessor"]["actions"]
        names = list(saved_actions)
        extra = {"params": {}, "bypass": False, "is_augmentation": False}
        at = names.index("to_spec") + 1
        description["preprocessor"]["actions"] = dict([*saved_actions.items()][:at] + [("limit", extra)] +
                                                      [*saved_actions.items()][at:])

    doctored = with_description(saved, tmp_path / "limit.model", insert_limit)
    with pytest.raises(NotBatchableError, match="'limit'") as error:
        inference_spec(doctored)
    assert isinstance(error.value, OpsoValueError)
    assert "has no batch form" in str(error.value)


def test_audio_steps_run_per_sample_in_predict_but_a_spec_cannot_describe_them():
    model = small_cnn()
    model.preprocessor.insert_action("gain", Action(actions.audio_random_gain), after_key="trim_audio")
    assert batch_preprocessor(model.preprocessor) is not None
    with pytest.raises(NotBatchableError, match="step 'gain' before to_spec"):
        inference_spec(model)


def test_other_preprocessor_classes_replaced_and_bypassed_steps(model, tmp_path):
    class Custom(SpectrogramPreprocessor):
        pass

    model.preprocessor = Custom(2.0, out_shape=SHAPE)
    with pytest.raises(NotBatchableError, match="Custom"):
        inference_spec(model)
    model.preprocessor = BasePreprocessor(2.0)  # opso's own class: it can be saved
    model.save(tmp_path / "base.model")
    with pytest.raises(NotBatchableError, match="the preprocessor is a BasePreprocessor"):
        inference_spec(tmp_path / "base.model")
    replaced = SpectrogramPreprocessor(2.0, out_shape=SHAPE)
    replaced.pipeline["to_tensor"] = Action(lambda s: torch.zeros(3, 32, 48))
    model.preprocessor = replaced
    with pytest.raises(NotBatchableError, match="'to_tensor'.*replaced"):
        inference_spec(model)
    no_tensor = SpectrogramPreprocessor(2.0, out_shape=SHAPE)
    no_tensor.pipeline.to_tensor.bypass = True
    model.preprocessor = no_tensor
    model.save(tmp_path / "no_tensor.model")
    with pytest.raises(NotBatchableError, match="'to_tensor' step is bypassed"):
        inference_spec(tmp_path / "no_tensor.model")
    power = SpectrogramPreprocessor(2.0, out_shape=SHAPE)
    power.pipeline.to_spec.set(dB_scale=False)
    with pytest.raises(NotBatchableError, match="dB_scale=False"):
        batch_form(PreprocessingSteps.of_preprocessor(power))
    bypassed = SpectrogramPreprocessor(2.0, out_shape=SHAPE)
    bypassed.pipeline.bandpass.bypass = True
    bypassed.pipeline.rescale.bypass = True
    model.preprocessor = bypassed
    spec = inference_spec(model)
    assert spec.bandpass is None and spec.rescale is None
    spec.check_sample_rate(8000)  # no band, any rate


def test_active_augmentations_have_no_batch_form():
    steps = PreprocessingSteps.of_preprocessor(SpectrogramPreprocessor(2.0))
    assert batch_form(steps).split == 3  # load_audio, random_trim_audio, trim_audio, then to_spec
    with pytest.raises(NotBatchableError, match="augmentation 'time_mask'"):
        batch_form(steps, bypass_augmentations=False)
    with pytest.raises(NotBatchableError, match="augmentation 'random_trim_audio'"):
        batch_form(steps, bypass_augmentations=False, any_audio_steps=False)


def test_pickled_and_other_files_are_refused(model, tmp_path):
    model.save(tmp_path / "pickled.model", pickle=True)
    with pytest.raises(PickleNotAllowedError, match="pickle"):
        inference_spec(tmp_path / "pickled.model")
    with pytest.raises(PickleNotAllowedError):
        inference_spec((tmp_path / "pickled.model").read_bytes())
    Audio(np.zeros(800, dtype=np.float32), 8000).save(tmp_path / "rec.wav")
    with pytest.raises(OpsoValueError, match="WAV audio file"):
        inference_spec(tmp_path / "rec.wav")
    with pytest.raises(FileNotFoundError):
        inference_spec(tmp_path / "missing.model")
    with pytest.raises(OpsoValueError, match="'classes' is missing"):
        inference_spec({"format": "opso-model", "sample_duration": 2.0})
    with pytest.raises(OpsoTypeError, match="not a int"):
        inference_spec(3)


def test_a_band_beyond_the_nyquist_frequency_fails_every_sample(saved, model):
    spec = inference_spec(saved)  # 0-11,025 Hz, out_of_bounds_ok=False
    spec.check_sample_rate(22050)
    spec.check_sample_rate(44100)
    with pytest.raises(SampleRateError, match=r"0-11025 Hz .* at 16000 Hz reaches only 8000.0 Hz") as error:
        spec.check_sample_rate(16000)
    assert isinstance(error.value, OpsoValueError)
    model.preprocessor.pipeline.bandpass.set(out_of_bounds_ok=True)
    inference_spec(model).check_sample_rate(16000)  # the band is cut to the spectrogram: fine
    model.preprocessor.pipeline.bandpass.set(min_f=-10, out_of_bounds_ok=False)
    with pytest.raises(SampleRateError, match="-10-11025 Hz"):
        inference_spec(model).check_sample_rate(44100)


def test_check_weights_tells_whole_weights_from_damaged_ones(tmp_path):
    """Whole weights pass (also when torch wrote its entries' CRCs as 0); missing, cut short or damaged
    ones are an OpsoValueError saying what to do; no torch load is needed."""
    import zipfile

    import torch.utils.serialization as serialization

    from opso_core import CNN
    from opso_core.errors import OpsoValueError
    from opso_core.ml import cnn_architectures
    from opso_core.ml.persistence import check_weights

    model = CNN(cnn_architectures.resnet18(2, weights=None), ["a", "b"], 2.0, sample_shape=(64, 64, 3))
    path = tmp_path / "m.model"
    model.save(path)
    check_weights(path.read_bytes())
    saved = serialization.config.save.compute_crc32
    serialization.config.save.compute_crc32 = False
    try:
        model.save(tmp_path / "no-crc.model")
    finally:
        serialization.config.save.compute_crc32 = saved
    check_weights(tmp_path / "no-crc.model")
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    weights = members["weights.pt"]

    def model_file(name, new_weights):
        out = tmp_path / f"{name}.model"
        with zipfile.ZipFile(out, "w") as zf:
            for member, content in members.items():
                if member != "weights.pt":
                    zf.writestr(member, content)
                elif new_weights is not None:
                    zf.writestr(member, new_weights)
        return out.read_bytes()

    cut = model_file("cut", weights[: len(weights) // 2])  # a whole model file around half the weights
    raw = model_file("whole", weights)  # then one byte of the weights flipped in the file: its CRC fails
    at = raw.index(weights[1000:1032]) + 10
    flipped = raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:]
    for data, message in ((cut, "damaged or cut short"), (flipped, "damaged or cut short"),
                          (model_file("none", None), "holds no weights.pt")):
        with pytest.raises(OpsoValueError, match=message):
            check_weights(data)
