import numpy as np
import pandas as pd

from pipelines.driver.clip_plan import PLAN_COLUMNS, ClipRange, chunk_ranges, plan_clips


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
