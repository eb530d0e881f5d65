"""Stratified review samples and calibrated thresholds: the statistics against known answers, and on
the demo run with reviews simulated from its true labels (labels.csv)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import ConfigError
from pipelines.review.calibration import calibrate_class, fit_logistic, threshold_for_precision
from pipelines.review.sampling import stratified_sample, uses_log_scores


def test_weighted_logistic_fit_recovers_known_parameters():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, 20000)
    y = rng.random(len(x)) < 1 / (1 + np.exp(-(-1.0 + 2.0 * x)))
    a, b = fit_logistic(x, y)
    assert a == pytest.approx(-1.0, abs=0.08) and b == pytest.approx(2.0, abs=0.1)
    # weights as frequencies: doubling every case with x > 0 equals repeating those rows
    w = np.where(x > 0, 2.0, 1.0)
    repeated = fit_logistic(np.concatenate([x, x[x > 0]]), np.concatenate([y, y[x > 0]]))
    assert fit_logistic(x, y, w) == pytest.approx(repeated, rel=1e-6)


def test_threshold_for_a_target_precision():
    x = np.linspace(-5, 5, 1001)
    t, precision, n_above = threshold_for_precision(x, 0.0, 1.0, 0.9)
    above = x[x >= t]
    assert precision == pytest.approx(np.mean(1 / (1 + np.exp(-above)))) and precision >= 0.9
    lower = x[x >= t - 0.01]
    assert np.mean(1 / (1 + np.exp(-lower))) < 0.9  # the lowest such threshold
    assert n_above == len(above)
    assert np.isnan(threshold_for_precision(x, -10.0, 0.1, 0.9)[0])  # unreachable


def test_stratified_sample_covers_the_score_range_and_weights_add_up():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"clip": np.arange(10000), "score": rng.exponential(0.001, 10000)})
    sample = stratified_sample(table, n_bins=8, per_bin=5, log=True, seed=3)
    assert (sample.groupby("stratum").size() <= 5).all() and sample.stratum.nunique() == 8
    assert (sample.stratum_size / sample.stratum_sampled).groupby(sample.stratum).sum().sum() == pytest.approx(10000)
    assert (sample.stratum == 7).any()  # the few highest scores are reviewed too
    assert sample.equals(stratified_sample(table, n_bins=8, per_bin=5, log=True, seed=3))
    assert not sample.stratum.is_monotonic_increasing  # shown in random order
    assert uses_log_scores("ribbit:frog") and not uses_log_scores("birdnet:birds")
    with pytest.raises(ConfigError, match="per_bin >= 1"):
        stratified_sample(table, per_bin=0)


@pytest.fixture(scope="module")
def labelled_scores(tmp_path_factory, dask_client):
    from pipelines.demo import prepare_demo
    from pipelines.driver.run import run_pipeline

    folder = tmp_path_factory.mktemp("demo")
    config = prepare_demo(folder)
    run_pipeline(config, dask_client, progress=False)
    scores = pd.read_parquet(f"{config.output.url}/scores/detector=ribbit:frog12")
    labels = pd.read_csv(folder / "labels.csv")[["file", "start_time", "frog12"]].rename(columns={"frog12": "truth"})
    return scores.merge(labels, on=["file", "start_time"], validate="one_to_one")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simulated_reviews_recover_a_threshold_of_the_stated_precision(labelled_scores, seed):
    table = labelled_scores
    assert table.truth.sum() > 20
    reviews = stratified_sample(table, "frog12", n_bins=10, per_bin=5, log=True, seed=seed)
    result = calibrate_class("ribbit:frog12", "frog12", table.frog12, reviews.frog12, reviews.truth,
                             reviews.stratum_size / reviews.stratum_sampled, reviews.stratum,
                             target_precision=0.9, log_scores=True, seed=seed)
    assert result.status == "ok", result.message
    assert result.threshold_low <= result.threshold <= result.threshold_high
    kept = table[table.frog12 >= result.threshold]
    measured_precision = kept.truth.mean()
    measured_recall = kept.truth.sum() / table.truth.sum()
    assert result.precision_low <= measured_precision <= result.precision_high
    # the model gives every clip some chance, so its recall stays just below a true 1.0
    assert result.recall_low - 0.01 <= measured_recall <= result.recall_high + 0.01
    assert measured_precision >= 0.85 and result.n_above == len(kept)


def test_too_few_reviews_or_an_unreachable_target_say_so(labelled_scores):
    table = labelled_scores
    few = table.head(10)
    result = calibrate_class("ribbit:frog12", "frog12", table.frog12, few.frog12, few.truth, np.ones(10),
                             np.zeros(10), target_precision=0.9, log_scores=True)
    assert result.status == "too_few_reviews" and "review more clips" in result.message
    assert np.isnan(result.threshold)
    rank = table.frog12.rank(pct=True).to_numpy()
    weak = table.assign(truth=np.random.default_rng(0).random(len(table)) < 0.1 + 0.4 * rank)  # at best 0.5 present
    reviews = stratified_sample(weak, "frog12", n_bins=10, per_bin=8, log=True)
    result = calibrate_class("ribbit:frog12", "frog12", weak.frog12, reviews.frog12, reviews.truth,
                             reviews.stratum_size / reviews.stratum_sampled, reviews.stratum,
                             target_precision=0.95, log_scores=True)
    assert result.status == "unreachable" and "lower the target" in result.message
    with pytest.raises(ConfigError, match="between 0 and 1"):
        calibrate_class("d", "c", [1.0], [1.0], [1], [1.0], [0], target_precision=1.0)


def test_zero_scores_are_a_stratum_and_thresholds_round_trip_exactly():
    rng = np.random.default_rng(4)
    scores = np.concatenate([np.zeros(500), rng.exponential(1e-3, 500)])
    table = pd.DataFrame({"score": scores})
    sample = stratified_sample(table, n_bins=5, per_bin=4, log=True, seed=0)
    assert set(sample.stratum) == {0, 1, 2, 3, 4, 5} and (sample[sample.stratum == 5].score == 0).all()
    assert sample[sample.stratum == 5].stratum_size.iloc[0] == 500
    truth = (rng.random(len(scores)) < 1 / (1 + np.exp(-(np.log10(np.maximum(scores, 1e-6)) + 3) * 4))).astype(float)
    reviews = stratified_sample(table.assign(truth=truth), n_bins=8, per_bin=8, log=True, seed=1)
    result = calibrate_class("ribbit:x", "x", scores, reviews.score, reviews.truth,
                             reviews.stratum_size / reviews.stratum_sampled, reviews.stratum,
                             target_precision=0.8, log_scores=True, n_boot=50)
    assert result.status == "ok", result.message
    assert result.n_above == (scores >= result.threshold).sum()  # the threshold is a score: >= keeps those clips
    assert result.threshold in set(scores)


def test_no_relationship_and_a_lowest_threshold():
    rng = np.random.default_rng(5)
    scores = rng.uniform(0, 1, 400)
    present = (rng.random(400) < 1 - scores).astype(float)  # higher scores, fewer present
    table = pd.DataFrame({"score": scores, "truth": present})
    reviews = stratified_sample(table, n_bins=5, per_bin=8, seed=2)
    args = (scores, reviews.score, reviews.truth, reviews.stratum_size / reviews.stratum_sampled, reviews.stratum)
    result = calibrate_class("cnn:m", "bird", *args, target_precision=0.6)
    assert result.status == "no_relationship" and "does not mean a likelier bird" in result.message
    rising = table.assign(truth=(rng.random(400) < scores).astype(float))
    reviews = stratified_sample(rising, n_bins=5, per_bin=8, seed=2)
    args = (scores, reviews.score, reviews.truth, reviews.stratum_size / reviews.stratum_sampled, reviews.stratum)
    free = calibrate_class("cnn:m", "bird", *args, target_precision=0.55, n_boot=50)
    floored = calibrate_class("cnn:m", "bird", *args, target_precision=0.55, n_boot=50, lowest_threshold=0.6)
    assert free.status == floored.status == "ok" and free.threshold < 0.6 <= floored.threshold
