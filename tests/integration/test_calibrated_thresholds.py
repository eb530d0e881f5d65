"""Calibrated thresholds applied to a run: ``calibrated_thresholds: true`` entries re-derive their
detections from the stored scores (no audio read) when ``opso calibrate CONFIG --apply`` runs the run
again; classes without an ok calibration keep the configured threshold; per-class thresholds of CNN
and BirdNET entries."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.outputs.location import OutputLocation
from pipelines.review.reviews import write_review
from pipelines.review.sampling import stratified_sample
from pipelines.review.thresholds import calibrated_config


def simulate_reviews(run: str, labels: pd.DataFrame) -> None:
    """Reviews of a stratified sample from the true labels (frog12: 5 a bin; fast_pulser: 1 a bin, too few)."""
    for name, per_bin in (("frog12", 5), ("fast_pulser", 1)):
        detector = f"ribbit:{name}"
        own = pd.read_parquet(f"{run}/scores/detector={detector}").merge(
            labels[["file", "start_time", name]].rename(columns={name: "truth"}), on=["file", "start_time"])
        for row in stratified_sample(own, name, n_bins=10, per_bin=per_bin, log=True, seed=1).itertuples():
            write_review(run, {"clip": int(row.Index), "file": row.file, "start_time": row.start_time,
                               "end_time": row.end_time, "detector": detector, "class": name,
                               "score": float(getattr(row, name)), "label": "present" if row.truth else "absent",
                               "reviewer": "sim", "stratum": int(row.stratum), "stratum_size": int(row.stratum_size),
                               "stratum_sampled": int(row.stratum_sampled)})


@pytest.fixture
def demo_config(tmp_path):
    from pipelines.demo import prepare_demo

    prepare_demo(tmp_path)
    path = tmp_path / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for species in config["ribbit"]:
        species["calibrated_thresholds"] = True
    config["cluster"] = {"kind": "local", "n_workers": 1, "threads_per_worker": 2, "processes": False}
    path.write_text(yaml.safe_dump(config))
    return path


def test_calibrate_apply_rederives_detections_from_the_stored_scores(demo_config, tmp_path, capsys, caplog,
                                                                     monkeypatch):
    run = str(tmp_path / "results")
    assert main(["run", str(demo_config), "--no-progress"]) == 0
    assert "no calibration in" in caplog.text  # asked for, none yet: the configured thresholds apply
    configured = json.loads((tmp_path / "results" / "run.json").read_text())["config"]["ribbit"][0]["threshold"]
    simulate_reviews(run, pd.read_csv(tmp_path / "labels.csv"))
    scores = {p: p.read_bytes() for p in (tmp_path / "results" / "scores").rglob("*.parquet")}
    store = {p: p.read_bytes() for p in (tmp_path / "results" / "spectrograms.zarr").rglob("*") if p.is_file()}
    markers = {p: json.loads(p.read_text()) for p in (tmp_path / "results" / "_progress" / "spectrograms").glob("*.json")}
    capsys.readouterr()

    def no_audio(*args, **kwargs):
        raise AssertionError("audio read while re-deriving detections")

    monkeypatch.setattr("pipelines.outputs.spectrogram_store.load_clips", no_audio)  # the workers are threads here
    assert main(["calibrate", str(demo_config), "--target-precision", "0.9", "--apply", "--no-progress"]) == 0
    out = capsys.readouterr().out
    calibration = pd.read_parquet(f"{run}/calibration.parquet").set_index("class_name")
    frog = calibration.loc["frog12"]
    assert frog.status == "ok" and calibration.loc["fast_pulser"].status == "too_few_reviews"
    assert "re-deriving the detections" in out and "complete" in out

    # nothing was computed from audio again (no task read any: it would have failed), scores and store kept
    assert {p: p.read_bytes() for p in (tmp_path / "results" / "scores").rglob("*.parquet")} == scores
    assert {p: p.read_bytes() for p in (tmp_path / "results" / "spectrograms.zarr").rglob("*") if p.is_file()} == store
    assert all(json.loads(marker.read_text())["products"] != before["products"] for marker, before in markers.items())
    monkeypatch.undo()
    detections = pd.read_parquet(f"{run}/detections")
    for name, threshold in (("frog12", frog.threshold), ("fast_pulser", configured)):
        own = pd.read_parquet(f"{run}/scores/detector=ribbit:{name}")
        expected = own.loc[own[name] >= threshold, ["file", "start_time"]].sort_values(["file", "start_time"])
        got = detections[detections["class"] == name].sort_values(["file", "start_time"])
        assert got[["file", "start_time"]].reset_index(drop=True).equals(expected.reset_index(drop=True)), name
    assert (detections["class"] == "frog12").sum() > 0
    status = json.loads((tmp_path / "results" / "run.json").read_text())
    thresholds = {s["name"]: s["threshold"] for s in status["config"]["ribbit"]}
    assert thresholds == {"frog12": frog.threshold, "fast_pulser": configured}  # the run records what it used
    assert status["summary"]["detections"]["ribbit:frog12"] == (detections["class"] == "frog12").sum()

    # the same calibration again: the run resumes with nothing to do, and --dry-run says so beforehand
    capsys.readouterr()
    assert main(["run", str(demo_config), "--dry-run"]) == 0
    assert "the run is complete: nothing to compute" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "results" / "detections").iterdir()}
    assert main(["run", str(demo_config), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "results" / "detections").iterdir()} == before


def test_a_calibration_of_other_clips_is_not_applied_and_their_reviews_do_not_count(demo_config, tmp_path, capsys,
                                                                                     caplog):
    """Reviews and a calibration made on 2 s clips, then the clips made 3 s long: the run does not apply
    the old thresholds to the new scores (they were fitted on others), and ``opso calibrate`` does not
    fit the old answers to the new scores."""
    run = str(tmp_path / "results")
    assert main(["run", str(demo_config), "--no-progress"]) == 0
    simulate_reviews(run, pd.read_csv(tmp_path / "labels.csv"))
    assert main(["calibrate", str(demo_config), "--target-precision", "0.9"]) == 0
    config = yaml.safe_load(demo_config.read_text())
    configured = config["ribbit"][0]["threshold"]
    # another archive, same settings (--overwrite keeps reviews/ and calibration.parquet): not applied
    config["input"]["pattern"] = "rec0[01]/*.WAV"
    subset = tmp_path / "subset.yaml"
    subset.write_text(yaml.safe_dump(config))
    caplog.clear()
    assert main(["run", str(subset), "--no-progress", "--overwrite"]) == 0
    assert "fitted on scores other than those this configuration computes" in caplog.text
    assert "ribbit:frog12" in caplog.text and "no calibration in" not in caplog.text
    assert json.loads((tmp_path / "results" / "run.json").read_text())["config"]["ribbit"][0]["threshold"] == configured
    # other clips: not applied either
    config["clips"] = {**config.get("clips", {}), "duration": 3.0}
    longer = tmp_path / "longer.yaml"
    longer.write_text(yaml.safe_dump(config))
    caplog.clear()
    assert main(["run", str(longer), "--no-progress"]) == 0
    assert "fitted on scores other than those this configuration computes" in caplog.text
    status = json.loads((tmp_path / "results" / "run.json").read_text())
    assert status["config"]["ribbit"][0]["threshold"] == configured
    capsys.readouterr()
    assert main(["calibrate", str(longer), "--target-precision", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "is about a clip and score the run has now" in err and f"opso review {run}" in err


def test_apply_needs_the_configuration_and_an_entry_that_asks(demo_config, tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "results"), "--target-precision", "0.9", "--apply"]) == 2
    assert "give the run's configuration file" in capsys.readouterr().err
    config = yaml.safe_load(demo_config.read_text())
    for species in config["ribbit"]:
        species["calibrated_thresholds"] = False
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(config))
    assert main(["calibrate", str(plain), "--target-precision", "0.9", "--apply"]) == 2
    assert "no detector of" in capsys.readouterr().err and not (tmp_path / "results").exists()  # nothing ran


def _calibration(location: OutputLocation, rows: list[dict]) -> None:
    base = {"target_precision": 0.9, "message": "", "n_reviews": 40, "n_present": 10, "log_scores": False}
    location.write_parquet("calibration.parquet", pd.DataFrame([{**base, **r} for r in rows]))


def test_calibrated_config_applies_ok_rows_to_the_entries_that_ask(tmp_path):
    location = OutputLocation(str(tmp_path / "out"))
    raw = {"input": {"url": str(tmp_path)}, "output": {"url": str(tmp_path / "out")},
           "ribbit": [{"name": "frog", "signal_band": [1, 2], "pulse_rate_range": [1, 2], "threshold": 0.02,
                       "calibrated_thresholds": True},
                      {"name": "toad", "signal_band": [1, 2], "pulse_rate_range": [1, 2], "threshold": 0.03}],
           "birdnet": [{"name": "birds", "threshold": 0.5, "class_thresholds": {"Corvus corax": 0.7},
                        "calibrated_thresholds": True}]}
    config = load_config(raw, environ={})
    assert calibrated_config(config, location) is config  # no calibration yet
    _calibration(location, [
        {"detector": "ribbit:frog", "class_name": "frog", "status": "ok", "threshold": 0.0007},
        {"detector": "ribbit:toad", "class_name": "toad", "status": "ok", "threshold": 0.0009},  # toad does not ask
        {"detector": "birdnet:birds", "class_name": "Turdus migratorius", "status": "ok", "threshold": 0.31},
        {"detector": "birdnet:birds", "class_name": "Cardinalis cardinalis", "status": "too_few_reviews",
         "threshold": np.nan}])
    resolved = calibrated_config(config, location)
    assert [s.threshold for s in resolved.ribbit] == [0.0007, 0.03]
    assert resolved.birdnet[0].class_thresholds == {"Corvus corax": 0.7, "Turdus migratorius": 0.31}
    assert resolved.fingerprint() != config.fingerprint()
    _calibration(location, [{"detector": "birdnet:birds", "class_name": "Turdus migratorius", "status": "ok",
                             "threshold": 0.001}])
    with pytest.raises(ConfigError, match="below score_floor"):
        calibrated_config(config, location)


def test_birdnet_class_thresholds_override_the_entry_threshold():
    pytest.importorskip("ai_edge_litert", reason="the BirdNET model is an extra: pip install 'opso[birdnet]'")
    from pipelines.config import BirdnetConfig
    from pipelines.stages.birdnet import birdnet_detections, describe_birdnet

    detector = describe_birdnet(BirdnetConfig(name="t", threshold=0.5, class_thresholds={"Corvus corax": 0.2}))
    utc = pd.Timestamp("2024-05-01", tz="UTC")
    scores = pd.DataFrame({"file": "a.wav", "recorder": "r", "start_time": [0.0, 0.0, 3.0], "end_time": [3.0, 3.0, 6.0],
                           "start_time_utc": [utc, utc, utc + pd.Timedelta(seconds=3)],
                           "class": ["Corvus corax", "Turdus migratorius", "Turdus migratorius"],
                           "score": np.array([0.25, 0.3, 0.6], dtype=np.float32)})
    found = birdnet_detections(scores, detector)
    assert list(zip(found["class"], found["start_time"], strict=True)) == [("Corvus corax", 0.0),
                                                                          ("Turdus migratorius", 3.0)]
    with pytest.raises(ConfigError, match="not species of the model"):
        describe_birdnet(BirdnetConfig(name="t2", class_thresholds={"Corvus corvax": 0.2}))
    with pytest.raises(ValueError, match="between score_floor"):
        BirdnetConfig(name="t3", class_thresholds={"Corvus corax": 0.001})


def test_export_only_calibrated_or_reviewed_present(demo_config, tmp_path, caplog):
    """From run to validated detections: review (simulated), calibrate, export the calibrated detections
    and the reviewed-present clips as Raven tables, read back to the same boxes."""
    from opso_core.annotations import BoxedAnnotations
    from pipelines.export import export_detections

    run = str(tmp_path / "results")
    assert main(["run", str(demo_config), "--no-progress"]) == 0
    labels = pd.read_csv(tmp_path / "labels.csv")
    simulate_reviews(run, labels)
    with pytest.raises(ConfigError, match="no ok calibration"):
        export_detections(run, str(tmp_path / "none"), "csv", only="calibrated")
    assert main(["calibrate", run, "--target-precision", "0.9"]) == 0
    frog = pd.read_parquet(f"{run}/calibration.parquet").set_index("class_name").loc["frog12"]
    detections = pd.read_parquet(f"{run}/detections")

    summary = export_detections(run, str(tmp_path / "calibrated"), "csv", only="calibrated")
    table = pd.read_csv(tmp_path / "calibrated" / "opso.detections.csv")
    mine = detections[(detections["class"] == "frog12") & (detections["score"] >= frog.threshold)]
    assert summary.detections == len(table) == len(mine) and set(table["class"]) == {"frog12"}
    # the calibrated threshold is below the run's 0.02: the detections lack the clips between, and it says so
    assert frog.threshold < 0.02 and "below the run's" in caplog.text

    summary = export_detections(run, str(tmp_path / "reviewed"), "raven", only="reviewed-present")
    reviews = pd.read_parquet(f"{run}/reviews")
    present = reviews[reviews["label"] == "present"].sort_values(["file", "start_time"], ignore_index=True)
    assert summary.detections == len(present) > 0
    paths = [tmp_path / "reviewed" / rel for rel in summary.files]
    tables = [pd.read_csv(p, sep="\t") for p in paths]
    boxes = BoxedAnnotations.from_raven_files(paths, audio_files=[t["Begin Path"].iloc[0] for t in tables]).df
    got = boxes.sort_values(["file", "start_time"], ignore_index=True)
    assert got["file"].tolist() == present["file"].tolist() and got.start_time.tolist() == present.start_time.tolist()
    assert got.end_time.tolist() == present.end_time.tolist() and set(got.annotation) == {"frog12"}
    truth = labels.set_index(["file", "start_time"])["frog12"]
    assert all(truth[(f, t)] == 1 for f, t in zip(got["file"], got.start_time, strict=True))  # validated calls
    low = present[present["score"] < 0.02]
    assert len(low) > 0  # reviewed present below the run's threshold: exported all the same
