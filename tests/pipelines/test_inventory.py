import datetime
import os

import pandas as pd
import pytest

from opso_core.errors import ParseError
from opso_core.testing import tone, write_audiomoth_wav, write_bad_files
from pipelines.driver.clip_plan import plan_clips
from pipelines.driver.inventory import (
    INVENTORY_COLUMNS,
    add_clip_counts_and_warnings,
    inventory_files,
    list_audio_files,
    recorder_of,
    start_time_of,
)
from pipelines.errors import StorageError

UTC = datetime.UTC


@pytest.fixture
def archive(tmp_path):
    t0 = datetime.datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
    write_audiomoth_wav(tmp_path / "siteA" / "20240501_060000.WAV", tone(1000, 3.0, 8000), t0)
    (tmp_path / "siteB").mkdir()
    tone(1000, 2.0, 8000).save(tmp_path / "siteB" / "B1_20240501_070000.wav", metadata_format=None)
    write_bad_files(tmp_path / "broken")
    (tmp_path / "notes.txt").write_text("not matched by the pattern")
    return tmp_path


def test_list_audio_files(archive):
    files = list_audio_files(str(archive), "**/*.[wW][aA][vV]")
    assert files == sorted(files)
    assert len(files) == 6 and not any(f.endswith(".txt") for f in files)
    with pytest.raises(StorageError, match="does not exist"):
        list_audio_files(str(archive / "nope"), "*.wav")


def test_list_remote_keeps_protocol():
    tone(440, 1, 8000).save("memory://inv/r1/a.wav")
    (url,) = list_audio_files("memory://inv", "**/*.wav")
    assert url.startswith("memory://") and url.endswith("inv/r1/a.wav")
    assert inventory_files([url]).status[0] == "ok"


def test_recorder_rules():
    assert recorder_of("/data/siteA/x.wav") == "siteA"
    assert recorder_of("s3://bucket/aru/ARU-07/x.wav") == "ARU-07"
    assert recorder_of("/data/ARU-07_20240101_000000.wav", r"(?P<recorder>ARU-\d+)_") == "ARU-07"
    with pytest.raises(ParseError):
        recorder_of("/data/x.wav", r"(?P<recorder>ARU-\d+)")


def test_start_times():
    comment = "Recorded at 10:00:00 15/05/2021 (UTC-5) by AudioMoth 24A04F085FDF2793 at medium gain while battery was 4.1V."
    assert start_time_of("/x/whatever.wav", {"comment": comment}) == datetime.datetime(2021, 5, 15, 15, 0, tzinfo=UTC)
    assert start_time_of("/x/20210515_100000.WAV", {}) == datetime.datetime(2021, 5, 15, 10, 0, tzinfo=UTC)
    assert start_time_of("/x/20210515_100000.WAV", {}, timezone="America/New_York") == \
        datetime.datetime(2021, 5, 15, 14, 0, tzinfo=UTC)
    assert start_time_of("/x/SMM07_20210515_100000.wav", {}) == datetime.datetime(2021, 5, 15, 10, 0, tzinfo=UTC)
    assert start_time_of("/x/5F16A04E.WAV", {}) == datetime.datetime(2020, 7, 21, 7, 59, 10, tzinfo=UTC)
    assert start_time_of("/x/recording.wav", {}) is None


def test_inventory_rows(archive):
    files = list_audio_files(str(archive), "**/*.[wW][aA][vV]")
    inv = inventory_files(files)
    assert list(inv.columns) == INVENTORY_COLUMNS and len(inv) == 6
    by_name = inv.set_index(inv.file.str.split("/").str[-1])
    ok = by_name.loc["20240501_060000.WAV"]
    assert ok.status == "ok" and ok.recorder == "siteA" and ok.sample_rate == 8000 and ok.frames == 24000
    assert ok.duration_s == 3.0 and ok.start_time_utc == pd.Timestamp("2024-05-01 06:00", tz="UTC")
    assert by_name.loc["B1_20240501_070000.wav"].start_time_utc == pd.Timestamp("2024-05-01 07:00", tz="UTC")
    assert by_name.loc["truncated.wav"].status == "truncated"
    for bad in ("empty.wav", "not_audio.wav", "bad_header.wav"):
        row = by_name.loc[bad]
        assert row.status == "failed" and row.error.startswith("AudioFormatError")
    assert by_name.loc["empty.wav"].recorder == "broken"


