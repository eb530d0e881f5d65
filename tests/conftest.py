"""Shared fixtures: OpenSoundscape's real test recordings (through OPSO_TEST_DATA) and synthetic audio."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def opso_test_data() -> Path:
    """Folder of OpenSoundscape's test resources; the test is skipped when OPSO_TEST_DATA is unset."""
    value = os.environ.get("OPSO_TEST_DATA")
    if not value:
        pytest.skip("OPSO_TEST_DATA is not set (folder of OpenSoundscape's test recordings)")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"OPSO_TEST_DATA={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def test_audio_dir(opso_test_data) -> Path:
    return opso_test_data / "tests" / "audio"


@pytest.fixture(scope="session")
def dask_client():
    """One in-process Dask cluster for the whole test session (two single-threaded workers)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 server (moto) on 127.0.0.1 with dummy credentials; yields its endpoint URL."""
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_storage_options(s3_server):
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server}}


@pytest.fixture(scope="session")
def s3_server_with_auth(tmp_path_factory):
    """A local S3 server (moto, own process) that checks credentials; yields (endpoint, key, secret)
    of a user allowed to use S3."""
    pytest.importorskip("moto.server")
    import shutil
    import socket
    import subprocess
    import sys
    import time

    boto3 = pytest.importorskip("boto3")
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if server is None:
        pytest.skip("moto_server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")  # the 3 IAM calls below, then credentials count
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
        iam.create_user(UserName="ecologist")
        iam.put_user_policy(UserName="ecologist", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ecologist")["AccessKey"]
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
