import time

import pytest

from pipelines.driver.bounded import Job, in_flight_limit, run_bounded


def _own(client, prefix):
    """The futures of this test still held by the (session-wide) client."""
    return [key for key in client.futures if str(key).startswith(prefix)]


def _slow_square(x):
    time.sleep(0.01)
    return x * x


def test_a_bounded_number_of_tasks_is_in_flight_and_every_result_comes_back(dask_client):
    pulled, results, most = [0], {}, [0]

    def jobs():
        for i in range(120):
            pulled[0] += 1
            most[0] = max(most[0], pulled[0] - len(results))
            yield Job(_slow_square, (i,), key=f"square-bounded-{i}", label=i)

    def done(batch):
        for fut, label, value in batch:
            assert fut.status == "finished"
            results[label] = value

    assert run_bounded(dask_client, jobs(), done, limit=5) == 120
    assert results == {i: i * i for i in range(120)}
    assert most[0] <= 5 + 1  # the job being made when the count was taken
    deadline = time.monotonic() + 5  # nothing of the run is kept on the cluster (released asynchronously)
    while _own(dask_client, "square-bounded-") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _own(dask_client, "square-bounded-")


def test_the_limit_follows_the_cluster():
    assert in_flight_limit(0) == 32  # workers of a batch system may not have joined yet
    assert in_flight_limit(250) == 1000


def test_a_stop_cancels_the_tasks_in_flight(dask_client):
    def jobs():
        for i in range(1000):
            yield Job(time.sleep, (0.2,), key=f"sleep-bounded-{i}", label=i)

    calls = [0]

    def done(batch):
        calls[0] += 1
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_bounded(dask_client, jobs(), done, limit=4)
    assert calls[0] == 1 and time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while _own(dask_client, "sleep-bounded-") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _own(dask_client, "sleep-bounded-")


def test_signals_held_during_a_scheduler_call_act_afterwards():
    import os
    import signal

    from pipelines.driver.bounded import signals_deferred

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert seen == []  # held while the call runs
        assert seen == [signal.SIGTERM]  # then handed to the handler that was installed
        with pytest.raises(KeyboardInterrupt), signals_deferred():  # Python's own Ctrl-C handler
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        with signals_deferred():  # a second signal acts at once
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert seen == [signal.SIGTERM, signal.SIGTERM]
        assert seen == [signal.SIGTERM, signal.SIGTERM]  # not a third time
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_ctrl_c_held_during_a_call_that_fails_is_not_lost():
    import os
    import signal

    from pipelines.driver.bounded import signals_deferred

    with pytest.raises(KeyboardInterrupt) as stopped, signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        raise RuntimeError("the task failed")
    assert isinstance(stopped.value.__context__, RuntimeError)  # the error is chained, for -v


def test_a_value_fetched_before_its_worker_left_counts_as_succeeded():
    """A batch job cancelled after its task's value was fetched turns the future "lost" (Dask would compute
    it again); the value in hand is the task's, so the task succeeded (it failed runs on SLURM before)."""
    from types import SimpleNamespace

    from distributed.client import CancelledError

    from pipelines.driver.bounded import succeeded

    assert succeeded(SimpleNamespace(status="finished"), {"n": 1})
    assert succeeded(SimpleNamespace(status="lost"), {"n": 1})
    assert not succeeded(SimpleNamespace(status="lost"), CancelledError("x"))
    assert not succeeded(SimpleNamespace(status="error"), (ValueError, ValueError("x"), None))
    assert not succeeded(SimpleNamespace(status="cancelled"), CancelledError("x"))
