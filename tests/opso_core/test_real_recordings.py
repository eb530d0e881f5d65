"""Checks against OpenSoundscape's own test recordings (OPSO_TEST_DATA; skipped when unset)."""

import datetime
import warnings

import numpy as np
import pytest

from opso_core import Audio, Spectrogram
from opso_core.audio_info import audio_file_info
from opso_core.errors import MixdownWarning

pytestmark = pytest.mark.data


def test_1min_wav(test_audio_dir):
    a = Audio.from_file(test_audio_dir / "1min.wav")
    assert a.sample_rate == 32000 and len(a.samples) == 1_920_000 and a.duration == 60.0
    # the tutorial's numbers (chapter 5.3.3)
    assert f"{a.rms:0.3f}" == "0.013" and f"{a.dBFS:0.1f}" == "-34.5"
    md = a.metadata
    assert md["recording_start_time"] == datetime.datetime(2018, 5, 4, 9, 32, tzinfo=datetime.UTC)
    assert md["gain_setting"] == 2 and md["battery_state"] == 4.3
    assert md["device_id"] == "AudioMoth 0FE081F80FE081F0"


def test_1min_segment_and_resample(test_audio_dir):
    whole = Audio.from_file(test_audio_dir / "1min.wav")
    seg = Audio.from_file(test_audio_dir / "1min.wav", offset=2.0, duration=1.0)
    assert seg.duration == 1.0
    np.testing.assert_array_equal(seg.samples, whole.samples[64000:96000])
    assert seg.metadata["recording_start_time"] == datetime.datetime(2018, 5, 4, 9, 32, 2, tzinfo=datetime.UTC)
    assert Audio.from_file(test_audio_dir / "1min.wav", sample_rate=22050).sample_rate == 22050


def test_1min_spectrogram_axes(test_audio_dir):
    spec = Spectrogram.from_audio(Audio.from_file(test_audio_dir / "1min.wav"))
    np.testing.assert_allclose(spec.times[:5], [0.008, 0.016, 0.024, 0.032, 0.04])
    np.testing.assert_allclose(spec.frequencies[:5], [0, 62.5, 125, 187.5, 250])
    clips, df = Audio.from_file(test_audio_dir / "1min.wav").split(5)
    assert len(clips) == 12


def test_metadata_wav_audiomoth(test_audio_dir):
    a = Audio.from_file(test_audio_dir / "metadata.wav")
    assert a.metadata["recording_start_time"] == datetime.datetime(2020, 4, 4, 10, 25, tzinfo=datetime.UTC)
    assert a.metadata["device_id"] == "AudioMoth 24526B065D325963"
    seg = Audio.from_file(test_audio_dir / "metadata.wav",
                          start_timestamp=datetime.datetime(2020, 4, 4, 10, 25, 5, tzinfo=datetime.UTC),
                          duration=2)
    np.testing.assert_array_equal(seg.samples, a.samples[5 * 32000:7 * 32000])


def test_opso_metadata_comment(test_audio_dir):
    a = Audio.from_file(test_audio_dir / "LOCA_2021_09_24_652_3.wav")
    assert isinstance(a.metadata["recording_start_time"], datetime.datetime)
    assert a.metadata["samplerate"] == 22050 and a.duration == 1.0


def test_mp3(test_audio_dir):
    a = Audio.from_file(test_audio_dir / "silence_10s.mp3")
    assert a.sample_rate == 44100 and a.duration == pytest.approx(10.0, abs=0.05)
    seg = Audio.from_file(test_audio_dir / "silence_10s.mp3", offset=5, duration=2)
    assert seg.duration == pytest.approx(2.0)


def test_stereo_is_not_mixed_silently(test_audio_dir):
    with pytest.warns(MixdownWarning):
        Audio.from_file(test_audio_dir / "stereo.wav")


def test_empty_two_channel_file(test_audio_dir):
    info = audio_file_info(test_audio_dir / "empty_2c.wav")
    assert info.frames == 0 and info.channels == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = Audio.from_file(test_audio_dir / "empty_2c.wav")
    assert len(a.samples) == 0


def test_headers_of_all_recordings(opso_test_data):
    expected = {"tests/audio/great_plains_toad.wav": (44100, 1965596),
                "tests/audio/rugr_drum.wav": (32000, 320000),
                "tests/audio/veryshort.wav": (44100, 6266),
                "tests/audio/audiomoth_gps.wav": (48000, 95999),
                "opensoundscape/sample_data/birds_10s.wav": (32000, 324263)}
    for rel, (sr, frames) in expected.items():
        info = audio_file_info(opso_test_data / rel)
        assert (info.sample_rate_hz, info.frames) == (sr, frames) and not info.truncated
