"""docker-compose.yml for real: the images build from deploy/docker/Dockerfile, the stack comes up
(scheduler, two CPU workers, S3 with a bucket), the one-shot `opso` service runs a RIBBIT run and a BirdNET
run (the images carry the birdnet extra) from mounted configs against the bucket, their tables equal local
runs', and the Jupyter service executes every notebook against the RIBBIT run (about 4 to 8 minutes
here, most of it building the three images).

MinIO's image cannot be pulled where CI runs, so tests/integration/compose/docker-compose.moto.yml
puts moto's S3 server (built from the opso image) in its place. Needs a running Docker engine,
docker-compose, and a base image: ``OPSO_DOCKER_BASE_IMAGE`` (``.ci/run`` builds a Debian one with
debootstrap and exports it) or a local ``python:3.11-slim``. Skipped with the reason otherwise.
Builds install opso's pipeline, s3 and birdnet extras with pip inside the image (package registries must be
reachable); a CA bundle in ``$PIP_CERT`` is handed to the build as deploy/docker/certs/pip.pem.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
OVERRIDE = Path(__file__).parent / "compose" / "docker-compose.moto.yml"
#: the images' extras: RIBBIT's and BirdNET's (no torch)
EXTRAS = "pipeline,s3,birdnet"
SPECIES = [{"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
            "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02}]


def _ok(*cmd) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _sh(*cmd, env=None, timeout=1200, cwd=REPO) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc.stdout


def _base_image() -> str:
    if not (shutil.which("docker") and shutil.which("docker-compose")):
        pytest.skip("docker and docker-compose are not installed (CI installs them: .ci/run)")
    if not _ok("docker", "info"):
        pytest.skip("no Docker engine answers `docker info` (start dockerd; .ci/run does)")
    base = os.environ.get("OPSO_DOCKER_BASE_IMAGE", "python:3.11-slim")
    if not _ok("docker", "image", "inspect", base):
        pytest.skip(f"base image {base} is not on this engine (registries unreachable: set OPSO_DOCKER_BASE_IMAGE "
                    "to a local image, as .ci/run does)")
    return base


def _build_context(root: Path) -> Path:
    """What the Dockerfile copies, the CA bundle pip trusts on this machine (if any), and a wheelhouse
    downloaded by this machine's pip (its mirrors are much faster than PyPI from inside a build)."""
    context = root / "context"
    for name in ("pyproject.toml", "README.md", "requirements/constraints.txt"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.whl", "pip.pem")
    for folder in ("opso_core", "pipelines", "deploy/docker"):
        shutil.copytree(REPO / folder, context / folder, ignore=ignore)
    cert = os.environ.get("PIP_CERT")
    if cert and Path(cert).is_file():
        shutil.copy(cert, context / "deploy/docker/certs/pip.pem")
    wheels = context / "deploy/docker/wheels"
    # for the oldest Python 3.11 a base may have (Debian bookworm's 3.11.2): newer wheels may refuse it
    _sh(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", "3.11.2",
        "-d", str(wheels), "-c", str(REPO / "requirements/constraints.txt"), f"{REPO}[pipeline,s3,notebooks,birdnet]",
        "moto[server]>=5", "setuptools>=77", "wheel", timeout=900)
    for own in wheels.glob("opso-*"):  # opso itself is built from the copied sources
        own.unlink()
    return context


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(input_url, output_url, storage_options, cluster="local") -> dict:
    return {"input": {"url": input_url, "storage_options": storage_options},
            "output": {"url": output_url, "storage_options": storage_options},
            "clips": {"duration": 2.0}, "spectrogram": {"sample_rate": 16000, "clips_per_chunk": 8},
            "ribbit": SPECIES, "cluster": {"kind": cluster}}


def _comparable(tables: dict, root: str) -> dict:
    """The tables with paths relative to the archive's root, and error messages (which quote the path
    and the reader's object) reduced to their error type."""
    out = {}
    for name, df in tables.items():
        df = df.copy()
        for column in ("file", "item"):
            if column in df:
                df[column] = df[column].str.replace(root.rstrip("/") + "/", "", regex=False)
        if "error" in df:
            df["error"] = df["error"].str.split(":").str[0]
        df = df.drop(columns=[c for c in ("message", "modified", "mtime", "modified_time") if c in df])
        out[name] = df.sort_values(list(df.columns[:2])).reset_index(drop=True) if len(df) else df
    return out


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory):
    base = _base_image()
    root = tmp_path_factory.mktemp("compose")
    tag = uuid.uuid4().hex[:8]
    images = {"OPSO_IMAGE": f"opso-test:{tag}", "OPSO_NOTEBOOK_IMAGE": f"opso-notebook-test:{tag}",
              "OPSO_TEST_MOTO_IMAGE": f"opso-moto-test:{tag}"}
    context = _build_context(root)
    started = time.perf_counter()
    try:
        _sh("docker", "build", "--force-rm", "--network", "host", "-f", "deploy/docker/Dockerfile", "--target", "runtime",
            "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"OPSO_EXTRAS={EXTRAS}",
            "-t", images["OPSO_IMAGE"], ".", cwd=context)
        _sh("docker", "build", "--force-rm", "--network", "host", "-f", "deploy/docker/Dockerfile", "--target",
            "notebook", "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"OPSO_EXTRAS={EXTRAS}",
            "-t", images["OPSO_NOTEBOOK_IMAGE"], ".", cwd=context)
        _sh("docker", "build", "--force-rm", "--network", "host", "-f", str(OVERRIDE.parent / "Dockerfile.moto"),
            "--build-arg", f"OPSO_IMAGE={images['OPSO_IMAGE']}", "-t", images["OPSO_TEST_MOTO_IMAGE"], ".",
            cwd=context)
        build_s = time.perf_counter() - started
        (root / "config").mkdir()
        (root / "data").mkdir()
        env = dict(os.environ, **images, COMPOSE_PROJECT_NAME=f"opsotest{tag}", S3_PORT=str(_free_port()),
                   S3_CONSOLE_PORT=str(_free_port()), DASK_SCHEDULER_PORT=str(_free_port()),
                   DASK_DASHBOARD_PORT=str(_free_port()), JUPYTER_PORT=str(_free_port()),
                   OPSO_CONFIG_DIR=str(root / "config"),
                   OPSO_DATA_DIR=str(root / "data"), S3_BUCKET="opso")
        compose = ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "-f", str(OVERRIDE)]
        try:
            _sh(*compose, "up", "-d", "--no-build", "--scale", "worker=2", "scheduler", "worker", "s3", env=env)
            _sh(*compose, "run", "--rm", "--no-deps", "s3-bucket", env=env, timeout=300)
            yield {"compose": compose, "env": env, "root": root, "build_s": build_s,
                   "endpoint": f"http://127.0.0.1:{env['S3_PORT']}"}
        finally:
            logs = subprocess.run([*compose, "logs", "--no-color"], capture_output=True, text=True, env=env,
                                  cwd=REPO).stdout
            (root / "compose.log").write_text(logs)
            subprocess.run([*compose, "--profile", "run", "down", "-v", "--remove-orphans", "--timeout", "5"],
                           capture_output=True, env=env, cwd=REPO, timeout=300)
    finally:
        subprocess.run(["docker", "image", "rm", "-f", *images.values()], capture_output=True, timeout=300)


