"""The chapter 8 flow on a tiny synthetic set: train, save, load, predict, labels, CAM."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from opso_core.errors import NoValidSamplesError, OpsoValueError
from opso_core.metrics import predict_multi_target_labels, predict_single_target_labels
from opso_core.ml import cnn_architectures as ca
from opso_core.ml.cnn import (
    CNN,
    InceptionV3,
    PickleNotAllowedError,
    load_model,
    load_outdated_model,
    separate_resnet_feat_clf,
    use_resample_loss,
)
from opso_core.ml.loss import ResampleLoss

SHAPE = (32, 32, 3)


def small_cnn(single_target=False, arch="resnet18"):
    return CNN(ca.ARCH_DICT[arch](2, weights=None), ["frog", "other"], 2.0, single_target=single_target,
               sample_shape=SHAPE)


@pytest.fixture(scope="module")
def trained(labelled_files, tmp_path_factory):
    save_path = tmp_path_factory.mktemp("ckpt")
    model = small_cnn(single_target=True)
    model.train(labelled_files, labelled_files, epochs=2, batch_size=4, save_path=save_path,
                invalid_samples_log=None)
    return model, save_path


def test_training_records_loss_and_checkpoints(trained):
    model, save_path = trained
    assert sorted(model.loss_hist) == [0, 1] and all(np.isfinite(v) for v in model.loss_hist.values())
    assert model.current_epoch == 2
    assert (save_path / "epoch-0.model").exists() and (save_path / "epoch-1.model").exists()
    assert (save_path / "best.model").exists() and model.best_epoch in (0, 1)
    assert set(model.valid_metrics) == {0, 1} and "f1" in model.valid_metrics[0]


def test_predict_clips_and_activations(trained, labelled_files):
    model, _ = trained
    files = list(labelled_files.index)
    raw = model.predict(files[:2], batch_size=2)
    assert list(raw.index.names) == ["file", "start_time", "end_time"]
    assert list(raw.index.get_level_values("start_time")) == [0.0, 0.0]  # 3 s files, one 2 s clip each
    soft = model.predict(files[:2], batch_size=2, activation_layer="softmax")
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(soft.values, torch.softmax(torch.tensor(raw.values), 1).numpy(), rtol=1e-4, atol=1e-6)
    sig = model.predict(files[:2], batch_size=2, activation_layer="sigmoid")  # same batches as raw
    assert ((sig.values >= 0) & (sig.values <= 1)).all()
    np.testing.assert_allclose(sig.values, torch.sigmoid(torch.tensor(raw.values)).numpy(), rtol=1e-4, atol=1e-6)
    overlapped = model.predict(files[:1], overlap_fraction=0.5, final_clip="full")
    assert list(overlapped.index.get_level_values("start_time")) == [0.0, 1.0]
    whole = model.predict(labelled_files.head(2), split_files_into_clips=False)
    assert list(whole.index) == files[:2]
    with pytest.raises(OpsoValueError):
        model.predict(files[:1], activation_layer="relu")


def test_binary_labels_from_scores(trained, labelled_files):
    model, _ = trained
    scores = model.predict(list(labelled_files.index)[:4], activation_layer="softmax")
    single = predict_single_target_labels(scores)
    assert (single.sum(axis=1) == 1).all() and list(single.columns) == ["frog", "other"]
    multi = predict_multi_target_labels(scores, threshold=0.5)
    assert set(np.unique(multi.values)) <= {0, 1}


def test_safe_format_round_trips_predictions_exactly(trained, labelled_files, tmp_path):
    model, _ = trained
    model.preprocessor.pipeline.bandpass.set(min_f=100, max_f=10000)
    model.preprocessor.pipeline.add_noise.bypass = True
    model.save(tmp_path / "m.model")
    loaded = load_model(tmp_path / "m.model")
    assert isinstance(loaded, CNN) and loaded.classes == ["frog", "other"] and loaded.single_target
    assert loaded.preprocessor.pipeline.bandpass.params["max_f"] == 10000
    assert loaded.preprocessor.pipeline.add_noise.bypass
    assert loaded.preprocessor.pipeline.to_spec.params["decibel_limits"] == (-100, -20)
    assert loaded.loss_hist == model.loss_hist and loaded.current_epoch == model.current_epoch
    files = list(labelled_files.index)
    pd.testing.assert_frame_equal(model.predict(files), loaded.predict(files))
    model.preprocessor.pipeline.bandpass.set(min_f=0, max_f=11025)
    model.preprocessor.pipeline.add_noise.bypass = False


def test_pickled_models_are_refused_unless_allowed(trained, labelled_files, tmp_path):
    model, _ = trained
    model.save(tmp_path / "pickled.model", pickle=True)
    with pytest.raises(PickleNotAllowedError, match="allow_pickle=True"):
        load_model(tmp_path / "pickled.model")
    with pytest.raises(PermissionError):
        load_model(tmp_path / "pickled.model")
    loaded = load_model(tmp_path / "pickled.model", allow_pickle=True)
    files = list(labelled_files.index)[:2]
    pd.testing.assert_frame_equal(model.predict(files), loaded.predict(files))


def test_files_that_are_not_models_say_what_they_are(trained, tmp_path):
    """An audio file, a damaged description or a description that is not JSON: a clear error, never a
    KeyError, a JSONDecodeError or advice about pickles."""
    import json
    import zipfile

    from opso_core.ml import load_model as exported
    from opso_core.ml.persistence import read_description
    from opso_core.testing import tone

    assert exported is load_model  # `from opso_core.ml import load_model` works, as docs/ml.md says
    wav = tmp_path / "rec.wav"
    tone(1000, 0.5, 8000).save(wav)
    with pytest.raises(OpsoValueError, match="is a WAV audio file, not a model file"):
        load_model(wav)
    with pytest.raises(OpsoValueError, match="the file is a WAV audio file, not a model"):
        read_description(wav.read_bytes())
    model, _ = trained
    model.save(tmp_path / "good.model")
    with zipfile.ZipFile(tmp_path / "good.model") as zf:
        weights = zf.read("weights.pt")
    for name, text, message in [("empty.model", "{}", "not an opso-model description"),
                                ("text.model", "not json", "is not valid JSON"),
                                ("no_pre.model", json.dumps({"format": "opso-model", "classes": ["a"]}),
                                 "'sample_duration' is missing")]:
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("opso_model.json", text)
            zf.writestr("weights.pt", weights)
        with pytest.raises(OpsoValueError, match=message):
            load_model(tmp_path / name)
    model.save(tmp_path / "pickled.model", pickle=True)
    with pytest.raises(PickleNotAllowedError, match="torch.save"):
        read_description((tmp_path / "pickled.model").read_bytes())


def test_from_description_builds_the_model_load_model_returns(tmp_path):
    """load_model = persistence.read_safe + build_network + CNN.from_description (persistence never
    imports cnn)."""
    from opso_core.ml.persistence import build_network, read_safe

    torch.manual_seed(3)
    model = small_cnn(single_target=True)
    model.preprocessor.pipeline.to_spec.set(window_samples=256)
    model.optimizer_params["lr"] = 0.002
    model.loss_hist = {0: 0.5}
    model.save(tmp_path / "m.model")
    description, state = read_safe(tmp_path / "m.model")
    assert description["model_class"] == "CNN" and set(state) == set(model.network.state_dict())
    rebuilt = CNN.from_description(description, build_network(description, state), device="cpu")
    assert type(rebuilt) is CNN and rebuilt.device == torch.device("cpu") and rebuilt.single_target
    assert rebuilt.classes == ["frog", "other"] and rebuilt.sample_shape == SHAPE
    assert rebuilt.preprocessor.pipeline.to_spec.params["window_samples"] == 256
    assert rebuilt.optimizer_params["lr"] == 0.002 and rebuilt.loss_hist == {0: 0.5}
    for key, value in model.network.state_dict().items():
        assert torch.equal(rebuilt.network.state_dict()[key], value), key
    # the class the description names: opso's (InceptionV3), or the class it is called on
    assert type(CNN.from_description({**description, "model_class": "InceptionV3"}, rebuilt.network)) is InceptionV3

    class MyCNN(CNN):
        pass

    assert type(MyCNN.from_description({**description, "model_class": "MyCNN"}, rebuilt.network)) is MyCNN
    with pytest.raises(OpsoValueError, match="unknown model class 'MyCNN'"):
        CNN.from_description({**description, "model_class": "MyCNN"}, rebuilt.network)
    with pytest.raises(OpsoValueError, match="unknown model class 'Path'"):
        CNN.from_description({**description, "model_class": "Path"}, rebuilt.network)
    with pytest.raises(OpsoValueError, match="not an opso-model description"):
        CNN.from_description({"classes": ["a"]}, rebuilt.network)


def test_safe_format_refuses_custom_architecture(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32 * 3, 2))
    model = CNN(net, ["a", "b"], 1.0, sample_shape=SHAPE)
    with pytest.raises(ValueError, match="register_arch"):
        model.save(tmp_path / "x.model")
    model.save(tmp_path / "x.model", pickle=True)  # the explicit alternative works


def test_weights_and_torch_dict(trained, labelled_files, tmp_path):
    model, _ = trained
    files = list(labelled_files.index)[:2]
    model.save_weights(tmp_path / "w.pt")
    other = small_cnn(single_target=True)
    other.load_weights(tmp_path / "w.pt")
    pd.testing.assert_frame_equal(model.predict(files), other.predict(files))
    model.save_torch_dict(tmp_path / "d.pt")
    rebuilt = CNN.from_torch_dict(tmp_path / "d.pt")
    assert rebuilt.classes == model.classes and rebuilt.sample_shape == SHAPE
    pd.testing.assert_frame_equal(model.predict(files), rebuilt.predict(files))
    torch.save({"model_state_dict": model.network.state_dict(), "classes": model.classes, "single_target": True},
               tmp_path / "old.tar")
    with pytest.warns(UserWarning, match="preprocessing"):
        old = load_outdated_model(tmp_path / "old.tar", ca.resnet18(2, weights=None), 2.0)
    old.preprocessor.out_shape = SHAPE
    pd.testing.assert_frame_equal(model.predict(files), old.predict(files))


def test_load_outdated_model_renames_old_keys(tmp_path, caplog):
    """OpenSoundscape 0.4.x-0.6.0 saved a ResNet18 as 'feature.<torchvision key>' and 'classifier.<key>',
    with classes in 'labels_yaml' and no 'single_target'; 0.9.0's load_outdated_model renames them."""
    torch.manual_seed(1)
    source = ca.resnet18(2, weights=None)
    old_state = {(f"classifier.{k[3:]}" if k.startswith("fc.") else f"feature.{k}"): v
                 for k, v in source.state_dict().items()}
    torch.save({"model_state_dict": old_state, "labels_yaml": "0: absent\n1: present\n"}, tmp_path / "old.model")
    with pytest.warns(UserWarning, match="preprocessing"):
        model = load_outdated_model(tmp_path / "old.model", "resnet18", 2.0, device="cpu")
    assert model.classes == ["absent", "present"] and model.single_target
    for key, value in source.state_dict().items():
        assert torch.equal(model.network.state_dict()[key], value), key
    assert "not loaded" not in caplog.text
    torch.save({"model_state_dict": {"feature.extra.weight": torch.zeros(1), **old_state}, "classes": ["a", "b"],
                "single_target": False}, tmp_path / "extra.model")
    with pytest.warns(UserWarning, match="preprocessing"):
        extra = load_outdated_model(tmp_path / "extra.model", "resnet18", 2.0, device="cpu")
    assert not extra.single_target and "unexpected ['extra.weight']" in caplog.text
    torch.save(source, tmp_path / "object.model")
    with pytest.raises(PickleNotAllowedError):
        load_outdated_model(tmp_path / "object.model", "resnet18", 2.0)


