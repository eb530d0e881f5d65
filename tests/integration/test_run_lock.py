"""One run per folder, through the ``opso`` command: two runs started at once on one folder (local and
on the S3 test server), a driver paused past its lease while another run takes over (fencing), and a
killed driver's lock taken over by the rerun. Every surviving folder holds exactly a clean run's tables."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from opso_core.testing import make_archive
from pipelines.config import load_config
from pipelines.driver.run import run_pipeline
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_lock import WORKERS_EXIT_WAIT_S

pytestmark = pytest.mark.slow

SR = 16000


@pytest.fixture(scope="module")
def lock_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock_archive")
    make_archive(root, n_recorders=3, files_per_recorder=2, file_duration_s=30, sample_rate_hz=SR,
                 frog_calls_per_file=3, seed=4)
    return root


def config_dict(archive, out, threshold, storage_options=None, processes=False, lease_s=120.0,
                pattern="**/*.WAV"):
    return {"input": {"url": str(archive), "pattern": pattern},
            "output": {"url": str(out), "storage_options": storage_options or {}, "lease_s": lease_s},
            "clips": {"duration": 0.5},
            "spectrogram": {"sample_rate": SR, "window_samples": 256, "clips_per_chunk": 4, "task_audio_s": 2.0},
            "ribbit": [{"name": "frog", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
                        "threshold": threshold}],
            "cluster": {"n_workers": 1, "processes": processes}}


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(config_path, *extra):
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "-q", "run", str(config_path), "--no-progress",
                             *extra], env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_markers(folder: Path, n: int, proc, timeout_s: float = 120.0) -> None:
    """Return once ``folder`` holds ``n`` markers, or the run ``proc`` has ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.exists() and len(list(folder.iterdir())) >= n:
            return
        time.sleep(0.005)


def finish(proc, timeout_s=300):
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err


def tables(location: OutputLocation) -> dict[str, pd.DataFrame]:
    key = ["file", "start_time"]
    return {"inventory": location.read_parquet("inventory.parquet").sort_values("file").reset_index(drop=True),
            "failures": location.read_parquet("failures.parquet"),
            "scores": location.read_parquet_folder("scores").sort_values(key).reset_index(drop=True),
            "detections": location.read_parquet_folder("detections").sort_values(key).reset_index(drop=True)}


def assert_equal_tables(a: OutputLocation, b: OutputLocation):
    ta, tb = tables(a), tables(b)
    assert len(ta["scores"]) > 0
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], obj=name)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def reference_run(cfg: dict, out, dask_client) -> OutputLocation:
    cfg = {**cfg, "output": {**cfg["output"], "url": str(out)}}
    config = load_config(cfg, environ={})
    run_pipeline(config, dask_client, progress=False)
    return OutputLocation(config.output.url, config.output.storage_options)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_of_different_configurations_on_one_folder(lock_archive, tmp_path, where, request, dask_client):
    """The tryout: threshold 0.001 and, at the same moment, 0.0005 into one new folder. Exactly one runs;
    the other stops before any work naming the holder; the folder holds that one run's tables."""
    if where == "s3":
        import s3fs

        options = request.getfixturevalue("s3_storage_options")
        s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir("lock-race")
        out, reference_out = "s3://lock-race/run", "s3://lock-race/reference"
        pattern = "rec00/*.WAV"  # a smaller run: the test server answers from this process
    else:
        options, out, reference_out, pattern = {}, tmp_path / "run", tmp_path / "reference", "**/*.WAV"
    configs = [write(tmp_path / f"{name}.yaml", config_dict(lock_archive, out, threshold, options, pattern=pattern))
               for name, threshold in (("a", 0.001), ("b", 0.0005))]
    procs = [start(c) for c in configs]
    results = [finish(p) for p in procs]
    codes = [rc for rc, _, _ in results]
    assert sorted(codes) == [0, 2], results
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = results[loser][2]
    assert err.count("\n") == 1 and err.startswith("opso: error: the output folder") and "Traceback" not in err
    assert "in use by another opso run" in err and f"pid {procs[winner].pid}" in err and "last heartbeat" in err
    location = OutputLocation(str(out), options)
    status = location.read_json("run.json")
    assert status["status"] == "complete" and len(status["sessions"]) == 1
    assert status["config"]["ribbit"][0]["threshold"] == (0.001, 0.0005)[winner]
    clean = reference_run(config_dict(lock_archive, reference_out, (0.001, 0.0005)[winner], options, pattern=pattern),
                          reference_out, dask_client)
    assert_equal_tables(clean, location)