def test_one_shot_run_on_the_stack_equals_a_local_run(compose_stack, archive, dask_client, run_tables):
    import s3fs

    from pipelines.config import load_config
    from pipelines.driver.run import run_pipeline

    env = compose_stack["env"]
    host_options = {"key": "opso", "secret": "opso-secret-key",
                    "client_kwargs": {"endpoint_url": compose_stack["endpoint"], "region_name": "us-east-1"}}
    fs = s3fs.S3FileSystem(**host_options)
    fs.put(str(archive.root) + "/", "opso/archive/", recursive=True)
    in_stack = {"client_kwargs": {"endpoint_url": "http://s3:9000"}}
    config = _config("s3://opso/archive", "s3://opso/runs/compose", in_stack)
    (compose_stack["root"] / "config" / "ribbit.yaml").write_text(yaml.safe_dump(config))

    started = time.perf_counter()
    out = _sh(*compose_stack["compose"], "run", "--rm", "opso", "run", "/config/ribbit.yaml", "--no-progress",
              env=env, timeout=900)
    run_s = time.perf_counter() - started
    print(f"images built in {compose_stack['build_s']:.0f} s; the compose run took {run_s:.0f} s")
    assert "opso: error" not in out

    downloaded = compose_stack["root"] / "downloaded"
    fs.get("opso/runs/compose/", str(downloaded) + "/", recursive=True)
    local_out = compose_stack["root"] / "local"
    run_pipeline(load_config(_config(str(archive.root), str(local_out), {}), environ={}), dask_client,
                 progress=False)
    got = _comparable(run_tables(downloaded), "s3://opso/archive")
    expected = _comparable(run_tables(local_out), str(archive.root))
    assert len(expected["scores"]) == 100 and len(expected["detections"]) > 0 and len(expected["failures"]) == 4
    for name in ("inventory", "failures", "scores", "detections"):
        pd.testing.assert_frame_equal(got[name], expected[name], obj=name)

    status = subprocess.run([*compose_stack["compose"], "ps", "-q", "worker"], capture_output=True, text=True,
                            env=env, cwd=REPO).stdout.split()
    assert len(status) == 2  # both workers still up after the run


