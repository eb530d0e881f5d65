import tracemalloc

import numpy as np
import pandas as pd
import pytest
import soundfile

from opso_core import Audio, Spectrogram
from opso_core.spectrogram import SpectrogramParams
from opso_core.testing import tone
from pipelines.driver.clip_plan import ClipRange, plan_clips
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.spectrogram_store import (
    StoreEncoding,
    clip_audio_batch,
    create_store,
    open_store,
)
from pipelines.stages.spectrograms import SpectrogramTask


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
    """A 40-minute file (77 MB as float32) is processed in ranges of 16 clips x 2 s."""
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
    encoding = StoreEncoding("full")
    create_store(loc, len(plan), params=params, sample_rate_hz=sr, clip_duration_s=2.0, clips_per_chunk=16,
                 encoding=encoding)
    task = SpectrogramTask(params=params, sample_rate_hz=sr, clip_duration_s=2.0, input_storage_options={},
                           encoding=encoding, clips_per_chunk=16, n_clips=len(plan))
    r = ClipRange(640, 656)  # clips from the middle of the file
    tracemalloc.start()
    record = task(r, plan.iloc[r.start : r.stop], loc)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert record["n_ok"] == 16 and record["failures"] == []
    assert peak < 25e6, f"peak {peak / 1e6:.1f} MB"  # the whole file would be 77 MB as float32
    stored = open_store(loc, mode="r")["spectrogram"][645]
    ref = Spectrogram.from_audio(Audio.from_file(path, offset=plan.start_time[645], duration=2.0))
    np.testing.assert_allclose(stored, ref.spectrogram, atol=1e-5)


@pytest.mark.parametrize("kind", ["compact", "full"])
def test_store_encodings_round_trip_through_xarray(tmp_path, kind):
    import xarray as xr

    sr = 8000
    path = tmp_path / "a.wav"
    rng = np.random.default_rng(1)
    soundfile.write(path, (0.05 * rng.standard_normal(sr * 9)).astype(np.float32), sr, subtype="PCM_16")
    inv = pd.DataFrame({"file": [str(path), str(tmp_path / "gone.wav")], "recorder": ["r", "r"],
                        "start_time_utc": [pd.NaT, pd.NaT], "duration_s": [9.0, 2.0], "status": ["ok", "ok"]})
    plan = plan_clips(inv, clip_duration=2.0)
    params = SpectrogramParams.resolve(sr, window_samples=256)
    encoding = StoreEncoding(kind, 0.625, (-100.0, -20.0))
    loc = OutputLocation(str(tmp_path / "out"))
    create_store(loc, len(plan), params=params, sample_rate_hz=sr, clip_duration_s=2.0, clips_per_chunk=2,
                 encoding=encoding)
    task = SpectrogramTask(params=params, sample_rate_hz=sr, clip_duration_s=2.0, input_storage_options={},
                           encoding=encoding, clips_per_chunk=2, n_clips=len(plan))
    record = task(ClipRange(0, 5), plan, loc)  # the last chunk is partial: padded as zarr stores it
    assert record["n_ok"] == 4 and record["failures"][0][0].endswith("gone.wav clips 4-4")
    ds = xr.open_zarr(loc.url_of("spectrograms.zarr"))
    assert ds.attrs["store"] == kind and ds.attrs["precision_db"] == (0.3125 if kind == "compact" else 0.0)
    for clip in range(4):
        ref = Spectrogram.from_audio(Audio.from_file(path, offset=2.0 * clip, duration=2.0), window_samples=256)
        got = ds.spectrogram.isel(clip=clip).values
        if kind == "compact":
            assert np.abs(got - ref.spectrogram).max() <= 0.3125 + 1e-4
            assert np.isin(np.round((got + 100) / 0.625, 3) % 1, [0]).all()  # on the grid
        else:
            np.testing.assert_allclose(got, ref.spectrogram, atol=1e-5)
    assert np.isnan(ds.spectrogram.isel(clip=4).values).all()  # the unreadable file's clip
    # per-clip coordinates come from the task, chunk by chunk (the last chunk padded)
    assert list(ds.file.values) == list(plan.file) and list(ds.recorder.values) == ["r"] * 5
    np.testing.assert_array_equal(ds.start_time.values, plan.start_time.to_numpy())
    np.testing.assert_array_equal(ds.end_time.values, plan.end_time.to_numpy())
    assert ds.start_time_utc.isnull().all()
    raw = open_store(loc, mode="r")["spectrogram"]
    assert raw.dtype == (np.uint8 if kind == "compact" else np.float32)


def test_clip_index_chunks_are_written_by_the_task_holding_their_first_clip(tmp_path, monkeypatch):
    """A store's ``clip`` coordinate has chunks of CLIP_INDEX_CHUNK clips (xarray reads it whole on
    opening); each is written by the task whose range holds its first clip, so the driver writes none."""
    import xarray as xr

    from pipelines.outputs import spectrogram_store

    monkeypatch.setattr(spectrogram_store, "CLIP_INDEX_CHUNK", 4)
    sr = 8000
    path = tmp_path / "a.wav"
    soundfile.write(path, np.zeros(sr * 22, dtype=np.float32), sr, subtype="PCM_16")
    inv = pd.DataFrame({"file": [str(path)], "recorder": ["r"], "start_time_utc": [pd.NaT], "duration_s": [22.0],
                        "status": ["ok"]})
    plan = plan_clips(inv, clip_duration=2.0)  # 11 clips: index chunks [0-3] [4-7] [8-10 + padding]
    params = SpectrogramParams.resolve(sr, window_samples=256)
    loc = OutputLocation(str(tmp_path / "out"))
    create_store(loc, len(plan), params=params, sample_rate_hz=sr, clip_duration_s=2.0, clips_per_chunk=2)
    task = SpectrogramTask(params=params, sample_rate_hz=sr, clip_duration_s=2.0, input_storage_options={},
                           encoding=StoreEncoding(), clips_per_chunk=2, n_clips=len(plan))
    assert not (tmp_path / "out/spectrograms.zarr/clip/0").exists()
    for start, stop in [(0, 6), (6, 10), (10, 11)]:
        task(ClipRange(start, stop), plan.iloc[start:stop], loc)
    assert sorted(p.name for p in (tmp_path / "out/spectrograms.zarr/clip").iterdir() if p.name[0] != ".") == \
        ["0", "1", "2"]
    ds = xr.open_zarr(loc.url_of("spectrograms.zarr"))
    assert list(ds["clip"].values) == list(range(11))
    assert ds.spectrogram.sel(clip=9).shape == ds.spectrogram.isel(clip=0).shape

    # the task holding a chunk's first clip failed: the others of that chunk write it
    loc2 = OutputLocation(str(tmp_path / "out2"))
    create_store(loc2, len(plan), params=params, sample_rate_hz=sr, clip_duration_s=2.0, clips_per_chunk=2)
    for start, stop in [(6, 10), (10, 11)]:  # (0, 6) never ran
        task(ClipRange(start, stop), plan.iloc[start:stop], loc2)
    assert sorted(p.name for p in (tmp_path / "out2/spectrograms.zarr/clip").iterdir() if p.name[0] != ".") == \
        ["1", "2"]
    assert list(open_store(loc2, mode="r")["clip"][4:]) == list(range(4, 11))
