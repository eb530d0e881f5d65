"""Dask clusters by kind: one ``make_client(settings)`` over a small registry.

``local`` starts a LocalCluster sized to the machine; ``slurm``/``pbs`` start dask-jobqueue clusters
(queue, cores, memory come from the YAML's ``cluster.jobqueue`` or Dask's own jobqueue config);
anything else is taken as a scheduler address (``tcp://host:8786``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os

from opso_core.errors import missing_dependency
from pipelines.config import ClusterConfig
from pipelines.errors import ConfigError

__all__ = ["JOBQUEUE_CLUSTERS", "make_client"]

logger = logging.getLogger(__name__)

#: cluster kind -> "module:class" of its dask-jobqueue implementation (imported lazily)
JOBQUEUE_CLUSTERS = {"slurm": "dask_jobqueue:SLURMCluster", "pbs": "dask_jobqueue:PBSCluster"}

# numeric libraries each start a thread per core by default; with one Dask thread per core that
# oversubscribes the machine, so workers get one thread each unless the user chose otherwise
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_threads():
    for var in _THREAD_VARS:
        os.environ.setdefault(var, "1")


@contextlib.contextmanager
def make_client(settings: ClusterConfig, kind: str | None = None):
    """A connected ``distributed.Client`` for ``settings`` (``kind`` overrides ``settings.kind``).

    The cluster the client started is closed on exit; an external scheduler is left running.
    """
    from distributed import Client, LocalCluster

    kind = kind or settings.kind
    if kind == "local":
        _limit_threads()
        n_workers = settings.n_workers or max(1, (os.cpu_count() or 1) // settings.threads_per_worker)
        kwargs = dict(n_workers=n_workers, threads_per_worker=settings.threads_per_worker,
                      processes=settings.processes, dashboard_address=":0")
        if settings.memory_limit:
            kwargs["memory_limit"] = settings.memory_limit
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            yield client
    elif kind in JOBQUEUE_CLUSTERS:
        module, cls = JOBQUEUE_CLUSTERS[kind].split(":")
        try:
            cluster_cls = getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            raise missing_dependency("dask_jobqueue", "hpc") from exc
        with cluster_cls(**settings.jobqueue) as cluster:
            cluster.scale(jobs=settings.n_workers or 1)
            with Client(cluster) as client:
                yield client
    elif "://" in kind or ":" in kind:
        with Client(kind) as client:
            yield client
    else:
        raise ConfigError(f"cluster.kind: unknown cluster kind {kind!r}; use local, slurm, pbs or a "
                          "scheduler address such as tcp://host:8786")