def test_the_same_configuration_started_twice_runs_once(lock_archive, tmp_path):
    config = write(tmp_path / "a.yaml", config_dict(lock_archive, tmp_path / "run", 0.001))
    procs = [start(config), start(config)]
    results = [finish(p) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "complete" and "resumed" not in status and len(status["sessions"]) == 1
    markers = list((tmp_path / "run" / "_progress" / "spectrograms").iterdir())
    assert len({json.loads(m.read_text())["worker"] for m in markers}) >= 1  # one run wrote them all


def test_one_configuration_into_two_folders_at_once_on_one_scheduler(tmp_path, dask_client, monkeypatch):
    """Two runs of one configuration, two output folders, one scheduler (``--cluster tcp://...``), at the
    same time: each computes and writes its own folder (task keys hold a per-session token; with the
    configuration's fingerprint alone the second run took the first one's tasks and wrote nothing)."""
    import threading

    import pipelines.driver.tasks as driver_tasks

    archive = tmp_path / "archive"
    make_archive(archive, n_recorders=2, files_per_recorder=1, file_duration_s=8, sample_rate_hz=8000, seed=2)
    real = driver_tasks.run_stage_task

    def slow(*args, **kwargs):  # both runs' tasks are in flight together
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(driver_tasks, "run_stage_task", slow)
    cfg = {"input": {"url": str(archive)},
           "spectrogram": {"sample_rate": 8000, "clips_per_chunk": 4, "task_audio_s": 8.0},
           "ribbit": [{"name": "frog", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15], "threshold": 0.02}]}
    outs = [tmp_path / "a", tmp_path / "b"]
    summaries, errors = {}, []

    def go(out):
        try:
            summaries[out] = run_pipeline(load_config({**cfg, "output": {"url": str(out)}}, environ={}), dask_client,
                                          progress=False)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(out,)) for out in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for out in outs:
        assert summaries[out].status == "complete"
        assert len(list((out / "_progress" / "spectrograms").iterdir())) == 2
        assert len(pd.read_parquet(out / "scores")) == summaries[out].n_clips == 8
    assert_equal_tables(*(OutputLocation(str(out)) for out in outs))


def test_a_paused_driver_loses_the_folder_and_writes_nothing_after(lock_archive, tmp_path, dask_client):
    """SIGSTOP the driver (its worker process goes on), let another run take the folder over after the
    lease, finish it, SIGCONT the first: it ends with exit code 5 and changes no file."""
    lease_s = 4.0
    cfg = config_dict(lock_archive, tmp_path / "run", 0.001, processes=True, lease_s=lease_s)
    config = write(tmp_path / "run.yaml", cfg)
    first = start(config)
    markers = tmp_path / "run" / "_progress" / "spectrograms"
    wait_for_markers(markers, 3, first)
    assert first.poll() is None, "the first run ended before it could be paused"
    os.kill(first.pid, signal.SIGSTOP)  # the driver only: its worker process keeps running tasks
    try:
        n_total = -(-(6 * 60) // 4)  # 6 files of 30 s in 0.5 s clips, 4 per task
        assert len(list(markers.iterdir())) < n_total
        time.sleep(lease_s + 1.0)
        second = start(config)
        rc, out, err = finish(second)
        assert rc == 0, err
        assert "taking over" in err and f"pid {first.pid}" in err  # the warning names the stale holder
        after_second = snapshot(tmp_path / "run")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    rc, out, err = finish(first)
    assert rc == 5, (rc, err)
    assert err.strip().splitlines()[-1].startswith("opso: error: ")
    assert "another run took over" in err or "could not renew" in err
    assert snapshot(tmp_path / "run") == after_second  # the first run wrote nothing after the takeover
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "complete" and len(status["sessions"]) == 2
    clean = reference_run(config_dict(lock_archive, tmp_path / "reference", 0.001), tmp_path / "reference",
                          dask_client)
    assert_equal_tables(clean, OutputLocation(str(tmp_path / "run")))


def test_a_killed_driver_s_lock_is_taken_over_by_the_rerun(lock_archive, tmp_path, capsys):
    from pipelines.cli import main

    config = write(tmp_path / "run.yaml", config_dict(lock_archive, tmp_path / "run", 0.001, processes=True))
    proc = start(config)
    wait_for_markers(tmp_path / "run" / "_progress" / "spectrograms", 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    capsys.readouterr()
    deadline = time.monotonic() + WORKERS_EXIT_WAIT_S  # SIGKILLed workers take a moment to end on a loaded machine
    while True:
        assert main(["status", str(tmp_path / "run")]) == 0
        shown = capsys.readouterr().out
        if "no driver holds the run's lock" in shown or time.monotonic() > deadline:
            break
        assert f"its driver (pid {proc.pid}) has ended; its workers are still ending" in shown
        time.sleep(0.2)
    assert "no driver holds the run's lock" in shown
    assert f"its process {proc.pid} and its workers on this host have ended" in shown
    started = time.monotonic()
    rc, out, err = finish(start(config))
    assert rc == 0, err
    assert "taking over" in err and "have ended" in err and "waiting" not in err  # at once: nothing can write
    assert time.monotonic() - started < 60
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "complete" and len(status["sessions"]) == 2
    assert status["summary"]["n_sessions"] == 2 and status["summary"]["total_wall_s"] > status["summary"]["wall_s"]
