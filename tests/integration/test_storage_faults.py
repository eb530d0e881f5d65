"""Storage that misbehaves under a run: stalled requests, a failure during the run, a resumed run's
accounting on S3, credentials in verbose logs, and a full disk. A fault-injecting proxy
(``fault_proxy.FaultProxy``) sits between the runs and the local S3 server where a fault is needed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from opso_core.testing import make_archive
from pipelines.outputs.location import OutputLocation

from .fault_proxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.s3]

SR = 8000


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_archive")
    make_archive(root, n_recorders=2, files_per_recorder=2, file_duration_s=12, sample_rate_hz=SR,
                 frog_calls_per_file=2, seed=6)
    return root


def s3_bucket(options, name):
    import s3fs

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    if not fs.exists(name):
        fs.mkdir(name)
    return fs


def write_config(path, archive, out, options, processes=False, **output):
    cfg = {"input": {"url": str(archive)}, "output": {"url": out, "storage_options": options, **output},
           "clips": {"duration": 1.0},
           "spectrogram": {"sample_rate": SR, "clips_per_chunk": 4, "task_audio_s": 4.0},
           "ribbit": [{"name": "frog", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15], "threshold": 0.001}],
           "cluster": {"n_workers": 1, "processes": processes}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(config, *args, timeout_s=300):
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args, "run", str(config), "--no-progress"],
                          capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc.returncode, proc.stdout, proc.stderr


def through(proxy, options, **config_kwargs):
    return {**options, "client_kwargs": {"endpoint_url": proxy.url},
            "config_kwargs": {"connect_timeout": 2, "read_timeout": 2, **config_kwargs}}


@pytest.fixture
def proxy(s3_server):
    p = FaultProxy(s3_server).start()
    yield p
    p.stop()


def test_stalled_requests_are_retried_instead_of_hanging_the_run(small_archive, tmp_path, s3_storage_options, proxy):
    """A PUT that is never answered (the preflight's write check, a task's chunk): with the read timeout it is
    retried, and the run ends as if nothing had happened."""
    s3_bucket(s3_storage_options, "stalls")
    hung = set()

    def policy(method, path):
        for needle in (".opso-write-check", "spectrograms.zarr/file/1"):
            if method == "PUT" and needle in path and needle not in hung:
                hung.add(needle)
                return "hang"
        return "pass"

    proxy.policy = policy
    config = write_config(tmp_path / "run.yaml", small_archive, "s3://stalls/run", through(proxy, s3_storage_options))
    started = time.monotonic()
    rc, out, err = run_cli(config, "-q")
    assert rc == 0, err
    assert proxy.count("hang") == 2 and time.monotonic() - started < 120
    status = OutputLocation("s3://stalls/run", s3_storage_options).read_json("run.json")
    assert status["status"] == "complete"


def test_a_storage_failure_during_the_run_has_its_own_exit_code(small_archive, tmp_path, s3_storage_options, proxy):
    """The storage refuses the driver's end-of-run writes (503, past every retry): exit code 4, run.json
    says failed, and the same command then finishes the run."""
    s3_bucket(s3_storage_options, "outage")

    def policy(method, path):
        return "503" if method == "PUT" and "failures.parquet" in path else "pass"

    proxy.policy = policy
    options = through(proxy, s3_storage_options, retries={"max_attempts": 2, "mode": "standard"})
    config = write_config(tmp_path / "run.yaml", small_archive, "s3://outage/run", options)
    rc, out, err = run_cli(config, "-q")
    assert rc == 4, err
    assert err.strip().splitlines()[-1].startswith("opso: error: the storage failed during the run: cannot write "
                                                   "s3://outage/run/failures.parquet")
    location = OutputLocation("s3://outage/run", s3_storage_options)
    status = location.read_json("run.json")
    assert status["status"] == "failed" and status["error"]["type"] == "RunStorageError"
    proxy.policy = lambda method, path: "pass"
    rc, out, err = run_cli(config, "-q")
    assert rc == 0, err
    assert location.read_json("run.json")["status"] == "complete"


def test_a_resumed_run_on_s3_counts_what_its_tasks_wrote(small_archive, tmp_path, s3_storage_options):
    """Killed part-way, an input file deleted, resumed: the summary and failures.parquet read every marker
    the resumed tasks wrote. The driver's s3fs listing cache once hid the markers that worker processes
    wrote: "48 clips (40 failed)", 6 detections of 30, 0 failures, status complete."""
    archive = tmp_path / "archive"
    shutil.copytree(small_archive, archive)
    s3_bucket(s3_storage_options, "resume-counts")
    config = write_config(tmp_path / "run.yaml", archive, "s3://resume-counts/run", s3_storage_options,
                          processes=True)
    location = OutputLocation("s3://resume-counts/run", s3_storage_options)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "-q", "run", str(config), "--no-progress"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(location.list("_progress/spectrograms")) >= 2:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(location.list("_progress/spectrograms"))
    inventory = location.read_parquet("inventory.parquet")
    assert 0 < done < 12, done  # 48 clips, 4 per task
    victim = sorted(inventory.file)[-1]  # the last file: its clips are in tasks that had not run
    os.unlink(victim)
    rc, out, err = run_cli(config, "-q")
    assert rc == 0, err
    summary = location.read_json("run.json")["summary"]
    failures = location.read_parquet("failures.parquet")
    scores = location.read_parquet_folder("scores/detector=ribbit:frog")
    detections = location.read_parquet_folder("detections")
    assert summary["status"] == "complete_with_failures"
    assert summary["n_clips"] == 48 and summary["n_clips_failed"] == 12 == 48 - len(scores)
    assert failures.item.str.startswith(f"{victim} clips ").sum() >= 1  # its lost clips are named
    assert summary["detections"]["ribbit:frog"] == len(detections)
    assert summary["n_failures"] == len(failures)


def test_verbose_logs_show_no_credentials(small_archive, tmp_path, s3_server_with_auth):
    endpoint, key, secret = s3_server_with_auth
    options = {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}
    s3_bucket(options, "verbose")
    config = write_config(tmp_path / "run.yaml", small_archive, "s3://verbose/run", options)
    rc, out, err = run_cli(config, "-v")
    assert rc == 0, err[-3000:]
    assert "Credential=***/" in err  # botocore's signed headers are in the debug log ...
    assert key not in err and secret not in err and key not in out  # ... without the key id or the secret


def _mount_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


@pytest.mark.skipif(os.name != "posix" or not shutil.which("mount"), reason="needs mount(8)")
def test_a_full_disk_ends_the_run_cleanly_and_the_resume_finishes_it(small_archive, tmp_path):
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "300k"):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        cfg = yaml.safe_load(write_config(tmp_path / "x.yaml", small_archive, str(disk / "run"), {}).read_text())
        cfg["spectrogram"]["store"] = "full"  # float32 chunks: fills 300 kB quickly
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(cfg))
        rc, out, err = run_cli(config, "-q")
        assert rc == 4, err  # tasks or the driver hit the full disk: the storage failed during the run
        assert "No space left on device" in err
        leftovers = [str(p) for p in disk.rglob("*") if ".tmp-" in p.name]
        assert leftovers == []  # every failed write removed its temporary, which freed the space run.json needs
        status = json.loads((disk / "run" / "run.json").read_text())
        assert status["status"] in ("incomplete", "failed"), status["status"]
        if (disk / "run" / "detections").exists():
            pd.read_parquet(disk / "run" / "detections")  # readable: no 0-byte part
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        rc, out, err = run_cli(config, "-q")
        assert rc == 0, err
        status = json.loads((disk / "run" / "run.json").read_text())
        assert status["status"] == "complete" and len(status["sessions"]) == 2
        scores = pd.read_parquet(disk / "run" / "scores" / "detector=ribbit:frog")
        assert len(scores) == 48 and not scores.duplicated(["file", "start_time"]).any()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
