import logging

import pytest

from pipelines.config import ClusterConfig
from pipelines.driver.cluster import (
    ClusterSession,
    check_cluster_settings,
    job_script,
    jobqueue_kwargs,
    open_cluster,
)
from pipelines.errors import ClusterError, ConfigError


def test_existing_scheduler_address():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        with open_cluster(ClusterConfig(), kind=cluster.scheduler_address) as session:
            assert session.client.submit(sum, [1, 2, 3]).result() == 6
            assert session.n_workers() == 1
            session.check()
        assert cluster.status.name == "running"  # an external scheduler is left running


def test_local_cluster_sized_by_settings():
    settings = ClusterConfig(n_workers=1, threads_per_worker=1, processes=False)
    with open_cluster(settings) as session:
        workers = session.client.scheduler_info()["workers"]
        assert len(workers) == 1 and next(iter(workers.values()))["nthreads"] == 1


@pytest.mark.parametrize(("kind", "needle"), [("kubernetes", "unknown cluster kind"),
                                              ("gateway://host:80", "not a Dask scheduler address")])
def test_unknown_kinds_fail_before_starting_anything(kind, needle):
    with pytest.raises(ConfigError, match=needle):
        check_cluster_settings(ClusterConfig(), kind)
    with pytest.raises(ConfigError, match=needle), open_cluster(ClusterConfig(), kind=kind):
        pass


def test_unreachable_scheduler_is_a_cluster_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"), \
            open_cluster(ClusterConfig(connect_timeout_s=1), kind=f"tcp://127.0.0.1:{port}"):
        pass


@pytest.mark.parametrize(("settings", "needle"), [
    (ClusterConfig(kind="slurm"), "cluster.n_workers"),
    (ClusterConfig(kind="slurm", n_workers=2), "cluster.memory_limit"),
    (ClusterConfig(kind="pbs", n_workers=2, memory_limit="2GiB", jobqueue={"no_such_option": 1}), "no_such_option"),
])
def test_hpc_settings_are_checked_before_submitting(settings, needle):
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(ConfigError, match=needle):
        check_cluster_settings(settings)


def test_jobqueue_keys_that_opso_maps_are_refused():
    with pytest.raises(ValueError, match="cluster.threads_per_worker instead of jobqueue.cores"):
        ClusterConfig(kind="slurm", jobqueue={"cores": 4})


def test_cluster_settings_reach_the_job_script(monkeypatch):
    pytest.importorskip("dask_jobqueue")
    settings = ClusterConfig(kind="slurm", n_workers=3, threads_per_worker=2, memory_limit="3GiB",
                             jobqueue={"queue": "long", "walltime": "01:30:00",
                                       "job_script_prologue": ["module load ffmpeg"]})
    kwargs = jobqueue_kwargs(settings, "slurm")
    assert (kwargs["cores"], kwargs["processes"], kwargs["memory"]) == (2, 1, "3GiB")
    script = job_script(settings, "slurm")
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH -p long" in script and "#SBATCH -t 01:30:00" in script
    assert "export OMP_NUM_THREADS=1" in script and "module load ffmpeg" in script
    assert "--nthreads 2 --memory-limit 3.00GiB" in script and "--nworkers" not in script  # one worker per job


def test_missing_submit_command_is_reported(monkeypatch):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ClusterError, match="'qsub', which is not on the PATH"):
        check_cluster_settings(ClusterConfig(kind="pbs", n_workers=1, memory_limit="1GiB"))


def test_no_workers_timeout_stops_the_watch(caplog):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        session = ClusterSession(client, "address", ClusterConfig(no_workers_timeout_s=0.2))
        session.check()  # just started: not yet
        import time

        time.sleep(0.3)
        with pytest.raises(ClusterError, match="no Dask worker has been connected for"):
            session.check()


def test_no_workers_timeout_defaults_by_kind():
    settings = ClusterConfig()
    assert settings.default_no_workers_timeout_s("local") == 120
    assert settings.default_no_workers_timeout_s("slurm") == 3600
    assert settings.default_no_workers_timeout_s("tcp://h:1") == 600
    assert ClusterConfig(no_workers_timeout_s=5).default_no_workers_timeout_s("slurm") == 5
    logging.getLogger(__name__).debug("defaults checked")