def test_multi_target_eval_is_map(labelled_files):
    model = small_cnn(single_target=False)
    targets = labelled_files.to_numpy()
    scores = np.where(targets == 1, 0.9, 0.1)
    score, metrics = model.eval(targets, scores)
    assert score == metrics["map"] == 1.0
    single = small_cnn(single_target=True)
    score, metrics = single.eval(targets, scores)
    assert score == metrics["f1"] == 1.0


def test_cam_on_one_sample(trained, labelled_files):
    model, _ = trained
    samples = model.generate_cams(samples=labelled_files.head(1), guided_backprop=True)
    cam = samples[0].cam
    amap = cam.activation_maps[None]
    assert amap.shape == SHAPE[:2] and 0 <= amap.min() and amap.max() <= 1
    assert cam.gbp_maps[None].shape == (3, *SHAPE[:2])
    fig, ax = cam.plot(plt_show=False, mode="backprop_and_activation")
    assert ax.get_title() == "backprop_and_activation for class None"
    per_class = model.generate_cams(samples=list(labelled_files.index)[:1], method="gradcam++", classes=["frog", "other"])
    assert list(per_class[0].cam.activation_maps.index) == ["frog", "other"]
    with pytest.raises(AssertionError, match="bird"):  # 0.9.0's type; an OpsoValueError too
        model.generate_cams(samples=list(labelled_files.index)[:1], classes=["bird"])


