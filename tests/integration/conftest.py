"""Fixtures shared by the end-to-end tests: one synthetic archive for the session."""

import pytest

from opso_core.testing import make_archive, noise, write_bad_files

SR = 16000


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    arch = make_archive(root, n_recorders=3, files_per_recorder=2, file_duration_s=30, sample_rate_hz=SR,
                        frog_calls_per_file=2, seed=0)
    write_bad_files(root / "broken")
    # a recorder at another sample rate: its clips are resampled to SR
    noise(20, 22050, dBFS=-45, seed=5).save(root / "rec22k" / "20240501_060000.WAV")
    return arch




class OneNodeSlurm:
    """A private single-node SLURM (Debian's slurm-wlm + munge) in a temporary folder.

    Its own munge socket and key, its own ports, spool and log folders: it runs beside (and never
    touches) a system SLURM. ``SLURM_CONF`` points the SLURM commands at it while it runs.
    """

    BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")

    def __init__(self, root):
        import socket

        self.root = root
        self.conf = root / "slurm.conf"
        self.procs = []
        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.ports = ports

    def _write_conf(self):
        import os
        import socket

        host = socket.gethostname()
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=opsotest", f"SlurmctldHost={host}", f"SlurmctldPort={self.ports[0]}",
            f"SlurmdPort={self.ports[1]}", "AuthType=auth/munge", f"AuthInfo=socket={r}/munge.socket",
            "CredType=cred/munge", "MpiDefault=none", "ProctrackType=proctrack/linuxproc", "ReturnToService=2",
            "SlurmUser=root", "SlurmdUser=root", f"SlurmdSpoolDir={r}/spool/d", f"StateSaveLocation={r}/spool/ctld",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "SwitchType=switch/none", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill",
            "KillWait=5", "MinJobAge=30",
            f"NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))

    def start(self):
        import os
        import subprocess
        import time

        r = self.root
        for sub in ("spool/d", "spool/ctld", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)
        self._write_conf()
        subprocess.run(["mungekey", "--create", f"--keyfile={r}/munge.key", "--force"], check=True,
                       capture_output=True)
        os.chmod(r / "munge.key", 0o600)
        subprocess.run(["munged", f"--socket={r}/munge.socket", f"--key-file={r}/munge.key",
                        f"--pid-file={r}/munged.pid", f"--log-file={r}/munged.log", f"--seed-file={r}/munged.seed",
                        "--force"], check=True, capture_output=True)
        env = self.env()
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=env, capture_output=True)
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=env, capture_output=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
            if out.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the test SLURM did not come up: {out!r}; see {r}/log")

    def env(self):
        import os

        return dict(os.environ, SLURM_CONF=str(self.conf))

    def jobs(self) -> list[str]:
        import subprocess

        out = subprocess.run(["squeue", "-h", "-o", "%i %t"], env=self.env(), capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.split()[1] in ("R", "PD", "CF")]

    def cancel(self, *job_ids):
        import subprocess

        subprocess.run(["scancel", *job_ids], env=self.env(), check=True)

    def stop(self):
        import os
        import signal
        import subprocess

        subprocess.run(["scancel", "--user=root"], env=self.env(), capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            pidfile = self.root / f"{name}.pid"
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running one-node SLURM for the session (skipped where it cannot be started here)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    missing = [b for b in OneNodeSlurm.BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM is not installed here ({', '.join(missing)} missing; Debian: apt-get install "
                    "slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("starting a private one-node SLURM needs root")
    root = Path(tempfile.mkdtemp(prefix="opso-slurm-", dir="/tmp"))  # short path: munge's socket name limit
    cluster = OneNodeSlurm(root)
    saved = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(root, ignore_errors=True)


def _run_tables(out) -> dict:
    """A run's tables, sorted so that two runs of one configuration compare equal."""
    from pipelines.outputs.location import OutputLocation

    loc = OutputLocation(str(out))
    key = ["file", "start_time"]
    return {
        "inventory": loc.read_parquet("inventory.parquet").sort_values("file").reset_index(drop=True),
        "failures": loc.read_parquet("failures.parquet"),
        "scores": loc.read_parquet_folder("scores").sort_values(key).reset_index(drop=True),
        "detections": loc.read_parquet_folder("detections").sort_values(key).reset_index(drop=True),
    }


@pytest.fixture(scope="session")
def run_tables():
    """``run_tables(output_folder)``: the run's tables as DataFrames (inventory, failures, scores, detections)."""
    return _run_tables


@pytest.fixture(scope="session")
def assert_same_tables():
    """``assert_same_tables(reference_tables, output_folder)``."""
    import pandas as pd

    def check(reference, out):
        got = _run_tables(out)
        for name in reference:
            pd.testing.assert_frame_equal(reference[name], got[name], obj=name)

    return check


class MarkerWatch:
    """Records the content of each task marker under ``root`` when first seen, and any later change
    (a finished task computed again). Scans every few milliseconds in a thread."""

    def __init__(self, root):
        import threading

        self.root = root
        self.first: dict[str, str] = {}
        self.rewritten: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def scan(self):
        for path in self.root.rglob("*.json") if self.root.exists() else []:
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            key = str(path.relative_to(self.root))
            if self.first.setdefault(key, text) != text:
                self.rewritten.add(key)

    def count(self, stage: str) -> int:
        return sum(1 for k in list(self.first) if k.startswith(stage + "/"))

    def _run(self):
        import time

        while not self._stop.is_set():
            self.scan()
            time.sleep(0.005)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.scan()


@pytest.fixture
def marker_watch():
    """``marker_watch(progress_folder)``: a started :class:`MarkerWatch`, stopped after the test."""
    watches = []

    def start(root):
        watches.append(MarkerWatch(root).start())
        return watches[-1]

    yield start
    for watch in watches:
        if watch._thread.is_alive():
            watch.stop()


def run_cli_until_markers(config_path, markers, n_markers: int, timeout_s: float = 120) -> int:
    """Start ``opso run config_path`` in its own session and SIGKILL it (driver and local cluster) once
    ``markers`` (a ``_progress/<stage>`` folder) holds ``n_markers`` files, it ends, or ``timeout_s``
    passes. Returns the number of markers there after the kill."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "-q", "run", str(config_path), "--no-progress"],
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if markers.exists() and len(list(markers.iterdir())) >= n_markers:
                break
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return len(list(markers.iterdir())) if markers.exists() else 0


@pytest.fixture(scope="session")
def kill_run_at_markers():
    """:func:`run_cli_until_markers`."""
    return run_cli_until_markers
