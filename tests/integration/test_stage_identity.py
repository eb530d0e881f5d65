"""Each output has its own identity: a rerun with another configuration keeps what did not change,
recomputes only what did, removes what is no longer configured, and ends with the tables a clean run
of that configuration writes."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from pipelines.config import load_config
from pipelines.driver.dry_run import plan_run
from pipelines.driver.run import run_pipeline
from pipelines.errors import OutputConflictError
from pipelines.outputs.location import OutputLocation

FROG = {"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15], "threshold": 0.02}
TOAD = {"name": "toad", "signal_band": [900, 1300], "pulse_rate_range": [4, 8], "threshold": 0.01}


def config_for(tmp_path, name, archive_root, out, *, species=(FROG,), duration=0.5, store="compact"):
    cfg = {"input": {"url": str(archive_root)}, "output": {"url": str(out)},
           "clips": {"duration": duration},
           "spectrogram": {"sample_rate": 16000, "window_samples": 256, "clips_per_chunk": 16, "task_audio_s": 8.0,
                           "store": store},
           "ribbit": [dict(s) for s in species],
           "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path, environ={})


def snapshot(out) -> dict[str, int]:
    """``{relative path: mtime_ns}`` of every file of a run folder but the lock."""
    found = {}
    for dirpath, _, names in os.walk(out):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, out)
            if not rel.startswith("_lock"):
                found[rel] = os.stat(path).st_mtime_ns
    return found


def content(out, prefix) -> dict[str, bytes]:
    return {rel: open(os.path.join(out, rel), "rb").read() for rel in snapshot(out) if rel.startswith(prefix)}


def tables(out) -> dict[str, pd.DataFrame]:
    loc = OutputLocation(str(out))
    key = ["detector", "file", "start_time"]
    detections = loc.read_parquet_folder("detections")
    scores = {name.split("=", 1)[1]: loc.read_parquet_folder(f"scores/{name}").sort_values(["file", "start_time"])
              .reset_index(drop=True) for name in loc.list("scores")}
    return {"detections": detections.sort_values(key).reset_index(drop=True), **scores}


def assert_same_tables(a, b):
    ta, tb = tables(a), tables(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], obj=name)


def changed(before: dict, after: dict) -> set[str]:
    return {rel for rel, mtime in after.items() if before.get(rel) != mtime}


@pytest.fixture
def first_run(archive, dask_client, tmp_path):
    out = tmp_path / "run"
    run_pipeline(config_for(tmp_path, "first", archive.root, out), dask_client, progress=False)
    return out


def test_a_changed_threshold_rewrites_only_that_detectors_detections(archive, dask_client, tmp_path, first_run,
                                                                      caplog):
    out = first_run
    before = snapshot(out)
    scores_before = content(out, "scores")
    store_before = content(out, "spectrograms.zarr")
    lower = {**FROG, "threshold": 0.005}
    config = config_for(tmp_path, "lower", archive.root, out, species=(lower,))
    lines = plan_run(config)
    assert "  scores:ribbit:frog12: kept" in lines and "  spectrograms: kept" in lines
    assert "  detections:ribbit:frog12: recompute (changed: ribbit[frog12].threshold 0.02 → 0.005)" in lines

    with caplog.at_level("INFO", logger="pipelines.driver.tasks"):
        summary = run_pipeline(config, dask_client, progress=False)
    n_ranges = len([r for r in before if r.startswith("_progress/")])
    assert n_ranges > 2 and f"2 tasks to run ({n_ranges} ranges in 1 stage)" in caplog.text  # one per worker

    rewritten = changed(before, snapshot(out))
    assert {r for r in rewritten if not r.startswith("_progress/")} == {
        r for r in before if r.startswith("detections/")} | {"run.json"}
    n_markers = len([r for r in before if r.startswith("_progress/")])
    assert len([r for r in rewritten if r.startswith("_progress/")]) == n_markers  # each range re-derived once
    assert content(out, "scores") == scores_before and content(out, "spectrograms.zarr") == store_before

    clean = tmp_path / "clean"
    reference = run_pipeline(config_for(tmp_path, "clean", archive.root, clean, species=(lower,)), dask_client,
                             progress=False)
    assert_same_tables(out, clean)
    assert summary.detections == reference.detections
    assert summary.detections["ribbit:frog12"] > 0
    assert summary.n_clips - summary.n_clips_failed == reference.n_clips - reference.n_clips_failed
    assert plan_run(config)[-3:] == ["  spectrograms: kept", "  scores:ribbit:frog12: kept",
                                     "  detections:ribbit:frog12: kept"]


def test_an_added_species_is_computed_alone_and_a_removed_one_is_removed(archive, dask_client, tmp_path, first_run):
    out = first_run
    before = snapshot(out)
    config = config_for(tmp_path, "two", archive.root, out, species=(FROG, TOAD))
    lines = plan_run(config)
    assert "  scores:ribbit:toad: compute (new)" in lines and "  detections:ribbit:frog12: kept" in lines

    summary = run_pipeline(config, dask_client, progress=False)

    rewritten = changed(before, snapshot(out))
    assert not [r for r in rewritten if "frog12" in r or r.startswith("spectrograms.zarr")]
    assert {r for r in snapshot(out) if "toad" in r} <= rewritten
    clean = tmp_path / "clean"
    reference = run_pipeline(config_for(tmp_path, "clean", archive.root, clean, species=(FROG, TOAD)), dask_client,
                             progress=False)
    assert_same_tables(out, clean)
    assert summary.detections == reference.detections

    # removed again: its outputs go, the tables agree with run.json, the rest stays as it was
    before = snapshot(out)
    config = config_for(tmp_path, "frog-only", archive.root, out)
    assert "  scores:ribbit:toad: remove (no longer configured)" in plan_run(config)
    summary = run_pipeline(config, dask_client, progress=False)
    after = snapshot(out)
    assert not [r for r in after if "toad" in r]
    assert not [r for r in changed(before, after) if r in before and not r.startswith(("_progress/", "run.json"))]
    info = OutputLocation(str(out)).read_json("run.json")
    assert sorted(info["outputs"]) == ["detections:ribbit:frog12", "scores:ribbit:frog12", "spectrograms"]
    assert set(summary.detections) == {"ribbit:frog12"}
    assert set(pd.read_parquet(out / "detections")["detector"]) <= {"ribbit:frog12"}
    assert_same_tables(out, first_run_reference(tmp_path, archive, dask_client))


def first_run_reference(tmp_path, archive, dask_client):
    ref = tmp_path / "reference"
    run_pipeline(config_for(tmp_path, "reference", archive.root, ref), dask_client, progress=False)
    return ref


def test_a_changed_clip_duration_recomputes_everything(archive, dask_client, tmp_path, first_run):
    out = first_run
    before = snapshot(out)
    config = config_for(tmp_path, "longer", archive.root, out, duration=1.0)
    lines = plan_run(config)
    assert "  spectrograms: recompute (changed: clips.duration 0.5 → 1.0)" in lines
    assert "  scores:ribbit:frog12: recompute (changed: clips.duration 0.5 → 1.0)" in lines

    run_pipeline(config, dask_client, progress=False)

    after = snapshot(out)
    assert not [r for r in after if r in before and after[r] == before[r] and not r.startswith("failures")]
    clean = tmp_path / "clean"
    run_pipeline(config_for(tmp_path, "clean", archive.root, clean, duration=1.0), dask_client, progress=False)
    assert_same_tables(out, clean)
    np.testing.assert_array_equal(xr.open_zarr(out / "spectrograms.zarr").spectrogram.values,
                                  xr.open_zarr(clean / "spectrograms.zarr").spectrogram.values)
    assert sorted(r for r in after if r.startswith("_progress/")) == sorted(
        r for r in snapshot(clean) if r.startswith("_progress/"))


def test_a_changed_store_encoding_rewrites_only_the_store(archive, dask_client, tmp_path, first_run):
    out = first_run
    before = snapshot(out)
    config = config_for(tmp_path, "full", archive.root, out, store="full")
    assert "  spectrograms: recompute (changed: spectrogram.compact_step_db 0.625 → (none); spectrogram.store "\
           "compact → full)" in plan_run(config)
    run_pipeline(config, dask_client, progress=False)
    after = snapshot(out)
    assert not [r for r in changed(before, after) if r.startswith(("scores/", "detections/"))]
    assert xr.open_zarr(out / "spectrograms.zarr").spectrogram.dtype == np.float32


def test_another_archive_is_refused_naming_the_key(archive, dask_client, tmp_path, first_run):
    other = tmp_path / "other-archive"
    other.mkdir()
    (other / "x").mkdir()
    import shutil

    first = sorted(archive.root.glob("*/*.WAV"))[0]
    shutil.copy(first, other / "x" / first.name)
    config = config_for(tmp_path, "other", other, first_run)
    with pytest.raises(OutputConflictError, match=r"another archive \(changed: input.url .* → .*other-archive"):
        plan_run(config)
    with pytest.raises(OutputConflictError, match="input.url"):
        run_pipeline(config, dask_client, progress=False)


def test_dry_run_from_the_command_line_writes_nothing(archive, dask_client, tmp_path, first_run, capsys):
    from pipelines.cli import main

    before = snapshot(first_run)
    config_for(tmp_path, "lower", archive.root, first_run, species=({**FROG, "threshold": 0.01},))
    assert main(["run", str(tmp_path / "lower.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "the same archive, other settings: outputs whose identity is unchanged are kept"
    assert out[-1] == "  detections:ribbit:frog12: recompute (changed: ribbit[frog12].threshold 0.02 → 0.01)"
    assert main(["run", str(tmp_path / "lower.yaml"), "--dry-run", "--overwrite"]) == 0
    assert "--overwrite: the previous run's outputs are deleted first" in capsys.readouterr().out
    assert snapshot(first_run) == before


def test_a_change_interrupted_half_way_then_undone_ends_like_a_clean_run(archive, dask_client, tmp_path, first_run,
                                                                         monkeypatch):
    """A range whose marker still holds an earlier identity is recomputed, never trusted: each product's
    marker token has an epoch renewed whenever its outputs are deleted."""
    import pipelines.stages.spectrograms as spectrograms

    out = first_run
    reference = tables(out)
    rederive = spectrograms.rederive_detections

    def fails_late(location, detector, range_name, thresholds):
        if int(range_name.split("-")[0]) >= 64:
            raise RuntimeError("injected")
        return rederive(location, detector, range_name, thresholds)

    monkeypatch.setattr(spectrograms, "rederive_detections", fails_late)
    lower = config_for(tmp_path, "lower", archive.root, out, species=({**FROG, "threshold": 0.005},))
    assert run_pipeline(lower, dask_client, progress=False).status == "incomplete"
    monkeypatch.setattr(spectrograms, "rederive_detections", rederive)
    again = run_pipeline(config_for(tmp_path, "first", archive.root, out), dask_client, progress=False)
    assert again.status == "complete_with_failures" and not again.task_failures
    got = tables(out)
    for name in reference:
        pd.testing.assert_frame_equal(reference[name], got[name], obj=name)
    assert again.detections["ribbit:frog12"] == len(got["detections"])


def test_a_store_switched_off_is_removed_naming_the_setting(archive, dask_client, tmp_path, first_run):
    config = config_for(tmp_path, "no-store", archive.root, first_run, store="none")
    assert "  spectrograms: remove (changed: spectrogram.store compact → none)" in plan_run(config)
    run_pipeline(config, dask_client, progress=False)
    assert not (first_run / "spectrograms.zarr").exists() and len(pd.read_parquet(first_run / "detections")) > 0
    assert "  spectrograms: compute (new)" in plan_run(config_for(tmp_path, "store", archive.root, first_run))