@pytest.mark.parametrize("name", ["densenet121", "vgg11_bn"])
def test_cams_of_the_architectures_cam_target_layers(name, labelled_files):
    """The default layer is ``network.cam_target_layers`` (DenseNet's is followed by an in-place ReLU,
    which a module backward hook cannot take); a user's choice there is used."""
    network = ca.ARCH_DICT[name](2, weights=None)
    model = CNN(network, classes=["frog", "other"], sample_duration=3.0)
    first = list(labelled_files.index)[:1]
    default = model.generate_cams(samples=first, classes=["frog"])[0].cam.activation_maps["frog"]
    assert default.shape == (224, 224) and np.isfinite(default).all() and 0.9 < default.max() <= 1
    explicit = model.generate_cams(samples=first, classes=["frog"], target_layers=network.cam_target_layers)
    np.testing.assert_array_equal(explicit[0].cam.activation_maps["frog"], default)
    network.cam_target_layers = [network.features[0]]  # a user's choice, as in 0.9.0
    earlier = model.generate_cams(samples=first, classes=["frog"])[0].cam.activation_maps["frog"]
    assert not np.array_equal(earlier, default)


def test_every_sample_failing_raises_an_index_error_naming_the_cause(trained, tmp_path):
    model, _ = trained
    missing = str(tmp_path / "missing.wav")
    for call in (lambda: model.predict([missing]), lambda: model.generate_cams([missing]),
                 lambda: model.predict([missing], split_files_into_clips=False)):
        with pytest.raises(NoValidSamplesError, match="missing.wav.*AudioFileNotFoundError"), \
                pytest.warns(UserWarning, match="the first sample .*missing.wav was not found"):
            call()
    with pytest.raises(IndexError, match="missing.wav.*AudioFileNotFoundError"), \
            pytest.warns(UserWarning, match="not found"):  # 0.9.0's type
        model.embed([missing])
    with pytest.raises(AssertionError, match="single string"):  # 0.9.0 asserted the type; a TypeError too
        model.predict(missing)


