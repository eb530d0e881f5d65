import pytest

from pipelines.cluster import make_client
from pipelines.config import ClusterConfig
from pipelines.errors import ConfigError


def test_existing_scheduler_address():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        with make_client(ClusterConfig(), kind=cluster.scheduler_address) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
        assert cluster.status.name == "running"  # an external scheduler is left running


def test_local_cluster_sized_by_settings():
    settings = ClusterConfig(n_workers=1, threads_per_worker=1, processes=False)
    with make_client(settings) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1 and next(iter(workers.values()))["nthreads"] == 1


def test_unknown_kind():
    with pytest.raises(ConfigError, match="unknown cluster kind"), make_client(ClusterConfig(kind="kubernetes")):
        pass
