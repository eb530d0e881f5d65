import datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opso_core import utils
from opso_core.errors import GetDurationError, OpsoTypeError, OpsoValueError, ParseError
from opso_core.testing import tone


def times(df):
    return list(zip(df["start_time"], df["end_time"], strict=True))


class TestGenerateClipTimesDf:
    def test_tutorial_split_60s_into_5s(self):
        df = utils.generate_clip_times_df(60, 5)
        assert len(df) == 12
        assert times(df)[:3] == [(0.0, 5.0), (5.0, 10.0), (10.0, 15.0)]
        assert times(df)[-1] == (55.0, 60.0)
        assert list(df.columns) == ["start_time", "end_time"]
        assert list(df.index) == list(range(12))

    def test_tutorial_overlap_2_5s(self):
        df = utils.generate_clip_times_df(60, 5, clip_overlap=2.5)
        assert times(df)[:5] == [(0.0, 5.0), (2.5, 7.5), (5.0, 10.0), (7.5, 12.5), (10.0, 15.0)]
        assert times(df)[-1] == (55.0, 60.0)
        assert len(df) == 23

    def test_tutorial_negative_overlap_leaves_gaps(self):
        df = utils.generate_clip_times_df(60, 5, clip_overlap=-5)
        assert times(df) == [(0.0, 5.0), (10.0, 15.0), (20.0, 25.0), (30.0, 35.0), (40.0, 45.0), (50.0, 55.0)]

    def test_final_clip_none_drops_remainder(self):
        assert times(utils.generate_clip_times_df(12, 5)) == [(0.0, 5.0), (5.0, 10.0)]

    def test_final_clip_remainder(self):
        assert times(utils.generate_clip_times_df(12, 5, final_clip="remainder")) == [
            (0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]

    def test_final_clip_extend(self):
        assert times(utils.generate_clip_times_df(12, 5, final_clip="extend")) == [
            (0.0, 5.0), (5.0, 10.0), (10.0, 15.0)]

    def test_final_clip_full_shifts_back(self):
        assert times(utils.generate_clip_times_df(12, 5, final_clip="full")) == [
            (0.0, 5.0), (5.0, 10.0), (7.0, 12.0)]

    def test_full_removes_duplicates_with_overlap(self):
        df = utils.generate_clip_times_df(10, 4, clip_overlap=2, final_clip="full")
        assert times(df) == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0)]
        assert list(df.index) == [0, 1, 2, 3]

    def test_full_shorter_than_clip_returns_whole(self):
        assert times(utils.generate_clip_times_df(3, 5, final_clip="full")) == [(0.0, 3.0)]

    def test_shorter_than_clip_none_gives_empty(self):
        df = utils.generate_clip_times_df(3, 5)
        assert len(df) == 0 and list(df.columns) == ["start_time", "end_time"]

    def test_exact_multiple_has_no_extra_clip(self):
        # 0.3 / 0.1 is 2.9999999999999996 in floating point; there must be exactly 3 clips
        assert times(utils.generate_clip_times_df(0.3, 0.1, final_clip="extend")) == [
            (0.0, 0.1), (0.1, 0.2), (0.2, 0.3)]

    def test_no_float_drift_over_long_recordings(self):
        df = utils.generate_clip_times_df(24 * 3600, 0.1)
        assert len(df) == 864000
        assert df["start_time"].iloc[-1] == 86399.9
        assert df["end_time"].iloc[-1] == 86400.0

    def test_zero_duration(self):
        assert len(utils.generate_clip_times_df(0, 5, final_clip="remainder")) == 0

    @pytest.mark.parametrize("kwargs", [dict(clip_duration=0), dict(clip_duration=-1),
                                        dict(clip_duration=5, clip_overlap=5),
                                        dict(clip_duration=5, final_clip="bogus")])
    def test_invalid_arguments(self, kwargs):
        with pytest.raises(OpsoValueError):
            utils.generate_clip_times_df(10, **kwargs)

    def test_negative_full_duration(self):
        with pytest.raises(ValueError, match="full_duration"):
            utils.generate_clip_times_df(-1, 5)


