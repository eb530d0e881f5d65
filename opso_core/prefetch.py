"""Work ahead in threads: the next batch read while this one is analysed (no torch, no Dask).

File reads, FFTs, LiteRT and torch calls release the GIL, so a reading thread and the thread that
runs a model overlap on two cores, or fill the gaps of one.
"""

from __future__ import annotations

import itertools

from opso_core.errors import OpsoValueError

__all__ = ["one_ahead", "prefetched"]


def one_ahead(items, name="opso-prefetch"):
    """Yield the items of an iterable, producing the next one in a thread while the caller works on
    the current one (the next batch is read and preprocessed while the network runs).

    File reads, FFTs and torch operations release the GIL, so the two overlap. Exceptions raised
    while producing an item are raised where that item would have been yielded.
    """
    from concurrent.futures import ThreadPoolExecutor

    iterator = iter(items)
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        pending = pool.submit(next, iterator, end)
        while True:
            item = pending.result()
            if item is end:
                return
            pending = pool.submit(next, iterator, end)
            yield item


def prefetched(function, arguments, *, threads=1, name="opso-prefetch"):
    """Yield ``function(a)`` for each ``a`` of ``arguments``, in order, computed ahead in ``threads`` threads.

    While the caller works on one result, up to ``threads`` of the next are being computed (the
    batches a GPU waits for, prepared on several CPU cores: reading, FFTs and torch operations
    release the GIL). At most ``threads + 1`` results are held at once. An exception raised for an
    item is raised where that item would have been yielded; closing the generator early cancels
    what has not started.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if int(threads) < 1:
        raise OpsoValueError(f"threads must be at least 1, got {threads!r}")
    iterator = iter(arguments)
    pool = ThreadPoolExecutor(max_workers=int(threads), thread_name_prefix=name)
    try:
        pending = deque(pool.submit(function, a) for a in itertools.islice(iterator, int(threads) + 1))
        while pending:
            result = pending.popleft().result()
            for a in itertools.islice(iterator, 1):
                pending.append(pool.submit(function, a))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
