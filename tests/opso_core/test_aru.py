import datetime

import pytest

from opso_core import aru
from opso_core.errors import OpsoValueError, ParseError
from opso_core.testing import tone, write_audiomoth_wav

UTC = datetime.UTC


def tz(hours, minutes=0):
    return datetime.timezone(datetime.timedelta(hours=hours, minutes=minutes))


class TestAudiomothStartTime:
    def test_human_readable_name(self):
        t = aru.audiomoth_start_time("/x/20200404_102500.WAV")
        assert t == datetime.datetime(2020, 4, 4, 10, 25, tzinfo=UTC)
        assert t.utcoffset() == datetime.timedelta(0)

    def test_hex_name(self):
        assert aru.audiomoth_start_time("5F16A04E.WAV") == datetime.datetime(2020, 7, 21, 7, 59, 10,
                                                                               tzinfo=UTC)

    def test_filename_timezone_and_to_utc(self):
        local = aru.audiomoth_start_time("20200704_120000.WAV", filename_timezone="America/New_York")
        assert local.utcoffset() == datetime.timedelta(hours=-4)  # daylight saving time in July
        utc = aru.audiomoth_start_time("20200704_120000.WAV", filename_timezone="America/New_York",
                                       to_utc=True)
        assert utc == datetime.datetime(2020, 7, 4, 16, 0, tzinfo=UTC)
        assert utc.utcoffset() == datetime.timedelta(0)

    def test_hex_requires_utc(self):
        with pytest.raises(OpsoValueError):
            aru.audiomoth_start_time("5F16A04E.WAV", filename_timezone="US/Eastern")

    @pytest.mark.parametrize("name", ["recording.wav", "2020_0404.WAV", "20201304_102500.WAV"])
    def test_bad_names(self, name):
        with pytest.raises(ParseError):
            aru.audiomoth_start_time(name)

    def test_unknown_zone(self):
        with pytest.raises(OpsoValueError, match="time zone"):
            aru.audiomoth_start_time("20200404_102500.WAV", filename_timezone="Mars/Olympus")


COMMENTS = [
    # firmware 1.4-1.5: numeric gain, "battery state", temperature
    ("Recorded at 19:22:55 14/12/2020 (UTC-5) by AudioMoth 24A04F085FDF2793 at gain setting 2 while "
     "battery state was 4.7V and temperature was 11.2C.",
     datetime.datetime(2020, 12, 14, 19, 22, 55, tzinfo=tz(-5)), 2, 4.7, 11.2),
    # firmware 1.5-1.6: "medium gain setting", battery below threshold
    ("Recorded at 10:00:00 15/05/2021 (UTC) by AudioMoth 24A04F085FDF2793 at medium gain setting while "
     "battery state was less than 2.5V.",
     datetime.datetime(2021, 5, 15, 10, 0, tzinfo=UTC), "medium", "less than 2.5V", None),
    # firmware 1.7-1.8: "medium gain", "battery was", negative temperature, half-hour zone
    ("Recorded at 23:59:59 31/01/2022 (UTC+5:30) by AudioMoth 249BC30461CBB1E6 at medium gain while "
     "battery was 4.1V and temperature was -3.5C.",
     datetime.datetime(2022, 1, 31, 23, 59, 59, tzinfo=tz(5, 30)), "medium", 4.1, -3.5),
    # offset written without a colon
    ("Recorded at 06:00:00 01/06/2022 (UTC+0130) by AudioMoth 249BC30461CBB1E6 at high gain while "
     "battery was greater than 4.9V.",
     datetime.datetime(2022, 6, 1, 6, 0, tzinfo=tz(1, 30)), "high", "greater than 4.9V", None),
]


@pytest.mark.parametrize(("comment", "start", "gain", "battery", "temperature"), COMMENTS)
def test_parse_audiomoth_metadata(comment, start, gain, battery, temperature):
    md = aru.parse_audiomoth_metadata({"comment": comment, "artist": "AudioMoth 24A04F085FDF2793"})
    assert md["recording_start_time"] == start
    assert md["recording_start_time"].utcoffset() == start.utcoffset()
    assert md["gain_setting"] == gain
    assert md["battery_state"] == battery
    assert md["device_id"] == "AudioMoth 24A04F085FDF2793"
    if temperature is None:
        assert "temperature_C" not in md
    else:
        assert md["temperature_C"] == temperature


def test_device_id_from_comment_when_artist_missing():
    md = aru.parse_audiomoth_metadata({"comment": COMMENTS[2][0]})
    assert md["device_id"] == "AudioMoth 249BC30461CBB1E6"
    assert md["artist"] is None


def test_unparseable_comment():
    with pytest.raises(ParseError):
        aru.parse_audiomoth_metadata({"comment": "hello"})
    with pytest.raises(ParseError):
        aru.parse_audiomoth_metadata({"artist": "AudioMoth 1"})


def test_parse_from_path(tmp_path):
    start = datetime.datetime(2023, 5, 1, 5, 30, tzinfo=UTC)
    path = write_audiomoth_wav(tmp_path / "20230501_053000.WAV", tone(1000, 1.0, 16000), start,
                               device_id="ABCDEF0123456789", temperature_c=12.5)
    md = aru.parse_audiomoth_metadata_from_path(path)
    assert md["recording_start_time"] == start
    assert md["device_id"] == "AudioMoth ABCDEF0123456789"
    assert md["temperature_C"] == 12.5
    assert md["gain_setting"] == "medium"
    plain = tmp_path / "plain.wav"
    tone(1000, 1.0, 16000).save(plain, metadata_format=None)
    with pytest.raises(OpsoValueError, match="AudioMoth"):
        aru.parse_audiomoth_metadata_from_path(plain)
