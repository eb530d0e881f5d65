"""The example HPC configurations load, and their job scripts carry the settings."""

import subprocess
from pathlib import Path

import pytest

from pipelines.config import load_config

DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_example_configuration(kind):
    pytest.importorskip("dask_jobqueue")
    from pipelines.cluster import job_script

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
