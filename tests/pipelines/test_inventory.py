import datetime

import pandas as pd
import pytest

from opso_core.errors import ParseError
from opso_core.testing import tone, write_audiomoth_wav, write_bad_files
from pipelines.errors import StorageError
from pipelines.inventory import (
    INVENTORY_COLUMNS,
    inventory_files,
    list_audio_files,
    recorder_of,
    start_time_of,
)

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