def test_generate_cams_warns_as_predict_does(trained, tmp_path):
    from opso_core.audio import Audio

    model, _ = trained
    short = tmp_path / "short.wav"
    Audio(np.zeros(22050, dtype=np.float32), 22050).save(short)
    with pytest.warns(UserWarning, match="no samples to predict on.*short.wav"):
        assert model.generate_cams([str(short)]) == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_failed_samples_are_listed_with_loader_workers(trained, labelled_files, tmp_path, num_workers):
    """With DataLoader workers the SafeDataset's record stays in the worker processes: the failures are
    counted from the batches instead (0.9.0 gave the failed sample another sample's scores there)."""
    model, _ = trained
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    files = [list(labelled_files.index)[0], str(bad)]
    with pytest.warns(UserWarning, match="1 of 2 samples could not be loaded"):
        scores, invalid = model.predict(files, split_files_into_clips=False, num_workers=num_workers,
                                        return_invalid_samples=True)
    assert invalid == {str(bad)} and scores.loc[str(bad)].isna().all() and scores.iloc[0].notna().all()
    with pytest.raises(NoValidSamplesError, match="bad.wav.*AudioFormatError"):
        model.predict([str(bad)], split_files_into_clips=False, num_workers=num_workers)


def test_embed_names_samples_failing_in_the_batch_step(trained, tmp_path):
    """A file the standard preprocessor's batch step refuses (16 kHz, below the model's 0-11025 Hz band)."""
    from opso_core.audio import Audio

    model, _ = trained
    low = tmp_path / "low.wav"
    Audio(np.zeros(16000 * 3, dtype=np.float32), 16000).save(low)
    with pytest.raises(NoValidSamplesError, match="low.wav.*reaches outside"):
        model.embed([str(low)])
    with pytest.raises(NoValidSamplesError, match="low.wav.*reaches outside"):
        model.predict([str(low)])