durations = st.floats(min_value=0, max_value=3600, allow_nan=False)
clip_lengths = st.floats(min_value=0.01, max_value=120, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(full=durations, clip=clip_lengths, overlap_frac=st.floats(-1, 0.95),
       final_clip=st.sampled_from([None, "extend", "remainder", "full"]))
def test_clip_tables_cover_the_file_as_final_clip_says(full, clip, overlap_frac, final_clip):
    overlap = clip * overlap_frac
    df = utils.generate_clip_times_df(full, clip, clip_overlap=overlap, final_clip=final_clip,
                                      rounding_precision=None)
    starts, ends = df["start_time"].to_numpy(), df["end_time"].to_numpy()
    tol = 1e-6
    assert np.all(starts >= -tol) and np.all(np.diff(starts) > 0)
    step = clip - overlap
    if len(df) and final_clip != "full":
        assert np.allclose(starts, np.arange(len(df)) * step, atol=1e-6)
    if final_clip in (None, "full", "remainder"):
        assert np.all(ends <= full + tol)
    if final_clip in (None, "extend"):
        assert np.allclose(ends - starts, clip)
    if final_clip == "full" and len(df):
        assert np.allclose(ends - starts, min(clip, full))
    if overlap >= 0 and full > tol:
        # no gaps: every instant of the file that final_clip keeps is inside some clip
        covered_to = ends.max() if len(df) else 0.0
        if final_clip in ("extend", "remainder", "full"):
            assert covered_to >= full - tol
        elif len(df):
            assert full - covered_to < step + tol  # what is dropped is less than one step
        else:
            assert full < clip + tol


class TestMakeClipDf:
    def test_files_and_labels(self, tmp_path):
        a = tmp_path / "a.wav"
        b = tmp_path / "b.wav"
        tone(440, 10.0, 8000).save(a)
        tone(440, 4.0, 8000).save(b)
        labels = pd.DataFrame({"frog": [1, 0]}, index=[str(a), str(b)])
        df = utils.make_clip_df(labels, clip_duration=5)
        assert list(df.index.names) == ["file", "start_time", "end_time"]
        assert list(df.index) == [(str(a), 0.0, 5.0), (str(a), 5.0, 10.0)]
        assert list(df["frog"]) == [1, 1]

    def test_invalid_file_gets_nan_row(self, tmp_path):
        missing = str(tmp_path / "missing.wav")
        df, invalid = utils.make_clip_df([missing], 5, return_invalid_samples=True)
        assert invalid == {missing}
        assert len(df) == 1 and np.isnan(df.index[0][1])

    def test_raise_exceptions(self, tmp_path):
        with pytest.raises(GetDurationError):
            utils.make_clip_df([str(tmp_path / "missing.wav")], 5, raise_exceptions=True)

    def test_string_is_rejected(self):
        with pytest.raises(OpsoTypeError, match="list"):
            utils.make_clip_df("a.wav", 5)


def test_overlap_and_fraction():
    assert utils.overlap([0, 5], [3, 10]) == 2
    assert utils.overlap([0, 5], [6, 10]) == 0
    assert utils.overlap_fraction([0, 4], [3, 10]) == 0.25
    with pytest.raises(OpsoValueError):
        utils.overlap([5, 0], [0, 1])


def test_inrange_binarize_sigmoid():
    assert utils.inrange(5, [0, 5]) and not utils.inrange(6, [0, 5])
    assert utils.binarize([0.1, 0.6], 0.5) == [0, 1]
    assert utils.binarize([[0.1, 0.6], [0.9, 0.2]], 0.5) == [[0, 1], [1, 0]]
    with pytest.raises(OpsoValueError):
        utils.binarize(np.zeros((2, 2, 2)), 0.5)
    assert utils.sigmoid(0) == 0.5
    assert utils.isNan(float("nan")) and not utils.isNan(1.0)


def test_scaling():
    np.testing.assert_allclose(utils.linear_scale(np.array([0, 0.5, 1])), [0, 127.5, 255])
    np.testing.assert_allclose(utils.min_max_scale(np.array([2.0, 4.0, 6.0])), [0, 0.5, 1])
    np.testing.assert_allclose(utils.min_max_scale(np.array([3.0, 3.0])), [0, 0])
    x, v = utils.rescale_features([[1, 10], [2, 5]])
    assert x == [[0.5, 1.0], [1.0, 0.5]]
    np.testing.assert_allclose(v, [0.5, 0.1])


def test_jitter():
    np.random.seed(0)
    x = utils.jitter(np.zeros(1000), 0.1, distribution="uniform")
    assert np.all(np.abs(x) <= 0.1) and x.std() > 0.01
    with pytest.raises(OpsoValueError):
        utils.jitter(1, 1, distribution="cauchy")


def test_hex_to_time():
    t = utils.hex_to_time("5F16A04E")
    assert t == datetime.datetime(2020, 7, 21, 7, 59, 10, tzinfo=datetime.UTC)
    with pytest.raises(ParseError):
        utils.hex_to_time("not hex")


def test_load_metadata(tmp_path):
    path = tmp_path / "x.wav"
    tone(440, 1.0, 8000).save(path)
    md = utils.load_metadata(path)
    assert md["samplerate"] == 8000 and md["frames"] == 8000 and md["channels"] == 1
    assert md["duration"] == 1.0
    assert utils.load_metadata(tmp_path / "nope.wav") is None
    with pytest.raises(OSError):
        utils.load_metadata(tmp_path / "nope.wav", raise_exceptions=True)
