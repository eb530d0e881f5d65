"""opso_core.prefetch: work ahead in threads, in order, with bounded look-ahead; no torch."""

import subprocess
import sys

import pytest

from opso_core.errors import OpsoValueError


def test_prefetched_keeps_order_and_bounds_look_ahead():
    import threading
    import time

    from opso_core.prefetch import one_ahead, prefetched

    started, lock = [], threading.Lock()

    def slow_square(x):
        with lock:
            started.append(x)
        time.sleep(0.02 * (x % 3))  # later items can finish first
        return x * x

    out = []
    for value in prefetched(slow_square, range(10), threads=3):
        with lock:
            assert len(started) <= len(out) + 4  # the one yielded plus at most threads + 1 waiting
        out.append(value)
    assert out == [x * x for x in range(10)]
    assert list(one_ahead(x * 2 for x in range(4))) == [0, 2, 4, 6]


def test_prefetched_raises_at_the_failing_item_and_rejects_zero_threads():
    from opso_core.prefetch import prefetched

    def f(x):
        if x == 2:
            raise KeyError(x)
        return x

    got = []
    with pytest.raises(KeyError):
        for value in prefetched(f, range(5), threads=2):
            got.append(value)
    assert got == [0, 1]
    with pytest.raises(OpsoValueError, match="at least 1"):
        list(prefetched(f, range(3), threads=0))


def test_a_birdnet_worker_does_not_import_torch():
    """BirdNET's stage and everything it imports leave torch out (400 MB of a CPU worker's memory)."""
    code = ("import sys, pipelines.stages, pipelines.stages.birdnet, pipelines.birdnet.windows, opso_core.prefetch, "
            "opso_core.audio, pipelines.outputs.embedding_store; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
