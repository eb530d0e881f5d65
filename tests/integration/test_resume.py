"""Kill a run part-way (the client process and its local cluster, SIGKILL), run it again, and
compare every table with an uninterrupted run: no duplicated and no missing rows."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from pipelines.config import load_config
from pipelines.driver.run import run_pipeline
from pipelines.outputs.location import OutputLocation

pytestmark = pytest.mark.slow


def write_config(path, archive_root, out):
    cfg = {"input": {"url": str(archive_root)}, "output": {"url": str(out)},
           "clips": {"duration": 0.5},
           "spectrogram": {"sample_rate": 16000, "window_samples": 256, "clips_per_chunk": 2, "task_audio_s": 1.0},
           "ribbit": [{"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
                       "threshold": 0.001}],
           "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1}}
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path, environ={})


def test_interrupted_run_resumes_to_identical_tables(archive, dask_client, tmp_path, run_tables,
                                                     kill_run_at_markers):
    reference = write_config(tmp_path / "a.yaml", archive.root, tmp_path / "a")
    run_pipeline(reference, dask_client, progress=False)

    interrupted = write_config(tmp_path / "b.yaml", archive.root, tmp_path / "b")
    done_at_kill = kill_run_at_markers(tmp_path / "b.yaml", tmp_path / "b" / "_progress" / "spectrograms", 5)
    total_chunks = -(-reference_clip_count(tmp_path / "a") // 2)
    assert 0 < done_at_kill < total_chunks, f"the run was not interrupted part-way ({done_at_kill}/{total_chunks})"
    assert OutputLocation(str(tmp_path / "b")).read_json("run.json")["status"] == "running"

    summary = run_pipeline(interrupted, dask_client, progress=False)
    assert summary.status == "complete_with_failures"

    a, b = run_tables(tmp_path / "a"), run_tables(tmp_path / "b")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_like=False, obj=name)
    assert not b["scores"].duplicated(["detector", "file", "start_time"]).any()
    za = xr.open_zarr(tmp_path / "a" / "spectrograms.zarr").spectrogram.values
    zb = xr.open_zarr(tmp_path / "b" / "spectrograms.zarr").spectrogram.values
    np.testing.assert_array_equal(za, zb)
    assert not np.isnan(zb).any()


def reference_clip_count(out):
    return OutputLocation(str(out)).read_json("run.json")["summary"]["n_clips"]


def test_an_inventory_cut_short_resumes_from_its_parts(archive, dask_client, tmp_path, run_tables, monkeypatch):
    """The inventory's tasks write their parts to _inventory/; a run stopped during its inventory reads
    the finished batches' parts instead of their headers, and the folder goes once inventory.parquet
    is written."""
    from pipelines.driver import inventory as inventory_module
    from pipelines.driver import run as driver_run

    monkeypatch.setattr(driver_run, "INVENTORY_BATCH_FILES", 2)
    reference = write_config(tmp_path / "a.yaml", archive.root, tmp_path / "a")
    run_pipeline(reference, dask_client, progress=False)

    read = []
    real = inventory_module.inventory_files

    def failing_once(paths, *args):  # the cluster fails under the inventory's last batches, once
        read.extend(paths)
        if any("rec22k" in p for p in paths) and not failing_once.failed:
            failing_once.failed = True
            raise OSError("the worker lost its network")
        return real(paths, *args)

    failing_once.failed = False
    monkeypatch.setattr(inventory_module, "inventory_files", failing_once)
    config = write_config(tmp_path / "b.yaml", archive.root, tmp_path / "b")
    with pytest.raises(OSError, match="lost its network"):
        run_pipeline(config, dask_client, progress=False)
    deadline = time.monotonic() + 5  # the failed run left nothing on the cluster (released asynchronously)
    while any(str(k).startswith("inventory-") for k in dask_client.futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [k for k in dask_client.futures if str(k).startswith("inventory-")]
    parts = sorted(p.name for p in (tmp_path / "b" / "_inventory").iterdir())
    assert parts and not (tmp_path / "b" / "inventory.parquet").exists()
    read.clear()
    run_pipeline(config, dask_client, progress=False)
    n_files = len(pd.read_parquet(tmp_path / "a" / "inventory.parquet"))
    assert any("rec22k" in p for p in read) and len(read) < n_files  # only batches without a part are read
    assert not (tmp_path / "b" / "_inventory").exists()
    a, b = run_tables(tmp_path / "a"), run_tables(tmp_path / "b")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "inventory.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "inventory.parquet"))
