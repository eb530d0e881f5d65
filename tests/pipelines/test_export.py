"""``opso export``: a demo run's detections as Raven selection tables (read back to the same boxes),
Audacity label tracks, a Kaleidoscope CSV and one CSV; local and S3 destinations; no silent overwrite."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.demo import DEMO_SPECIES, prepare_demo
from pipelines.driver.run import run_pipeline
from pipelines.errors import ConfigError, OutputConflictError
from pipelines.export import export_detections
from pipelines.outputs.results import read_detections


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, dask_client):
    config = prepare_demo(tmp_path_factory.mktemp("demo"), files_per_recorder=2, file_duration_s=30)
    run_pipeline(config, dask_client, progress=False)
    return config


def test_raven_tables_read_back_to_the_same_boxes(demo_run, tmp_path):
    from opso_core.annotations import BoxedAnnotations

    run = demo_run.output.url
    detections = read_detections(run)
    assert len(detections) > 0
    summary = export_detections(run, str(tmp_path), "raven")
    assert summary.detections == len(detections)
    # one table per audio file with detections, in its recorder's folder (files of two recorders share names)
    assert sorted(summary.files) == sorted(
        f"{f.split('/')[-2]}/{f.split('/')[-1].rsplit('.', 1)[0]}.opso.selection.table.txt"
        for f in detections.file.unique())
    paths = [tmp_path / rel for rel in summary.files]
    tables = [pd.read_csv(p, sep="\t") for p in paths]
    boxes = BoxedAnnotations.from_raven_files(paths, audio_files=[t["Begin Path"].iloc[0] for t in tables]).df
    got = boxes.sort_values(["file", "start_time"], ignore_index=True)
    want = detections.sort_values(["file", "start_time"], ignore_index=True)
    assert list(got.annotation) == list(want["class"])
    assert list(got.file) == list(want.file)
    assert got.start_time.tolist() == want.start_time.tolist() and got.end_time.tolist() == want.end_time.tolist()
    frog = DEMO_SPECIES[0]["signal_band"]
    assert (got.low_f == frog[0]).all() and (got.high_f == frog[1]).all()  # RIBBIT's signal band
    assert got.Score.tolist() == pytest.approx(want.score.tolist(), rel=1e-12)
    assert (got.Detector == "ribbit:frog12").all() and all(t.Selection.tolist() == list(range(1, len(t) + 1))
                                                           for t in tables)


def test_audacity_kaleidoscope_and_csv(demo_run, tmp_path):
    run = demo_run.output.url
    detections = read_detections(run)
    audacity = export_detections(run, str(tmp_path / "audacity"), "audacity")
    rows = sum(len(pd.read_csv(tmp_path / "audacity" / rel, sep="\t", header=None)) for rel in audacity.files)
    assert rows == len(detections)
    first = pd.read_csv(tmp_path / "audacity" / sorted(audacity.files)[0], sep="\t", header=None)
    assert first[2].str.match(r"^frog12 0\.\d+").all()

    export_detections(run, str(tmp_path / "k"), "kaleidoscope")
    kaleidoscope = pd.read_csv(tmp_path / "k" / "opso.kaleidoscope.csv")
    assert list(kaleidoscope.columns[:6]) == ["INDIR", "FOLDER", "IN FILE", "CHANNEL", "OFFSET", "DURATION"]
    assert len(kaleidoscope) == len(detections) and set(kaleidoscope.FOLDER) <= {"rec00", "rec01", "rec02"}
    assert (kaleidoscope.DURATION == 2.0).all()

    export_detections(run, str(tmp_path / "c"), "csv", detectors=["ribbit:frog12"], classes=["frog12"])
    table = pd.read_csv(tmp_path / "c" / "opso.detections.csv")
    assert list(table.columns) == list(detections.columns) and len(table) == len(detections)


def test_no_silent_overwrite_and_clear_errors(demo_run, tmp_path, capsys):
    run = demo_run.output.url
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    export_detections(run, str(tmp_path), "csv")
    with pytest.raises(OutputConflictError, match="already in .*--overwrite"):
        export_detections(run, str(tmp_path), "csv")
    export_detections(run, str(tmp_path), "csv", overwrite=True)
    assert mine.read_text() == "my notes"
    with pytest.raises(ConfigError, match=r"no detections of detectors \['cnn:nope'\].*ribbit:frog12"):
        export_detections(run, str(tmp_path / "x"), "raven", detectors=["cnn:nope"])
    assert main(["export", run, "--format", "csv", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opso: error: export: 1 file(s) already in") and "Traceback" not in err
    assert main(["export", run, "--format", "raven", "--out", str(tmp_path / "cli")]) == 0
    assert "detections in" in capsys.readouterr().out


@pytest.mark.s3
def test_export_to_a_bucket(demo_run, tmp_path, s3_storage_options):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.mkdir("opso-export")
    summary = export_detections(demo_run.output.url, "s3://opso-export/raven", "raven",
                                destination_storage_options=s3_storage_options)
    local = export_detections(demo_run.output.url, str(tmp_path), "raven")
    assert summary.files == local.files
    for rel in summary.files:
        assert fs.cat(f"opso-export/raven/{rel}") == (tmp_path / rel).read_bytes()


def test_folders_under_a_relative_archive_root_keep_two_sites_apart(tmp_path, monkeypatch):
    import json

    from pipelines.outputs.location import OutputLocation
    from pipelines.outputs.tables import DETECTION_COLUMNS, DETECTION_SCHEMA

    monkeypatch.chdir(tmp_path)
    files = [str(tmp_path / "arch" / site / "rec1" / "a.wav") for site in ("site1", "site2")]
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "complete", "config": {"input": {"url": "arch"}}}))
    location = OutputLocation(str(run))
    location.write_parquet("inventory.parquet", pd.DataFrame({"file": files, "sample_rate": [24000, 48000]}))
    detections = pd.DataFrame({"detector": "birdnet:birds", "class": "Corvus corax", "file": files,
                               "recorder": "rec1", "start_time": 0.0, "end_time": 3.0,
                               "start_time_utc": pd.NaT, "score": 0.8, "common_name": "Common Raven"},
                              columns=DETECTION_COLUMNS)
    location.write_parquet("detections/part-birdnet-birds-0.parquet", detections, schema=DETECTION_SCHEMA)
    summary = export_detections(str(run), str(tmp_path / "out"), "raven")
    assert sorted(summary.files) == ["site1/rec1/a.opso.selection.table.txt", "site2/rec1/a.opso.selection.table.txt"]
    low_rate = pd.read_csv(tmp_path / "out" / "site1/rec1/a.opso.selection.table.txt", sep="\t")
    assert low_rate["High Freq (Hz)"].iloc[0] == 12000.0  # BirdNET's 15 kHz capped at the file's Nyquist
    assert low_rate["Common Name"].iloc[0] == "Common Raven"
