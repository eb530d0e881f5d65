"""Waiting for Dask futures without waiting forever, and without holding on to finished work."""

from __future__ import annotations

import time

__all__ = ["WATCH_INTERVAL_S", "wait_for_futures"]

#: seconds between calls of the cluster watch while waiting
WATCH_INTERVAL_S = 2.0


def wait_for_futures(futures: dict, on_done, *, watch=None, tick=None, poll_s: float = 0.05,
                     first_poll_s: float = 0.002) -> None:
    """Wait until every future in ``futures`` has finished, calling ``on_done(future, label)`` for each.

    ``futures`` maps each future to a label and is emptied as futures finish: with no reference
    left on the driver, Dask forgets a finished result, so losing a worker later does not make the
    scheduler compute it again. ``watch`` (e.g. :meth:`pipelines.cluster.ClusterSession.check`)
    is called every :data:`WATCH_INTERVAL_S` seconds and stops the wait by raising; ``tick`` is
    called while nothing finishes (progress lines). While nothing finishes the wait between looks
    grows from ``first_poll_s`` to ``poll_s`` (seconds), so short tasks (a threshold re-derived from
    stored scores takes milliseconds) are not waited for longer than they ran.
    """
    from distributed import as_completed

    pending = as_completed(list(futures))
    last_watch = time.monotonic()
    sleep_s = first_poll_s
    while not pending.is_empty():
        batch = pending.next_batch(block=False)
        now = time.monotonic()
        if watch is not None and now - last_watch >= WATCH_INTERVAL_S:
            watch()
            last_watch = now
        if not batch:
            if tick is not None:
                tick()
            time.sleep(sleep_s)
            sleep_s = min(poll_s, sleep_s * 2)
            continue
        sleep_s = first_poll_s
        for fut in batch:
            label = futures.pop(fut)
            on_done(fut, label)
            fut.release()
        del batch
