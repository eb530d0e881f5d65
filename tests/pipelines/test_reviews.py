"""Reviews in the run folder: one atomic part per answer, concurrent reviewers never collide, the latest
answer counts, bad answers are refused before anything is written."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from pipelines.errors import ConfigError
from pipelines.review.reviews import read_reviews, write_review


def _answer(clip, label, reviewer="ana", **extra):
    return {"clip": clip, "file": f"/a/rec00/{clip}.WAV", "start_time": 2.0 * clip, "end_time": 2.0 * clip + 2,
            "detector": "ribbit:frog12", "class": "frog12", "score": 0.01 * clip, "label": label,
            "reviewer": reviewer, "stratum": clip % 3, "stratum_size": 100, "stratum_sampled": 5, **extra}


def test_answers_are_parts_and_the_latest_counts(tmp_path):
    run = str(tmp_path)
    assert len(read_reviews(run)) == 0 and list(read_reviews(run).columns)[:2] == ["clip", "file"]
    write_review(run, _answer(1, "present"))
    write_review(run, _answer(2, "absent"))
    write_review(run, _answer(1, "absent"))  # ana changes her mind
    write_review(run, _answer(1, "present", reviewer="ben"))
    assert len(list((tmp_path / "reviews").iterdir())) == 4
    latest = read_reviews(run).sort_values(["reviewer", "clip"], ignore_index=True)
    assert latest[["reviewer", "clip", "label"]].values.tolist() == [["ana", 1, "absent"], ["ana", 2, "absent"],
                                                                     ["ben", 1, "present"]]
    assert len(read_reviews(run, latest=False)) == 4
    assert str(latest.time_utc.dt.tz) == "UTC"


def test_concurrent_reviewers_never_overwrite_each_other(tmp_path):
    run = str(tmp_path)

    def review(name):
        for clip in range(25):
            write_review(run, _answer(clip, "present" if clip % 2 else "absent", reviewer=name))

    threads = [threading.Thread(target=review, args=(name,)) for name in ("ana", "ben", "cy", "dee")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reviews = read_reviews(run)
    assert len(reviews) == 100 and reviews.groupby("reviewer").size().tolist() == [25, 25, 25, 25]


def test_bad_answers_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ConfigError, match="label is one of"):
        write_review(str(tmp_path), _answer(1, "maybe"))
    with pytest.raises(ConfigError, match="reviewer's name"):
        write_review(str(tmp_path), _answer(1, "present", reviewer="../../etc"))
    bad = _answer(1, "present")
    del bad["score"]
    with pytest.raises(ConfigError, match=r"needs \['score'\]"):
        write_review(str(tmp_path), bad)
    assert not (tmp_path / "reviews").exists()


@pytest.mark.s3
def test_reviews_in_a_bucket(s3_storage_options):
    import s3fs

    s3fs.S3FileSystem(**s3_storage_options).mkdir("opso-reviews")
    run = "s3://opso-reviews/run"
    write_review(run, _answer(3, "unsure"), s3_storage_options)
    write_review(run, _answer(3, "present"), s3_storage_options)
    assert read_reviews(run, s3_storage_options).label.tolist() == ["present"]


def test_a_run_overwriting_its_folder_keeps_the_reviews(tmp_path):
    from pipelines.outputs.location import OutputLocation
    from pipelines.outputs.run_folder import clear_run_outputs, is_run_output
    from pipelines.stages import output_names

    rel = write_review(str(tmp_path), _answer(1, "present"))
    assert not is_run_output(rel, output_names()) and not is_run_output("reviews", output_names())
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "calibration.parquet").write_bytes(b"thresholds")
    clear_run_outputs(OutputLocation(str(tmp_path)), output_names())
    assert len(read_reviews(str(tmp_path))) == 1 and not (tmp_path / "run.json").exists()
    assert (tmp_path / "calibration.parquet").read_bytes() == b"thresholds"


def test_numbers_and_times_are_checked(tmp_path):
    import datetime as dt

    with pytest.raises(ConfigError, match="finite numbers"):
        write_review(str(tmp_path), _answer(1, "present", score=float("nan")))
    with pytest.raises(ConfigError, match="finite numbers"):
        write_review(str(tmp_path), _answer(1, "present", stratum=None))
    with pytest.raises(ConfigError, match="stratum_sampled is between 1 and its stratum_size"):
        write_review(str(tmp_path), _answer(1, "present", stratum_sampled=200))
    with pytest.raises(ConfigError, match="time-zone-aware"):
        write_review(str(tmp_path), _answer(1, "present", time_utc=dt.datetime(2024, 5, 1, 12)))
    assert not (tmp_path / "reviews").exists()
    local = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=10)))
    write_review(str(tmp_path), _answer(1, "present", time_utc=local))
    assert read_reviews(str(tmp_path)).time_utc.iloc[0] == pd.Timestamp("2024-05-01 02:00", tz="UTC")
