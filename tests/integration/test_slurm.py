"""The pipeline on a real (private, one-node) SLURM through dask-jobqueue: the same tables as a local
run, lost jobs replaced without recomputing finished tasks, a clear stop when no worker can be had,
and a rejected submission reported within a minute."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import dask
import pytest
import yaml

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.driver.cluster import open_cluster
from pipelines.driver.run import run_pipeline
from pipelines.errors import ClusterError

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def config_dict(archive_root, out, tmp_path, **cluster):
    return {"input": {"url": str(archive_root)}, "output": {"url": str(out)},
            "clips": {"duration": 0.5},
            "spectrogram": {"sample_rate": 16000, "window_samples": 256, "clips_per_chunk": 4, "task_audio_s": 2.0},
            "ribbit": [{"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
                        "threshold": 0.001}],
            "cluster": {"kind": "slurm", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB",
                        "jobqueue": {"queue": "debug", "walltime": "00:15:00",
                                     "log_directory": str(tmp_path / "job-logs"),
                                     "scheduler_options": {"dashboard_address": ":0"}},
                        **cluster}}


@pytest.fixture(scope="module")
def reference(archive, dask_client, tmp_path_factory, run_tables):
    work = tmp_path_factory.mktemp("local-reference")
    cfg = config_dict(archive.root, work / "out", work)
    cfg["cluster"] = {"kind": "local"}
    run_pipeline(load_config(cfg, environ={}), dask_client, progress=False)
    return run_tables(work / "out")


def run_with_cancellations(slurm, config, out, watch, *, after_markers, cancel_all):
    """Run on SLURM; once ``after_markers`` RIBBIT markers exist, scancel one job (or all)."""
    cancelled = []

    def cancel():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if watch.count("spectrograms") >= after_markers:
                jobs = slurm.jobs()
                cancelled.extend(jobs if cancel_all else jobs[:1])
                slurm.cancel(*cancelled)
                return
            time.sleep(0.01)

    canceller = threading.Thread(target=cancel, daemon=True)
    canceller.start()
    try:
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}), \
                open_cluster(config.cluster) as session:
            summary = run_pipeline(config, session.client, progress=False, watch=session.check)
            submitted = session.submissions.submitted
    finally:
        canceller.join(timeout=1)
        watch.stop()
    return summary, watch, cancelled, submitted


def test_slurm_run_equals_the_local_run(slurm, archive, reference, tmp_path, capsys, marker_watch, assert_same_tables):
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(config_dict(archive.root, tmp_path / "out", tmp_path)))
    assert main(["-q", "run", str(path), "--no-progress"]) == 0
    assert_same_tables(reference, tmp_path / "out")
    scripts = [p.read_text() for p in (tmp_path / "job-logs").glob("*.out")]
    assert scripts, "the jobs wrote no logs"
    assert slurm.jobs() == []  # the run cancelled its jobs on the way out


def test_cancelled_job_is_replaced_and_no_finished_task_reruns(slurm, archive, reference, tmp_path, marker_watch, assert_same_tables):
    config = load_config(config_dict(archive.root, tmp_path / "out", tmp_path), environ={})
    summary, watch, cancelled, submitted = run_with_cancellations(slurm, config, tmp_path / "out", marker_watch(tmp_path / "out" / "_progress"),
                                                                  after_markers=6, cancel_all=False)
    assert len(cancelled) == 1
    assert summary.status == "complete_with_failures"
    assert_same_tables(reference, tmp_path / "out")
    assert len(watch.first) == -(-summary.n_clips // 4)
    assert watch.rewritten == set()  # every marker written once: no finished task computed twice


def test_all_jobs_cancelled_replacements_finish_the_run(slurm, archive, reference, tmp_path, marker_watch, assert_same_tables):
    config = load_config(config_dict(archive.root, tmp_path / "out", tmp_path), environ={})
    summary, watch, cancelled, submitted = run_with_cancellations(slurm, config, tmp_path / "out", marker_watch(tmp_path / "out" / "_progress"),
                                                                  after_markers=6, cancel_all=True)
    assert len(cancelled) == 2 and submitted >= 4  # two replacement jobs
    assert summary.status == "complete_with_failures"
    assert_same_tables(reference, tmp_path / "out")
    assert watch.rewritten == set()


def test_all_jobs_cancelled_without_replacements_stops_clearly_and_resumes(slurm, archive, reference, tmp_path, marker_watch, assert_same_tables):
    cfg = config_dict(archive.root, tmp_path / "out", tmp_path, max_job_replacements=0, no_workers_timeout_s=5)
    config = load_config(cfg, environ={})
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"no Dask worker has been connected for \d+ s"):
        run_with_cancellations(slurm, config, tmp_path / "out", marker_watch(tmp_path / "out" / "_progress"), after_markers=6, cancel_all=True)
    assert time.monotonic() - started < 120
    status = json.loads((tmp_path / "out" / "run.json").read_text())
    assert status["status"] == "failed" and status["error"]["type"] == "ClusterError"
    resumed = load_config({**cfg, "cluster": {**cfg["cluster"], "max_job_replacements": 10}}, environ={})
    with open_cluster(resumed.cluster) as session:
        summary = run_pipeline(resumed, session.client, progress=False, watch=session.check)
    assert summary.status == "complete_with_failures"
    assert_same_tables(reference, tmp_path / "out")


def test_rejected_submission_fails_within_a_minute(slurm, archive, tmp_path, capsys):
    cfg = config_dict(archive.root, tmp_path / "out", tmp_path)
    cfg["cluster"]["jobqueue"]["queue"] = "no-such-partition"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    rc = main(["-q", "run", str(path), "--no-progress"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert rc == 3 and elapsed < 60, (rc, elapsed, err)
    assert err.startswith("opso: error: the slurm job submission failed: sbatch: error: invalid partition")
    assert "Traceback" not in err and "exception was never retrieved" not in err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def test_driver_as_a_batch_job(slurm, archive, reference, tmp_path, marker_watch, assert_same_tables):
    """deploy/slurm/run-opso.sbatch runs the driver as a job, which submits its worker job."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).parents[2]
    cfg = config_dict(archive.root, tmp_path / "out", tmp_path)
    cfg["cluster"]["n_workers"] = 1  # the driver job holds one of the node's two cores
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    venv = Path(sys.executable).parent.parent
    env = dict(slurm.env(), OPSO_VENV=str(venv))
    done = subprocess.run(["sbatch", "--wait", "--cpus-per-task=1", "--mem=2G", f"--output={tmp_path}/driver.out",
                           f"--chdir={repo}", str(repo / "deploy" / "slurm" / "run-opso.sbatch"), str(path)],
                          env=env, capture_output=True, text=True, timeout=300)
    log = (tmp_path / "driver.out").read_text() if (tmp_path / "driver.out").exists() else ""
    assert done.returncode == 0, (done.stdout, done.stderr, log)
    assert "status:      complete_with_failures" in log and "Traceback" not in log
    assert "progress: " in log  # not a terminal: progress lines, not bars
    assert_same_tables(reference, tmp_path / "out")
    assert os.path.exists(tmp_path / "job-logs")


