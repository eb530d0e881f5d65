"""``opso calibrate`` on a demo run with reviews simulated from its true labels: calibration.parquet,
the printed thresholds, classes with too few reviews, a run without reviews."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.errors import ConfigError
from pipelines.review.calibrate_run import calibrate_run, class_scores
from pipelines.review.reviews import write_review
from pipelines.review.sampling import stratified_sample


@pytest.fixture(scope="module")
def reviewed_run(tmp_path_factory, dask_client):
    from pipelines.demo import prepare_demo
    from pipelines.driver.run import run_pipeline

    folder = tmp_path_factory.mktemp("demo")
    config = prepare_demo(folder)
    run_pipeline(config, dask_client, progress=False)
    run = config.output.url
    labels = pd.read_csv(folder / "labels.csv")
    tables = {}
    for name, column, per_bin in (("frog12", "frog12", 5), ("fast_pulser", "fast_pulser", 1)):
        detector = f"ribbit:{name}"
        own = pd.read_parquet(f"{run}/scores/detector={detector}").merge(
            labels[["file", "start_time", column]].rename(columns={column: "truth"}), on=["file", "start_time"])
        tables[name] = own
        sample = stratified_sample(own, name, n_bins=10, per_bin=per_bin, log=True, seed=1)
        for row in sample.itertuples():
            write_review(run, {"clip": int(row.Index), "file": row.file, "start_time": row.start_time,
                               "end_time": row.end_time, "detector": detector, "class": name,
                               "score": float(getattr(row, name)), "label": "present" if row.truth else "absent",
                               "reviewer": "sim", "stratum": int(row.stratum), "stratum_size": int(row.stratum_size),
                               "stratum_sampled": int(row.stratum_sampled)})
    return run, tables["frog12"]


def test_calibrate_writes_thresholds_of_the_stated_precision(reviewed_run, capsys):
    run, table = reviewed_run
    assert main(["calibrate", run, "--target-precision", "0.9"]) == 0
    out = capsys.readouterr().out
    calibration = pd.read_parquet(f"{run}/calibration.parquet").set_index("class_name")
    frog = calibration.loc["frog12"]
    assert frog.status == "ok" and frog.n_reviews >= 40
    measured = table[table.frog12 >= frog.threshold].truth.mean()  # on every labelled clip of the run
    assert frog.precision_low <= measured <= frog.precision_high
    assert f"ribbit:frog12 / frog12: {int(frog.n_reviews)} reviews" in out and "threshold" in out
    # nothing pulses like fast_pulser: all its reviews are absent, so no threshold, and the reason is given
    pulser = calibration.loc["fast_pulser"]
    assert pulser.status == "too_few_reviews" and np.isnan(pulser.threshold) and "review more clips" in out


def test_a_run_without_reviews_says_what_to_do(tmp_path, reviewed_run, capsys):
    import shutil

    from pipelines.errors import StorageError

    run, _ = reviewed_run
    shutil.copytree(run, tmp_path / "copy", ignore=shutil.ignore_patterns("reviews"))
    with pytest.raises(ConfigError, match="no present/absent reviews yet"):
        calibrate_run(str(tmp_path / "copy"), 0.9)
    with pytest.raises(StorageError, match="no opso run at"):  # not a run at all: said so, not "no reviews"
        calibrate_run(str(tmp_path), 0.9)
    assert main(["calibrate", run, "--target-precision", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("opso: error: calibrate: the target precision must be between 0 and 1")


def test_class_scores_of_birdnets_long_table_count_every_window():
    long = pd.DataFrame({"file": ["a", "a", "a", "b"], "start_time": [0.0, 0.0, 3.0, 0.0],
                         "class": ["Turdus migratorius", "Corvus corax", "Corvus corax", "Corvus corax"],
                         "score": [0.9, 0.2, 0.5, 0.7]})
    robin = class_scores(long, "birdnet:birds", "Turdus migratorius")
    assert sorted(robin.tolist()) == [0.0, 0.0, 0.9]  # 3 windows; 2 scored below the floor
    with pytest.raises(ConfigError, match="has no class 'owl'"):
        class_scores(pd.DataFrame({"file": ["a"], "start_time": [0.0], "frog": [0.1]}), "ribbit:frog", "owl")


def test_only_reviews_of_the_current_clips_and_scores_count():
    """An answer counts for calibration only if its clip (file, start and end) is in the score table now
    with the score the reviewer saw: answers about other clip settings, or other scores, describe
    another sample."""
    from pipelines.review.calibrate_run import reviews_of_current_scores

    ids = {"file": ["a.wav"] * 3, "recorder": ["r"] * 3, "start_time": [0.0, 2.0, 4.0], "end_time": [2.0, 4.0, 6.0],
           "start_time_utc": pd.to_datetime(["2024-05-01T06:00:00Z"] * 3)}
    table = pd.DataFrame({**ids, "frog": np.array([0.1, 0.25, 0.7], dtype=np.float32)})
    reviews = pd.DataFrame({"file": ["a.wav"] * 6, "start_time": [0.0, 2.0, 4.0, 0.0, 6.0, 4.0],
                            "end_time": [2.0, 4.0, 6.0, 3.0, 8.0, 6.0],
                            "score": [0.1, float(np.float32(0.25)), 0.5, 0.1, 0.1, 0.70001]})
    # exact, float32, another score, another clip length, a clip the run lacks, a recompute's rounding
    assert reviews_of_current_scores(reviews, table, "frog").tolist() == [True, True, False, False, False, True]
    assert not reviews_of_current_scores(reviews, table, "toad").any()  # a class the detector no longer has
    # BirdNET's long form: one row per window and class above the floor; a window without the class's row
    # scored below the floor, and its review (score 0, as the page showed it) counts
    long = pd.DataFrame({**{k: v[:2] for k, v in ids.items()}, "class": ["frog", "toad"], "score": [0.9, 0.2]})
    long.loc[1, ["start_time", "end_time"]] = [2.0, 4.0]
    birds = pd.DataFrame({"file": ["a.wav"] * 3, "start_time": [2.0, 0.0, 0.0], "end_time": [4.0, 2.0, 2.0],
                          "score": [0.2, 0.9, 0.0]})
    assert reviews_of_current_scores(birds, long, "toad").tolist() == [True, False, True]
    assert reviews_of_current_scores(birds, long, "frog").tolist() == [False, True, False]
