import tracemalloc

import numpy as np
import pandas as pd
import pytest
import soundfile

from opso_core import Audio, Spectrogram
from opso_core.spectrogram import SpectrogramParams
from opso_core.testing import tone
from pipelines.clip_plan import ClipRange, plan_clips
from pipelines.outputs import OutputLocation
from pipelines.spectrogram_store import clip_audio_batch, compute_chunk, create_store, open_store


def test_clip_audio_matches_from_file(tmp_path):
    path = tmp_path / "a.wav"
    rng = np.random.default_rng(0)
    soundfile.write(path, (0.1 * rng.standard_normal(8000 * 10)).astype(np.float32), 8000, subtype="FLOAT")
    clips = pd.DataFrame({"file": [str(path)] * 3, "start_time": [0.0, 2.3, 9.0]})
    samples, ok, failures = clip_audio_batch(clips, sample_rate_hz=8000, clip_duration_s=2.0)
    assert ok.all() and not failures and samples.shape == (3, 16000)
    for i, start in enumerate(clips.start_time):
        ref = Audio.from_file(path, offset=start, duration=2.0, out_of_bounds_mode="ignore").samples
        np.testing.assert_array_equal(samples[i, : len(ref)], ref)
    assert not samples[2, 8000:].any()  # the clip past the end of the file is padded with silence
    resampled, ok, _ = clip_audio_batch(clips.iloc[:2], sample_rate_hz=4000, clip_duration_s=2.0)
    ref = Audio.from_file(path, offset=2.3, duration=2.0, sample_rate=4000).samples
    np.testing.assert_array_equal(resampled[1], ref)


def test_unreadable_file_fails_its_clips_only(tmp_path):
    good = tmp_path / "good.wav"
    tone(440, 4, 8000).save(good)
    clips = pd.DataFrame({"file": [str(good), str(tmp_path / "gone.wav")], "start_time": [0.0, 0.0]})
    samples, ok, failures = clip_audio_batch(clips, sample_rate_hz=8000, clip_duration_s=2.0)
    assert ok.tolist() == [True, False]
    assert failures[0][0].endswith("gone.wav") and failures[0][1] == "AudioFileNotFoundError"


@pytest.mark.slow
def test_task_memory_does_not_grow_with_file_length(tmp_path):
    """A 40-minute file (77 MB as float32) is processed in chunks of 16 clips x 2 s."""
    path = tmp_path / "long.wav"
    sr = 8000
    minutes = 40
    with soundfile.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        block = (0.1 * np.sin(np.arange(sr * 60) * 0.3)).astype(np.float32)
        for _ in range(minutes):
            f.write(block)
    inv = pd.DataFrame({"file": [str(path)], "recorder": ["r"], "start_time_utc": [pd.NaT],
                        "duration_s": [minutes * 60.0], "status": ["ok"]})
    plan = plan_clips(inv, clip_duration=2.0)
    params = SpectrogramParams.resolve(sr)
    loc = OutputLocation(str(tmp_path / "out"))
    create_store(loc, plan, params=params, sample_rate_hz=sr, clip_duration_s=2.0, clips_per_chunk=16)
    r = ClipRange(640, 656)  # clips from the middle of the file
    tracemalloc.start()
    result = compute_chunk(r, plan.iloc[r.start : r.stop], location=loc, params=params, sample_rate_hz=sr,
                           clip_duration_s=2.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.n_ok == 16
    assert peak < 25e6, f"peak {peak / 1e6:.1f} MB"  # the whole file would be 77 MB as float32
    stored = open_store(loc, mode="r")["spectrogram"][645]
    ref = Spectrogram.from_audio(Audio.from_file(path, offset=plan.start_time[645], duration=2.0))
    np.testing.assert_allclose(stored, ref.spectrogram, atol=1e-5)