def test_birdnet_on_slurm_equals_a_local_run(slurm, archive, dask_client, tmp_path):
    """The BirdNET stage on SLURM worker jobs (each loads the model once per thread): the same scores,
    detections and failures as a local run; the 22.05 kHz recorder is resampled on the workers."""
    pytest.importorskip("ai_edge_litert", reason="the BirdNET model is an extra: pip install 'opso[birdnet]'")
    import pandas as pd

    from pipelines.outputs.location import OutputLocation

    def birdnet_config(out, cluster=None):
        cfg = config_dict(archive.root, out, tmp_path)
        for key in ("clips", "ribbit"):
            cfg.pop(key)
        cfg["spectrogram"] = {"store": "none"}
        cfg["birdnet"] = [{"name": "birds", "threshold": 0.05, "windows_per_task": 8}]
        if cluster is not None:
            cfg["cluster"] = cluster
        return cfg

    local = load_config(birdnet_config(tmp_path / "local", {"kind": "local"}), environ={})
    assert run_pipeline(local, dask_client, progress=False).status == "complete_with_failures"  # the broken files
    path = tmp_path / "birdnet.yaml"
    path.write_text(yaml.safe_dump(birdnet_config(tmp_path / "slurm")))
    assert main(["-q", "run", str(path), "--no-progress"]) == 0

    def tables(out):
        loc = OutputLocation(str(out))
        key = ["file", "start_time", "class"]
        return {"scores": loc.read_parquet_folder("scores/detector=birdnet:birds").sort_values(key, ignore_index=True),
                "detections": loc.read_parquet_folder("detections").sort_values(key, ignore_index=True),
                "failures": loc.read_parquet("failures.parquet").sort_values("item", ignore_index=True)}

    want, got = tables(tmp_path / "local"), tables(tmp_path / "slurm")
    assert want["scores"].file.str.contains("rec22k").any() and len(want["failures"]) > 0
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], obj=name)
    assert slurm.jobs() == []