def test_start_time_source_and_name_comment_disagreement(tmp_path):
    """Four copies of one AudioMoth file renamed to other hours: the comment wins, each row says so, and
    the repeated start time of one recorder is flagged too."""
    recorded = datetime.datetime(2018, 5, 4, 9, 32, tzinfo=UTC)
    src = write_audiomoth_wav(tmp_path / "moth" / "20180504_093200.WAV", tone(1000, 1.0, 8000), recorded)
    data = src.read_bytes()
    for hour in (1, 3, 5, 7):
        (tmp_path / "moth" / f"20240501_0{hour}0000.WAV").write_bytes(data)
    tone(1000, 1.0, 8000).save(tmp_path / "plain" / "20240501_070000.wav", metadata_format=None)
    tone(1000, 1.0, 8000).save(tmp_path / "plain" / "unnamed.wav", metadata_format=None)
    inv = inventory_files(list_audio_files(str(tmp_path), "**/*.[wW][aA][vV]"))
    inv = add_clip_counts_and_warnings(inv, plan_clips(inv, clip_duration=1.0).groupby("file").size())
    by_name = inv.set_index(inv.file.str.split("/").str[-1])
    assert by_name.loc["20240501_070000.wav", "start_time_source"] == "file_name"
    assert by_name.loc["unnamed.wav", "start_time_source"] == "none" and pd.isna(by_name.loc["unnamed.wav", "warning"])
    copies = by_name[by_name.index.str.startswith("20240501_0") & by_name.index.str.endswith(".WAV")]
    assert (copies.start_time_source == "comment").all()
    assert (copies.start_time_utc == pd.Timestamp("2018-05-04 09:32", tz="UTC")).all()
    for warning in copies.warning:
        assert "the AudioMoth comment says 2018-05-04 09:32:00 UTC" in warning and "2,1" in warning  # days apart
        assert "recorder moth has 4 other file(s) starting at 2018-05-04 09:32:00 UTC" in warning
    original = by_name.loc["20180504_093200.WAV"]
    assert "disagree" not in original.warning and "comment says" not in original.warning  # name and comment agree
    assert "4 other file(s)" in original.warning
    # a resumed run passes the stored inventory again: the same table, no note added twice
    again = add_clip_counts_and_warnings(inv, plan_clips(inv, clip_duration=1.0).groupby("file").size())
    assert again.equals(inv)


def test_readable_files_without_a_clip_are_listed(tmp_path):
    """A 5-frame stereo file, a 0.14 s file and a 1.99998 s AudioMoth file give no 2 s clip: no_clips,
    n_clips 0 and a NoClips reason, instead of 'ok' and nothing anywhere."""
    import numpy as np
    import soundfile

    (tmp_path / "rec").mkdir()
    soundfile.write(tmp_path / "rec" / "five_frames.wav", np.zeros((5, 2), dtype=np.float32), 8000)
    tone(1000, 0.14, 8000).save(tmp_path / "rec" / "short.wav", metadata_format=None)
    t0 = datetime.datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
    moth = tone(1000, 2.0, 48000)
    moth.samples = moth.samples[:-1]  # 1.99998 s: one sample short of a clip
    write_audiomoth_wav(tmp_path / "rec" / "20240501_060000.WAV", moth, t0)
    tone(1000, 4.0, 8000).save(tmp_path / "rec" / "long.wav", metadata_format=None)
    inv = inventory_files(list_audio_files(str(tmp_path), "**/*.[wW][aA][vV]"))
    plan = plan_clips(inv, clip_duration=2.0)
    inv = add_clip_counts_and_warnings(inv, plan.groupby("file").size())
    by_name = inv.set_index(inv.file.str.split("/").str[-1])
    assert list(inv.columns) == INVENTORY_COLUMNS
    assert by_name.loc["long.wav", "status"] == "ok" and by_name.loc["long.wav", "n_clips"] == 2
    for name in ("five_frames.wav", "short.wav", "20240501_060000.WAV"):
        row = by_name.loc[name]
        assert row.status == "no_clips" and row.n_clips == 0, name
        assert row.error.startswith("NoClips: ") and "shorter than one clip" in row.error
    assert by_name.loc["five_frames.wav", "channels"] == 2
    assert add_clip_counts_and_warnings(inv, plan.groupby("file").size()).equals(inv)  # idempotent (resume)
    # a file without a clip of the run's length keeps the clips of a shorter length (a CNN's), also when
    # the plan is made again from the stored inventory (a resumed run)
    short_plan = plan_clips(inv, clip_duration=0.1)
    assert {"short.wav", "20240501_060000.WAV"} <= set(short_plan.file.str.split("/").str[-1])


