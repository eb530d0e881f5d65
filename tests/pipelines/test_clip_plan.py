import pickle

import numpy as np
import pandas as pd
import pytest

from pipelines.driver.clip_plan import (
    PLAN_COLUMNS,
    ClipIndex,
    ClipRange,
    TaskRanges,
    chunk_ranges,
    plan_clips,
)


def inventory():
    return pd.DataFrame({
        "file": ["a.wav", "b.wav", "c.wav", "d.wav"],
        "recorder": ["r1", "r1", "r2", "r2"],
        "start_time_utc": pd.to_datetime(["2024-01-01 00:00", None, "2024-01-01 00:00", None], utc=True),
        "duration_s": [5.0, 4.0, 3.0, np.nan],
        "status": ["ok", "truncated", "ok", "failed"],
    })


def test_plan():
    plan = plan_clips(inventory(), clip_duration=2.0)
    assert list(plan.columns) == PLAN_COLUMNS
    assert list(plan["clip"]) == list(range(5))
    assert list(plan.file) == ["a.wav", "a.wav", "b.wav", "b.wav", "c.wav"]
    assert list(plan.start_time) == [0.0, 2.0, 0.0, 2.0, 0.0]
    assert plan.start_time_utc[1] == pd.Timestamp("2024-01-01 00:00:02", tz="UTC")
    assert pd.isna(plan.start_time_utc[2])


def test_plan_final_clip_and_overlap():
    plan = plan_clips(inventory(), clip_duration=2.0, clip_overlap=1.0, final_clip="full")
    a = plan[plan.file == "a.wav"]
    assert list(zip(a.start_time, a.end_time, strict=True)) == [(0, 2), (1, 3), (2, 4), (3, 5)]


def test_empty_plan():
    plan = plan_clips(inventory().iloc[3:], clip_duration=2.0)
    assert len(plan) == 0 and list(plan.columns) == PLAN_COLUMNS


def test_chunk_ranges():
    assert chunk_ranges(10, 4) == [ClipRange(0, 4), ClipRange(4, 8), ClipRange(8, 10)]
    assert ClipRange(64, 128).name == "000000064-000000128" and len(ClipRange(64, 128)) == 64
    assert chunk_ranges(0, 4) == []


def _by_hand(inv, clip_duration, **kw):
    """The clip table built file by file with generate_clip_times_df (what the driver once did)."""
    from opso_core.utils import generate_clip_times_df

    rows = []
    for r in inv[inv.status != "failed"].itertuples():
        times = generate_clip_times_df(r.duration_s, clip_duration, **kw)
        for t in times.itertuples():
            utc = r.start_time_utc + pd.to_timedelta(t.start_time, unit="s") if pd.notna(r.start_time_utc) else pd.NaT
            rows.append((r.file, r.recorder, t.start_time, t.end_time, utc))
    return rows


@pytest.mark.parametrize("kw", [{}, {"clip_overlap": 1.0, "final_clip": "full"}, {"final_clip": "extend"}])
def test_every_span_holds_exactly_its_rows_of_the_clip_table(kw):
    rng = np.random.default_rng(0)
    n = 60
    inv = pd.DataFrame({
        "file": [f"s3://b/r{i % 4}/f{i}.wav" for i in range(n)], "recorder": [f"r{i % 4}" for i in range(n)],
        "start_time_utc": [pd.NaT if i % 7 == 0 else pd.Timestamp("2024-05-01", tz="UTC") + pd.Timedelta(hours=i)
                           for i in range(n)],
        "duration_s": rng.choice([0.5, 3.0, 10.0, 59.9], n), "status": rng.choice(["ok", "truncated", "no_clips",
                                                                                    "failed"], n)})
    expected = _by_hand(inv, 2.0, **kw)
    index = ClipIndex.from_inventory(inv, clip_duration=2.0, **kw)
    assert index.n_clips == len(expected)
    for size in (1, 7, 64):
        got = pd.concat([index.span(r).clips() for r in TaskRanges(index.n_clips, size)])
        assert list(got["clip"]) == list(range(len(expected))) == list(got.index)
        assert list(zip(got.file, got.recorder, got.start_time, got.end_time, strict=True)) == [e[:4] for e in expected]
        assert [pd.isna(a) and pd.isna(b) or a == b for a, b in zip(got.start_time_utc, [e[4] for e in expected],
                                                                      strict=True)] == [True] * len(expected)
    pd.testing.assert_frame_equal(plan_clips(inv, clip_duration=2.0, **kw), index.clips().reset_index(drop=True))


def test_a_task_description_does_not_grow_with_its_clips():
    """A span names each file once: a day-long file's 43,200 clips cost what 100 clips of it cost."""
    inv = pd.DataFrame({"file": ["s3://b/r/day.flac", "s3://b/r/next.flac"], "recorder": ["r", "r"],
                        "start_time_utc": pd.to_datetime(["2024-05-01", "2024-05-02"], utc=True),
                        "duration_s": [86400.0, 86400.0], "status": ["ok", "ok"]})
    index = ClipIndex.from_inventory(inv, clip_duration=2.0)
    small = len(pickle.dumps(index.span(ClipRange(100, 200))))
    whole_day = len(pickle.dumps(index.span(ClipRange(0, 43200))))
    across = index.span(ClipRange(43100, 43300))
    assert abs(whole_day - small) <= 8 and whole_day < 1000  # a few bytes more for larger numbers
    assert [(e[0], e[4], e[5]) for e in across.entries] == [("s3://b/r/day.flac", 43100, 100),
                                                            ("s3://b/r/next.flac", 0, 100)]
    assert across.clips().start_time_utc.iloc[100] == pd.Timestamp("2024-05-02", tz="UTC")


def test_task_ranges_are_made_on_demand():
    ranges = TaskRanges(10**12, 192)  # a trillion clips: two integers
    assert len(ranges) == -(-10**12 // 192)
    assert ranges[0] == ClipRange(0, 192) and ranges[-1] == ClipRange(10**12 - 10**12 % 192, 10**12)
    assert ranges.position(ranges[5].name) == 5 and ranges.position("000000001-000000193") is None
    assert list(TaskRanges(10, 4)) == chunk_ranges(10, 4) == [ClipRange(0, 4), ClipRange(4, 8), ClipRange(8, 10)]
    assert len(TaskRanges(0, 4)) == 0 and list(TaskRanges(0, 4)) == []