def test_birdnet_run_on_the_stack_equals_a_local_run(compose_stack, archive, dask_client):
    """The BirdNET stage in the containers (the model from the image's birdnet extra): the same scores,
    detections and failures as a local run of the same configuration."""
    import s3fs

    from pipelines.config import load_config
    from pipelines.driver.run import run_pipeline
    from pipelines.outputs.location import OutputLocation

    env = compose_stack["env"]
    host_options = {"key": "opso", "secret": "opso-secret-key",
                    "client_kwargs": {"endpoint_url": compose_stack["endpoint"], "region_name": "us-east-1"}}
    fs = s3fs.S3FileSystem(**host_options)
    if not fs.exists("opso/birdnet-archive/"):
        fs.put(str(archive.root) + "/", "opso/birdnet-archive/", recursive=True)

    def birdnet_config(input_url, output_url, storage_options):
        return {"input": {"url": input_url, "storage_options": storage_options},
                "output": {"url": output_url, "storage_options": storage_options},
                "spectrogram": {"store": "none"},
                "birdnet": [{"name": "birds", "threshold": 0.05, "windows_per_task": 8, "embeddings": True}],
                "cluster": {"kind": "local"}}

    in_stack = {"client_kwargs": {"endpoint_url": "http://s3:9000"}}
    (compose_stack["root"] / "config" / "birds.yaml").write_text(
        yaml.safe_dump(birdnet_config("s3://opso/birdnet-archive", "s3://opso/runs/birds", in_stack)))
    out = _sh(*compose_stack["compose"], "run", "--rm", "opso", "run", "/config/birds.yaml", "--no-progress",
              env=env, timeout=900)
    assert "opso: error" not in out

    local_out = compose_stack["root"] / "birds-local"
    run_pipeline(load_config(birdnet_config(str(archive.root), str(local_out), {}), environ={}), dask_client,
                 progress=False)

    def tables(location, root):
        key = ["file", "start_time", "class"]
        got = {"scores": location.read_parquet_folder("scores/detector=birdnet:birds"),
               "detections": location.read_parquet_folder("detections"),
               "failures": location.read_parquet("failures.parquet")}
        got = _comparable(got, root)
        return {name: (df.sort_values(key, ignore_index=True) if "class" in df else df) for name, df in got.items()}

    remote = tables(OutputLocation("s3://opso/runs/birds", host_options), "s3://opso/birdnet-archive")
    local = tables(OutputLocation(str(local_out)), str(archive.root))
    assert len(local["scores"]) > 0 and len(local["failures"]) > 0  # the archive's broken files
    for name in ("scores", "detections", "failures"):
        pd.testing.assert_frame_equal(remote[name], local[name], obj=name)
    assert fs.exists("opso/runs/birds/embeddings.zarr/birdnet-birds/.zmetadata")


def test_jupyter_serves_and_the_notebooks_read_the_run_in_the_bucket(compose_stack):
    """After the run above (same module): the Jupyter service answers, and every notebook executes
    inside it against the run in the stack's bucket (s3:// reaches it through the service's environment)."""
    import json
    import urllib.request

    compose, env = compose_stack["compose"], compose_stack["env"]
    _sh(*compose, "up", "-d", "--no-build", "--no-deps", "jupyter", env=env)
    url = f"http://127.0.0.1:{env['JUPYTER_PORT']}/api/status?token=opso"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert "started" in json.loads(response.read())
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    notebooks = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    script = " && ".join(f"jupyter nbconvert --to notebook --execute notebooks/{name} --output-dir /tmp/executed"
                         for name in notebooks)
    _sh(*compose, "exec", "-T", "-e", "OPSO_RUN=s3://opso/runs/compose", "jupyter", "sh", "-c", script, env=env,
        timeout=600)
    executed = _sh(*compose, "exec", "-T", "jupyter", "ls", "/tmp/executed", env=env).split()
    assert sorted(executed) == notebooks
