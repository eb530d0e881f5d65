"""End to end: a synthetic 3 x 3 recorder grid (sources at known positions, delays by distance /
speed of sound, 1/r attenuation, pink noise) through `run_pipeline` with RIBBIT + localization."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opso_core.testing import make_archive
from pipelines.config import load_config
from pipelines.driver.run import run_pipeline
from pipelines.stages.localization import LOCALIZATION_SCHEMA

SR = 16000
FROG = {"name": "frog", "signal_band": [1500, 2500], "pulse_rate_range": [9, 15],
        "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.004}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    archive = make_archive(root / "audio", n_recorders=9, files_per_recorder=2, file_duration_s=30.0,
                           sample_rate_hz=SR, frog_calls_per_file=4, spacing_m=40.0, layout="grid",
                           frog_pulse_jitter=0.8, other_sounds=False, seed=3)
    table = root / "recorders.csv"
    archive.recorders[["recorder", "x", "y"]].to_csv(table, index=False)
    return archive, table


def config_for(archive, table, out, **localization):
    return load_config({
        "input": {"url": str(archive.root), "recorders_table": str(table)},
        "output": {"url": str(out)}, "clips": {"duration": 2.0},
        "spectrogram": {"sample_rate": SR, "clips_per_chunk": 16, "store": "none"},
        "ribbit": [FROG],
        "localization": {"detector": "ribbit:frog", "class": "frog", "max_receiver_dist": 60.0, **localization},
    }, environ={})


def source_errors(localizations: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    """Distance (m) from each localized event to the source of the call sounding in its span."""
    calls = events[events.kind == "frog"].drop_duplicates("event_id")
    errors = []
    for row in localizations.itertuples():
        start = row.start_time_utc.tz_convert("UTC").tz_localize(None)
        during = calls[(calls.time_utc.dt.tz_localize(None) < start + pd.Timedelta(seconds=row.duration_s))
                       & (calls.time_utc.dt.tz_localize(None) + pd.Timedelta(seconds=3.0) > start)]
        assert len(during) == 1, f"{row.event_id} overlaps {len(during)} calls"
        truth = during.iloc[0]
        errors.append(np.hypot(row.x - truth.source_x, row.y - truth.source_y))
    return np.asarray(errors)


@pytest.mark.slow
def test_localizes_calls_on_a_grid(grid, tmp_path, dask_client):
    archive, table = grid
    config = config_for(archive, table, tmp_path / "run")
    summary = run_pipeline(config, dask_client, progress=False)
    assert summary.status == "complete"
    result = pd.read_parquet(tmp_path / "run" / "localizations")
    assert list(result.columns) == LOCALIZATION_SCHEMA.names
    assert len(result) >= 16  # 8 calls, each heard by several references
    assert summary.detections["localized:frog"] == len(result)
    errors = source_errors(result, archive.events)
    print(f"localized {len(result)} events: median error {np.median(errors):.3f} m, "
          f"90th percentile {np.percentile(errors, 90):.3f} m")
    assert np.median(errors) <= 0.3
    assert np.percentile(errors, 90) <= 1.0
    assert (result.residual_rms <= 1.0).all() and (result.n_receivers >= 3).all()
    assert result.z.isna().all()  # a 2-D table gives 2-D positions
    for row in result.itertuples():
        assert row.tdoas[0] == 0.0 and len(row.receivers) == row.n_receivers == len(row.tdoas)

    # a rerun of the same configuration finds every marker and leaves the table as it was
    again = run_pipeline(config, dask_client, progress=False)
    assert again.status == "complete"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / "localizations"), result)

    # every candidate event is either localized or counted as dropped, with the reason
    from pipelines.stages.localization import DROP_REASONS, candidate_events, read_recorders_table

    detections = pd.read_parquet(tmp_path / "run" / "detections")
    inventory = pd.read_parquet(tmp_path / "run" / "inventory.parquet")
    events, _, no_event = candidate_events(detections, read_recorders_table(str(table)), inventory,
                                           config.localization)
    dropped = summary.dropped.get("localization", {})
    assert len(result) + sum(n for why, n in dropped.items() if why != DROP_REASONS["no_event"]) == len(events)
    assert dropped.get(DROP_REASONS["no_event"], 0) == no_event

    strict = run_pipeline(config_for(archive, table, tmp_path / "strict", residual_threshold_m=1e-6), dask_client,
                          progress=False)
    kept = strict.detections["localized:frog"]  # 3 receivers in 2-D fit exactly: residual 0
    rejected = strict.dropped["localization"][DROP_REASONS["residual"]]
    assert strict.status == "complete" and kept < len(result) and rejected > len(events) - len(result)
    assert kept + sum(n for why, n in strict.dropped["localization"].items()
                      if why != DROP_REASONS["no_event"]) == len(events)
    assert f"{rejected} {DROP_REASONS['residual']}" in "\n".join(strict.lines())
    assert len(pd.read_parquet(tmp_path / "strict" / "localizations")) == kept


def test_localization_needs_its_inputs(grid, tmp_path):
    from pipelines.errors import ConfigError

    archive, table = grid
    with pytest.raises(ConfigError, match="recorders_table"):
        load_config({"input": {"url": str(archive.root)}, "output": {"url": str(tmp_path)}, "ribbit": [FROG],
                     "localization": {"detector": "ribbit:frog", "class": "frog", "max_receiver_dist": 60}},
                    environ={})
    with pytest.raises(ConfigError, match="not a detector of this run"):
        config_for(archive, table, tmp_path, detector="ribbit:toad")
    with pytest.raises(ConfigError, match="one class"):
        config_for(archive, table, tmp_path, **{"class": "toad"})
    with pytest.raises(ConfigError, match="localization takes a RIBBIT or CNN detector.*birdnet detections are not"):
        config_for(archive, table, tmp_path, detector="birdnet:birds")


def test_a_recorders_table_that_names_none_of_the_archive_s_recorders_is_refused(grid, tmp_path, dask_client,
                                                                                  caplog):
    """Names in the wrong case: found once the inventory is known, before any task, naming both sides.
    A table that lacks some recorders is a warning (their detections are not localized)."""
    from pipelines.errors import ConfigError

    archive, table = grid
    upper = tmp_path / "upper.csv"
    positions = pd.read_csv(table)
    positions.assign(recorder=positions["recorder"].str.upper()).to_csv(upper, index=False)
    with pytest.raises(ConfigError, match=r"names none of the archive's 9 recorders \(rec00, rec01, .*it lists "
                                          r"REC00, REC01, .*case too"):
        run_pipeline(config_for(archive, upper, tmp_path / "a"), dask_client, progress=False)
    assert not (tmp_path / "a" / "_progress").exists()
    from pipelines.stages.localization import check_recorders_cover

    some = tmp_path / "some.csv"
    positions.iloc[:7].to_csv(some, index=False)
    check_recorders_cover(config_for(archive, some, tmp_path / "b"), pd.DataFrame(
        {"recorder": sorted(positions["recorder"]), "status": "ok"}))
    assert "no position for 2 of the archive's 9 recorders (rec07, rec08)" in caplog.text
    with pytest.raises(ConfigError, match="none of the archive's 2 readable files has a recorder name"):
        check_recorders_cover(config_for(archive, some, tmp_path / "b"), pd.DataFrame(
            {"recorder": [None, None], "status": "ok"}))


@pytest.mark.slow
@pytest.mark.s3
def test_localization_on_s3_equals_local(grid, tmp_path, dask_client, s3_storage_options):
    import s3fs

    archive, table = grid
    local = run_pipeline(config_for(archive, table, tmp_path / "local"), dask_client, progress=False)
    assert local.status == "complete"
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.mkdir("opso-loc")
    fs.put(str(archive.root) + "/", "opso-loc/audio/", recursive=True)
    fs.put(str(table), "opso-loc/recorders.csv")
    config = load_config({
        "input": {"url": "s3://opso-loc/audio", "recorders_table": "s3://opso-loc/recorders.csv",
                  "storage_options": s3_storage_options},
        "output": {"url": "s3://opso-loc/run", "storage_options": s3_storage_options},
        "clips": {"duration": 2.0}, "spectrogram": {"sample_rate": SR, "clips_per_chunk": 16, "store": "none"},
        "ribbit": [FROG],
        "localization": {"detector": "ribbit:frog", "class": "frog", "max_receiver_dist": 60.0},
    }, environ={})
    remote = run_pipeline(config, dask_client, progress=False)
    assert remote.status == "complete"
    from pipelines.outputs.location import OutputLocation

    got = OutputLocation("s3://opso-loc/run", s3_storage_options).read_parquet_folder("localizations")
    want = pd.read_parquet(tmp_path / "local" / "localizations")
    key = ["event_id"]
    got, want = (t.sort_values(key).reset_index(drop=True) for t in (got, want))
    # the same events and positions; file names differ only by their location
    assert list(got.event_id) == list(want.event_id)
    np.testing.assert_allclose(got[["x", "y", "residual_rms"]], want[["x", "y", "residual_rms"]], atol=1e-9)
    assert got.reference_file.str.startswith("s3://opso-loc/audio/").all()


@pytest.mark.slow
def test_killed_localization_resumes_to_the_same_table(grid, tmp_path, dask_client, kill_run_at_markers):
    import yaml

    archive, table = grid
    reference = config_for(archive, table, tmp_path / "a", events_per_task=1)
    run_pipeline(reference, dask_client, progress=False)
    want = pd.read_parquet(tmp_path / "a" / "localizations").sort_values("event_id").reset_index(drop=True)

    data = reference.model_dump(mode="json", by_alias=True)
    data["output"]["url"] = str(tmp_path / "b")
    data["cluster"] = {"kind": "local", "n_workers": 2, "threads_per_worker": 1}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    done_at_kill = kill_run_at_markers(tmp_path / "b.yaml", tmp_path / "b" / "_progress" / "localization", 5,
                                       timeout_s=180)
    assert 0 < done_at_kill < len(want), f"not interrupted part-way ({done_at_kill} of {len(want)} events)"

    resumed = run_pipeline(load_config(tmp_path / "b.yaml", environ={}), dask_client, progress=False)
    assert resumed.status == "complete"
    got = pd.read_parquet(tmp_path / "b" / "localizations").sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.slow
def test_localization_tasks_stay_off_gpu_workers(grid, tmp_path):
    """A LocalCluster worker plus one started with --resources GPU=1: localization runs on the first only."""
    import subprocess
    import sys
    import time

    from distributed import Client, LocalCluster

    from pipelines.outputs.location import OutputLocation

    archive, table = grid
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                 "--nthreads", "1", "--resources", "GPU=1", "--no-dashboard", "--name", "gpu-stand-in"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            gpu = []
            while time.monotonic() < deadline and not gpu:
                workers = client.scheduler_info()["workers"]
                gpu = [a for a, w in workers.items() if (w.get("resources") or {}).get("GPU")]
                time.sleep(0.2)
            assert gpu, "the GPU worker did not register"
            summary = run_pipeline(config_for(archive, table, tmp_path / "out", events_per_task=8), client,
                                   progress=False)
            assert summary.status == "complete" and summary.detections["localized:frog"] > 0
            loc = OutputLocation(str(tmp_path / "out"))
            workers_used = {loc.read_json(f"_progress/localization/{n}")["worker"]
                            for n in loc.list("_progress/localization")}
            assert workers_used and not workers_used & set(gpu)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_a_flat_array_is_localized_in_2d(tmp_path):
    """A z column that is the same for every recorder: a source's height cannot be told from such an
    array (a 3-D solve returns noise for z), so the table reads as 2-D."""
    from pipelines.stages.localization import read_recorders_table

    flat = tmp_path / "flat.csv"
    pd.DataFrame({"recorder": ["a", "b", "c"], "x": [0, 40, 0], "y": [0, 0, 40], "z": [0, 0, 0]}).to_csv(flat,
                                                                                                       index=False)
    assert list(read_recorders_table(str(flat)).columns) == ["x", "y"]
    hill = tmp_path / "hill.csv"
    pd.DataFrame({"recorder": ["a", "b", "c", "d"], "x": [0, 40, 0, 40], "y": [0, 0, 40, 40],
                  "z": [0, 3, 1, 7]}).to_csv(hill, index=False)
    assert list(read_recorders_table(str(hill)).columns) == ["x", "y", "z"]