def test_a_folder_that_cannot_be_listed_becomes_a_failed_row(tmp_path, monkeypatch):
    """A recorder folder opso may not read (mode 000 for another user) is named, never silently empty."""
    from pipelines.driver.inventory import list_archive, unlisted_folder_rows

    for site in ("siteA", "siteB"):
        tone(1000, 1.0, 8000).save(tmp_path / site / "a.wav", metadata_format=None)
    locked = str(tmp_path / "siteB")
    scandir = os.scandir

    def refusing_scandir(path="."):
        if str(path).rstrip("/") == locked:
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)

    if os.geteuid() == 0:  # root reads mode-000 folders: simulate the refusal another user gets
        monkeypatch.setattr(os, "scandir", refusing_scandir)
    else:
        os.chmod(locked, 0)
    try:
        listing = list_archive(str(tmp_path), "**/*.wav")
    finally:
        os.chmod(locked, 0o755)
    assert [f.split("/")[-2] for f in listing.files] == ["siteA"]
    assert listing.unlisted == ((locked, "PermissionError: Permission denied"),)
    rows = unlisted_folder_rows(listing.unlisted)
    assert list(rows.columns) == INVENTORY_COLUMNS
    row = rows.iloc[0]
    assert row.file == locked + "/" and row.recorder == "siteB" and row.status == "failed"
    assert row.error.startswith("PermissionError: Permission denied (this folder could not be listed")


def test_a_file_without_clips_gets_its_status_back_when_shorter_clips_fit():
    """An update with shorter clips reuses the stored inventory: ``no_clips`` is worked out afresh."""
    from pipelines.driver.inventory import add_clip_counts_and_warnings

    rows = pd.DataFrame({"file": ["a.wav", "b.wav"], "recorder": ["r", "r"], "start_time_utc": [pd.NaT, pd.NaT],
                         "sample_rate": [16000, 16000], "channels": [1, 1], "frames": [48000, 16000],
                         "duration_s": [3.0, 1.0], "size_bytes": [1, 1], "n_clips": [None, None],
                         "status": ["ok", "truncated"], "error": [None, "TruncatedAudio: header declares 32000 frames"],
                         "warning": [None, None]})
    long_clips = add_clip_counts_and_warnings(rows, pd.Series({"x": 1}))
    assert long_clips["status"].tolist() == ["no_clips", "no_clips"]
    assert long_clips["error"][1].startswith("NoClips:") and "TruncatedAudio" in long_clips["error"][1]
    short_clips = add_clip_counts_and_warnings(long_clips, pd.Series({"a.wav": 3, "b.wav": 1}))
    assert short_clips["status"].tolist() == ["ok", "truncated"]
    assert pd.isna(short_clips["error"][0])
    assert short_clips["error"][1] == "TruncatedAudio: header declares 32000 frames"
    assert short_clips["n_clips"].tolist() == [3, 1]
