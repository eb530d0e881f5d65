"""Which workers have a GPU, and keeping CPU-only tasks off them.

Workers started with ``--resources GPU=1`` are GPU workers; tasks that can use a GPU carry
``{"GPU": 1}``. A stage that must stay off GPU workers (``Stage.cpu_only``) gets the ``opso-cpu``
resource, which opso gives the other workers (:func:`cpu_only_resources`, kept current for workers
that join later by :func:`retagging`).
"""

from __future__ import annotations

import time

__all__ = ["CPU_RESOURCE", "cpu_only_resources", "retagging", "workers_by_kind"]


def workers_by_kind(client) -> tuple[list[str], list[str]]:
    """Addresses of the workers with the ``GPU`` resource and of the others."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpu = [a for a, w in workers.items() if "GPU" in (w.get("resources") or {})]
    return gpu, [a for a in workers if a not in gpu]


#: Dask resource opso gives the workers without ``GPU`` when a stage must stay off GPU workers
CPU_RESOURCE = "opso-cpu"


async def _tag_cpu_worker(dask_worker) -> None:
    await dask_worker.set_resources(**{CPU_RESOURCE: dask_worker.state.nthreads})


def cpu_only_resources(client) -> dict | None:
    """Resources that keep a task off GPU workers: when the cluster has workers with and without the
    ``GPU`` resource, the others are given ``opso-cpu`` (one per thread) and ``{"opso-cpu": 1}`` is
    returned; None when no restriction is needed (no GPU worker) or possible (only GPU workers)."""
    gpu, cpu = workers_by_kind(client)
    if not cpu or not gpu:
        return None
    client.run(_tag_cpu_worker, workers=cpu)
    return {CPU_RESOURCE: 1}


def retagging(watch, client, every_s: float = 10.0):
    """``watch``, plus: every ``every_s`` seconds give CPU workers that joined or restarted since the
    tasks were submitted their ``opso-cpu`` resource, so CPU-only tasks never wait for a tag."""
    last = [time.monotonic()]

    def check():
        watch()
        if time.monotonic() - last[0] >= every_s:
            last[0] = time.monotonic()
            cpu_only_resources(client)

    return check
