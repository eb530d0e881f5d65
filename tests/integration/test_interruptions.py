"""Interruptions a long run meets: Ctrl-C, SIGTERM (``scancel`` of a driver job), a worker process
killed mid-run. Each ends cleanly and resumes to the tables of an uninterrupted run, and no finished
task is computed twice (the markers in ``_progress/`` are written once each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config
from pipelines.driver.run import run_pipeline

pytestmark = pytest.mark.slow


def write_config(path, archive_root, out, n_workers=2):
    cfg = {"input": {"url": str(archive_root)}, "output": {"url": str(out)},
           "clips": {"duration": 0.5},
           "spectrogram": {"sample_rate": 16000, "window_samples": 256, "clips_per_chunk": 4, "task_audio_s": 2.0},
           "ribbit": [{"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
                       "threshold": 0.001}],
           "cluster": {"kind": "local", "n_workers": n_workers, "threads_per_worker": 1}}
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path, environ={})


@pytest.fixture(scope="module")
def reference(archive, dask_client, tmp_path_factory, run_tables):
    work = tmp_path_factory.mktemp("reference")
    run_pipeline(write_config(work / "a.yaml", archive.root, work / "out"), dask_client, progress=False)
    return run_tables(work / "out")


def start_cli(config_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(config_path), "--no-progress"],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_markers(folder: Path, n: int, proc, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.exists() and len(list(folder.iterdir())) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"fewer than {n} markers in {folder} before the run ended")


def processes_in_session(sid):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.getsid(int(pid)) == sid:
                    found.append(int(pid))
            except (ProcessLookupError, PermissionError):
                pass
    return found


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "ctrl-c four times"])
def test_interrupt_ends_in_one_line_and_resumes(archive, reference, tmp_path, how, dask_client, assert_same_tables):
    config_path = tmp_path / "run.yaml"
    config = write_config(config_path, archive.root, tmp_path / "out")
    proc = start_cli(config_path)
    wait_for_markers(tmp_path / "out" / "_progress" / "spectrograms", 3, proc)
    if how == "ctrl-c":  # what the terminal does: SIGINT to the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "ctrl-c four times":  # an impatient user: the later ones must not break the clean-up
        for _ in range(4):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.15)
    else:  # what scancel or docker stop does to the driver
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1] == "opso: interrupted; run the same command again to resume"
    status = json.loads((tmp_path / "out" / "run.json").read_text())
    assert status["status"] == "interrupted" and status["finished"]
    deadline = time.monotonic() + 20  # the cluster's worker processes went with the driver
    while processes_in_session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in_session(proc.pid) == []

    summary = run_pipeline(config, dask_client, progress=False)
    assert summary.status == "complete_with_failures"
    assert_same_tables(reference, tmp_path / "out")


def test_a_killed_worker_costs_only_its_unfinished_tasks(archive, reference, tmp_path, marker_watch,
                                                         assert_same_tables):
    from distributed import Client, LocalCluster

    config = write_config(tmp_path / "run.yaml", archive.root, tmp_path / "out")
    watch = marker_watch(tmp_path / "out" / "_progress")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        victims = client.run(os.getpid)

        def kill_one_worker():
            folder = tmp_path / "out" / "_progress" / "spectrograms"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if folder.exists() and len(list(folder.iterdir())) >= 8:
                    os.kill(next(iter(victims.values())), signal.SIGKILL)
                    return
                time.sleep(0.005)

        killer = threading.Thread(target=kill_one_worker, daemon=True)
        killer.start()
        summary = run_pipeline(config, client, progress=False)
        killer.join()
    watch.stop()
    assert summary.status == "complete_with_failures"
    assert_same_tables(reference, tmp_path / "out")
    n_tasks = -(-summary.n_clips // 4)
    assert len(watch.first) == n_tasks  # one marker per task ...
    assert watch.rewritten == set()  # ... written once: no finished task ran again after the worker loss


SLOW_PLANNER = '''
import sys, time
from pathlib import Path
from pipelines.driver.clip_plan import ClipIndex
plan = ClipIndex.from_inventory.__func__

def slow(cls, *args, **kwargs):  # a planner working for a minute in Python (as a huge archive's would)
    Path(sys.argv[1]).write_text("planning")
    for _ in range(600):
        time.sleep(0.1)
    return plan(cls, *args, **kwargs)

if __name__ == "__main__":  # the cluster's worker processes import this file too
    ClipIndex.from_inventory = classmethod(slow)
    from pipelines.cli import main
    sys.exit(main(sys.argv[2:]))
'''


def test_ctrl_c_while_planning_is_honoured_within_seconds(archive, tmp_path):
    script = tmp_path / "slow_planner.py"
    script.write_text(SLOW_PLANNER)
    flag = tmp_path / "planning"
    write_config(tmp_path / "run.yaml", archive.root, tmp_path / "out")
    proc = subprocess.Popen([sys.executable, str(script), str(flag), "run", str(tmp_path / "run.yaml"),
                             "--no-progress"], env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), proc.communicate()[1]
    signalled = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - signalled <= 10, err
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "opso: interrupted; run the same command again to resume"
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "interrupted"


def test_plan_only_prints_the_plan_and_writes_nothing(archive, tmp_path, capsys):
    from pipelines.cli import main

    write_config(tmp_path / "run.yaml", archive.root, tmp_path / "out")
    assert main(["run", str(tmp_path / "run.yaml"), "--plan-only"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    assert "spectrograms: compute" in out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert "readable)" in lines["plan"] and "audio hours at 16000 Hz" in lines["plan"]
    # 0.5 s clips, tasks of 2 s of audio in whole chunks of 4 clips: 4 clips a task
    assert "in " in lines["spectrograms"] and "tasks of up to 4; a task's description" in lines["spectrograms"]
    assert lines["tasks"].startswith("tasks: ") and "peak memory of this process" in lines["driver"]