def test_string_architecture_and_offline_pretrained_error(monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ca.PretrainedWeightsUnavailableError, match="weights=None"):
        CNN("resnet18", ["a"], 2.0)
    with pytest.raises(ValueError, match="unknown architecture"):
        CNN("resnet9000", ["a"], 2.0)


def test_inception_v3_trains_with_aux_output(labelled_files, tmp_path):
    model = InceptionV3(["frog", "other"], 2.0, single_target=True, weights=None, sample_shape=(299, 299, 3))
    model.train(labelled_files.head(2), epochs=1, batch_size=2, save_path=tmp_path, invalid_samples_log=None)
    assert np.isfinite(model.loss_hist[0])
    assert model.predict(list(labelled_files.index)[:1]).shape == (1, 2)


def test_resample_loss_and_separate_optimizer(labelled_files, tmp_path):
    model = use_resample_loss(small_cnn())
    model = separate_resnet_feat_clf(model)
    model.train(labelled_files.head(4), epochs=1, batch_size=2, save_path=tmp_path, invalid_samples_log=None)
    assert isinstance(model.loss_fn, ResampleLoss)
    groups = model.opt_net.param_groups
    assert [g["lr"] for g in groups] == [0.001, 0.01]
    assert len(groups[1]["params"]) == 2  # fc weight and bias
    model.save(tmp_path / "r.model")
    assert load_model(tmp_path / "r.model").loss_cls is ResampleLoss


def test_training_validates_labels(labelled_files, tmp_path):
    model = small_cnn(single_target=True)
    with pytest.raises(OpsoValueError, match="classes"):
        model.train(labelled_files[["other", "frog"]], save_path=tmp_path)
    both = labelled_files.assign(other=1)
    with pytest.raises(OpsoValueError, match="single-target"):
        model.train(both, save_path=tmp_path)


def test_bad_files_get_nan_scores_and_are_logged(trained, labelled_files, tmp_path, caplog):
    model, _ = trained
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    df = pd.DataFrame({"frog": [1, 0], "other": [0, 1]}, index=[list(labelled_files.index)[0], str(bad)])
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="1 of 2 samples could not be loaded"):
        scores, invalid = model.predict(df, split_files_into_clips=False, return_invalid_samples=True,
                                        invalid_samples_log=tmp_path / "bad.log")
    assert np.isfinite(scores.iloc[0]).all() and scores.iloc[1].isna().all()
    assert invalid == {str(bad)} and str(bad) in (tmp_path / "bad.log").read_text()


@pytest.mark.parametrize("settings", [{}, {"window_samples": 400, "overlap_samples": 100, "fft_size": 1024,
                                           "window_type": "hamming"},
                                      {"scaling": "density", "decibel_limits": (-150, 0)}, {"dB_scale": False}])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (none is visible)")])])
def test_spectrograms_on_device_equal_spectrogram_batch(settings, device):
    """The torch transform (used on GPU workers) gives the numpy path's values: 1e-4 dB, or 1e-6 relative power."""
    from opso_core.ml.spectrogram_tensors import spectrograms_on_device
    from opso_core.stft import SpectrogramParams, spectrogram_batch

    rng = np.random.default_rng(7)
    params = SpectrogramParams.resolve(22050, **settings)
    x = (rng.standard_normal((5, 30000)) * np.linspace(0.001, 0.3, 30000)).astype(np.float32)
    expected = spectrogram_batch(x, 22050, params, dtype=np.float32)[0]
    got = spectrograms_on_device(x, 22050, params, device=device).cpu().numpy()
    assert got.shape == expected.shape == (5, params.n_frequencies(), params.n_times(30000))
    assert got.dtype == np.float32
    if params.dB_scale:
        assert np.abs(got - expected).max() < 1e-4
        assert got.min() >= params.decibel_limits[0] and got.max() <= params.decibel_limits[1]
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    with pytest.raises(OpsoValueError, match="shorter than one spectrogram window"):
        spectrograms_on_device(x[:, :100], 22050, params)
