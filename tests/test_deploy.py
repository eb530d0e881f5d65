"""The example HPC configurations load, and their job scripts carry the settings."""

import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config

DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_example_configuration(kind):
    pytest.importorskip("dask_jobqueue")
    from pipelines.driver.cluster import job_script

    config = load_config(DEPLOY / kind / "frogs.yaml", environ={})
    assert config.cluster.kind == kind and config.cluster.n_workers == 16
    script = job_script(config.cluster, kind)
    assert "export OMP_NUM_THREADS=1" in script and "--nthreads 2" in script and "--memory-limit 8.00GiB" in script
    assert ("#SBATCH -p normal" if kind == "slurm" else "#PBS -q workq") in script


@pytest.mark.parametrize("script", ["slurm/run-opso.sbatch", "pbs/run-opso.pbs"])
def test_driver_scripts_are_valid_bash(script):
    path = DEPLOY / script
    assert path.stat().st_mode & 0o111, "not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert "exec opso run" in path.read_text()


def test_compose_file_services_and_profiles():
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"scheduler", "worker", "gpu-worker", "s3", "s3-bucket", "jupyter", "opso"} <= set(services)
    assert services["gpu-worker"]["profiles"] == ["gpu"] and "GPU=1" in services["gpu-worker"]["command"]
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["opso"]["profiles"] == ["run"] and services["opso"]["entrypoint"] == ["opso"]
    assert services["opso"]["environment"]["OPSO__CLUSTER__KIND"] == "tcp://scheduler:8786"
    assert services["worker"]["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert services["jupyter"]["build"]["target"] == "notebook"
    for name in ("scheduler", "worker", "opso"):
        assert services[name]["build"]["dockerfile"] == "deploy/docker/Dockerfile"


def test_compose_file_is_valid_for_docker_compose(tmp_path):
    import shutil

    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (CI installs it: .ci/run)")
    out = subprocess.run(["docker-compose", "-f", str(DEPLOY.parent / "docker-compose.yml"), "--profile", "gpu",
                          "--profile", "run", "config", "--services"], capture_output=True, text=True, check=True,
                         cwd=DEPLOY.parent).stdout.split()
    assert sorted(out) == sorted(["scheduler", "worker", "gpu-worker", "s3", "s3-bucket", "jupyter", "opso"])


def test_compose_example_configuration_loads():
    config = load_config(DEPLOY / "compose" / "frogs.yaml", environ={"OPSO__CLUSTER__KIND": "tcp://scheduler:8786"})
    assert config.cluster.kind == "tcp://scheduler:8786"
    assert config.input.url == "s3://opso/archive/" and config.output.url == "s3://opso/runs/frogs/"


def test_birdnet_example_configurations_load():
    slurm = load_config(DEPLOY / "slurm" / "birds.yaml", environ={})
    assert slurm.cluster.kind == "slurm" and slurm.birdnet[0].species.week == "auto"
    compose = load_config(DEPLOY / "compose" / "birds.yaml", environ={"OPSO__CLUSTER__KIND": "tcp://scheduler:8786"})
    assert compose.birdnet[0].name == "birds" and compose.output.url == "s3://opso/runs/birds/"
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "ARG OPSO_EXTRAS=pipeline,s3,hpc,ml,plot,birdnet" in dockerfile


def test_slurm_gpu_example_asks_each_job_for_a_gpu():
    pytest.importorskip("dask_jobqueue")
    from pipelines.driver.cluster import job_script

    config = load_config(DEPLOY / "slurm" / "cnn-gpu.yaml", environ={})
    assert config.cluster.gpus == 1 and config.cnn[0].precision == "float32"
    script = job_script(config.cluster, "slurm")
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script and "#SBATCH -p gpu" in script