def _listening_addresses(port: int) -> set[str]:
    """The local addresses (IPv4 dotted, or 'ipv6') that listen on ``port``, from /proc/net/tcp*."""
    import socket
    import struct

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            if len(address) == 8:
                found.add(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
            else:
                found.add("ipv6-any" if set(address) == {"0"} else "ipv6")
    return found


@pytest.mark.skipif(not __import__("os").path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
def test_a_local_dashboard_listens_on_loopback_only():
    """The dashboard and the workers' pages show logs and file names without a password: this machine only,
    unless cluster.dashboard_address opens them."""
    settings = ClusterConfig(n_workers=1, threads_per_worker=1, processes=True)
    with open_cluster(settings) as session:
        info = session.client.scheduler_info()
        ports = [info["services"]["dashboard"]] + [w["services"]["dashboard"] for w in info["workers"].values()]
        assert len(ports) == 2
        for port in ports:
            assert _listening_addresses(port) == {"127.0.0.1"}, port
        assert session.dashboard_link == f"http://127.0.0.1:{ports[0]}/status"
    opened = ClusterConfig(n_workers=1, processes=False, dashboard_address=":0")
    with open_cluster(opened) as session:
        port = session.client.scheduler_info()["services"]["dashboard"]
        assert _listening_addresses(port) & {"0.0.0.0", "ipv6-any"}


@pytest.mark.parametrize(("listed", "expected"), [("0,2", ["0", "2"]), ("", []), ("-1", []),
                                                  ("GPU-5a1c,GPU-77e0", ["GPU-5a1c", "GPU-77e0"])])
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch, listed, expected):
    from pipelines.driver.cluster import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == expected


def test_local_gpu_workers_by_settings(monkeypatch, caplog):
    from pipelines.driver.cluster import local_gpu_devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert local_gpu_devices(ClusterConfig()) == ["1", "3"]  # auto: every visible GPU
    assert local_gpu_devices(ClusterConfig(), gpu_work=False) == []  # auto, and no CNN to run: none
    assert local_gpu_devices(ClusterConfig(gpus=1)) == ["1"]
    assert local_gpu_devices(ClusterConfig(gpus=0)) == []
    assert local_gpu_devices(ClusterConfig(processes=False)) == []  # threads share one process
    with pytest.raises(ConfigError, match="3 GPUs asked for, 2 visible"):
        check_cluster_settings(ClusterConfig(gpus=3))
    with pytest.raises(ConfigError, match="need their own processes"):
        check_cluster_settings(ClusterConfig(gpus=1, processes=False))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level(logging.WARNING, logger="pipelines.driver.cluster"):
        assert local_gpu_devices(ClusterConfig(gpus=2)) == ["0", "1"]  # a GPU layout tried out on a CPU
    assert "no NVIDIA GPU is visible" in caplog.text
    with pytest.raises(ValueError, match="from 0 to 64"):
        ClusterConfig(gpus=-1)


def test_a_local_cluster_starts_one_worker_per_gpu(monkeypatch):
    """Each GPU worker is its own process seeing only its GPU, with the GPU resource; the CPU workers
    keep the rest (here two stand-in GPUs on a CPU machine)."""
    import os

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    settings = ClusterConfig(n_workers=1, threads_per_worker=1, gpus=2)
    with open_cluster(settings) as session:
        workers = session.client.scheduler_info(n_workers=-1)["workers"]
        by_name = {w["name"]: (address, w) for address, w in workers.items()}
        assert sorted(by_name) == ["cpu-0", "gpu-0", "gpu-1"]
        seen = session.client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("OMP_NUM_THREADS")))
        for name, device in (("gpu-0", "0"), ("gpu-1", "1")):
            address, info = by_name[name]
            assert info["resources"] == {"GPU": 1} and seen[address] == (device, "1")
        assert not by_name["cpu-0"][1].get("resources")
        assert all(address.startswith("tcp://127.0.0.1:") for address in workers)
        from distributed.worker_memory import parse_memory_limit

        # LocalCluster's share of the memory: the machine's over the workers, GPU workers counted
        assert {w["memory_limit"] for w in workers.values()} == {parse_memory_limit("auto", 1, 3, logger=logging.getLogger(__name__))}


def test_slurm_gpu_jobs_ask_for_a_gpu_and_start_gpu_workers():
    pytest.importorskip("dask_jobqueue")
    settings = ClusterConfig(kind="slurm", n_workers=2, threads_per_worker=4, memory_limit="8GiB", gpus=1,
                             jobqueue={"queue": "gpu", "worker_extra_args": ["--lifetime", "55m"]})
    script = job_script(settings, "slurm")
    assert "#SBATCH --gres=gpu:1" in script
    assert "--resources GPU=1" in script and "--lifetime 55m" in script
    own = ClusterConfig(kind="slurm", n_workers=1, memory_limit="8GiB", gpus=1,
                        jobqueue={"job_extra_directives": ["--gpus=a100:1"]})
    assert "--gres" not in job_script(own, "slurm") and "#SBATCH --gpus=a100:1" in job_script(own, "slurm")
    assert "--gres" not in job_script(ClusterConfig(kind="slurm", n_workers=1, memory_limit="8GiB"), "slurm")
    scratch = ClusterConfig(kind="slurm", n_workers=1, memory_limit="8GiB", gpus=1,
                            jobqueue={"job_extra_directives": ["--gres=lscratch:100"],
                                      "worker_extra_args": ["--resources", "MEM=1e9"]})
    script = job_script(scratch, "slurm")  # a --gres that is no GPU still gets the GPU; the user's resources stay
    assert "#SBATCH --gres=lscratch:100" in script and "#SBATCH --gres=gpu:1" in script
    assert "--resources MEM=1e9,GPU=1" in script and script.count("--resources") == 1
    with pytest.raises(ConfigError, match="set gpus: 1 and n_workers"):
        check_cluster_settings(ClusterConfig(kind="slurm", n_workers=1, memory_limit="8GiB", gpus=2))
    with pytest.raises(ConfigError, match="on pbs, ask for the GPU"):
        check_cluster_settings(ClusterConfig(kind="pbs", n_workers=1, memory_limit="8GiB", gpus=1))
