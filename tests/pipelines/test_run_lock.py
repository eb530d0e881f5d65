"""The run folder's lock: atomic taking (threads racing, local and S3), stale takeover, fencing, release."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from pipelines.errors import RunLockHeldError, RunLockLostError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_lock import Lease, RunLock, read_holder


def race(location: OutputLocation, n: int = 8, lease_s: float = 60.0):
    """``n`` threads try to take the folder at the same moment; returns (winners, refusals)."""
    barrier = threading.Barrier(n)
    winners, refused = [], []

    def attempt():
        lock = RunLock(location, lease_s)
        barrier.wait()
        try:
            winners.append(lock.acquire())
        except RunLockHeldError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return winners, refused


def write_holder(location: OutputLocation, generation: int, **fields):
    data = {"lease_id": "f" * 32, "host": "other-host", "pid": 4242, "user": "ana", "command": "opso run x.yaml",
            "started": time.time() - 50, "heartbeat": time.time() - 5, "lease_s": 60.0, **fields}
    location.write_bytes(f"_lock/{generation:09d}.json", json.dumps(data).encode())


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return OutputLocation(str(tmp_path / "run"))
    import s3fs

    options = request.getfixturevalue("s3_storage_options")
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    bucket = f"lock-{request.node.name.lower().replace('[', '-').replace(']', '').replace('_', '-')}"[:60]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return OutputLocation(f"s3://{bucket}/run", options)


def test_exactly_one_of_racing_runs_takes_the_folder(location):
    winners, refused = race(location)
    assert len(winners) == 1 and len(refused) == 7
    holder = read_holder(location)
    assert holder.generation == 1 and holder.pid == os.getpid() and holder.host == socket.gethostname()
    assert all("in use by another opso run" in m and f"pid {os.getpid()}" in m and "--steal-lock" in m
               for m in refused)
    winners[0].mark_used()
    winners[0].release()
    assert read_holder(location).released is not None
    again, _ = race(location, n=3)  # released: the next run takes generation 2
    assert len(again) == 1 and read_holder(location).generation == 2
    again[0].release()


def test_a_run_that_wrote_nothing_leaves_no_lock(tmp_path):
    location = OutputLocation(str(tmp_path / "new" / "run"))
    lock = RunLock(location).acquire()
    assert (tmp_path / "new" / "run" / "_lock" / "000000001.json").exists()
    lock.release()  # never marked used: a check after the lock failed
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["local"])
def test_takeover_of_a_stale_lock_and_refusal_of_a_live_one(tmp_path, kind, caplog):
    location = OutputLocation(str(tmp_path / "run"))
    write_holder(location, 3)  # another host, heartbeat 5 s ago, lease 60 s
    with pytest.raises(RunLockHeldError, match="host other-host, pid 4242, user ana") as err:
        RunLock(location).acquire()
    assert "last heartbeat 5 s ago" in str(err.value) and "once its heartbeat is 60 s old" in str(err.value)

    write_holder(location, 3, heartbeat=time.time() - 61)  # older than its lease: taken over
    lock = RunLock(location).acquire()
    assert lock.lease.generation == 4 and lock.previous.host == "other-host"
    assert "taking over" in caplog.text and "more than its lease of 60 s" in caplog.text
    lock.mark_used()
    lock.release()

    write_holder(location, 5, heartbeat=time.time())  # live: only --steal-lock takes it
    with pytest.raises(RunLockHeldError):
        RunLock(location).acquire()
    stolen = RunLock(location, steal=True).acquire()
    assert stolen.lease.generation == 6
    stolen.release()


@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/random/boot_id"), reason="needs Linux's /proc")
def test_a_dead_driver_and_workers_on_this_host_are_taken_over_at_once(tmp_path):
    """Taken at once only when the driver and every recorded worker surely ended (same boot and process
    namespace, pid and start time); with a live worker or unknown workers it waits for the lease."""
    import subprocess
    import sys

    from pipelines.outputs.run_lock import this_machine, worker_identity

    location = OutputLocation(str(tmp_path / "run"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = worker_identity()["process"]
    common = dict(host=socket.gethostname(), pid=int(dead.stdout), heartbeat=time.time(), machine=this_machine(),
                  start_ticks=1)
    write_holder(location, 1, **common, workers=[me])  # a worker that lives (this process)
    with pytest.raises(RunLockHeldError):
        RunLock(location).acquire()
    write_holder(location, 1, **common, workers=None)  # workers unknown (a remote cluster)
    with pytest.raises(RunLockHeldError):
        RunLock(location).acquire()
    write_holder(location, 1, **common, workers=[[int(dead.stdout), 1]])
    write_holder(location, 1, **{**common, "machine": {**this_machine(), "pid_ns": "pid:[1]"}}, workers=[])
    with pytest.raises(RunLockHeldError):  # another process namespace (a container on this host): not ours to judge
        RunLock(location).acquire()
    write_holder(location, 1, **common, workers=[])
    lock = RunLock(location).acquire()
    assert lock.lease.generation == 2 and lock.quiet_until == 0.0  # nothing of it can write: no wait
    assert read_holder(location).generation == 2
    lock.release()


def test_taking_over_waits_until_the_previous_run_s_tasks_cannot_write(tmp_path):
    location = OutputLocation(str(tmp_path / "run"))
    heartbeat = time.time() - 10
    write_holder(location, 1, heartbeat=heartbeat, lease_s=60.0)  # live, on another host
    stolen = RunLock(location, steal=True).acquire()
    # its tasks see the new generation within a check interval (5 s) and a write lands within 15 s
    assert time.time() + 19 < stolen.quiet_until <= time.time() + 20
    previous = json.loads((tmp_path / "run" / "_lock" / "000000001.json").read_text())
    assert previous["superseded_by"] == 2  # for fences whose directory listing lags (NFS)
    stolen.release()
    write_holder(location, 3, heartbeat=time.time() - 61, lease_s=60.0)  # expired: its tasks stopped already
    expired = RunLock(location).acquire()
    assert expired.quiet_until <= time.time()
    expired.mark_used()
    expired.release()
    released = time.time()
    write_holder(location, 5, heartbeat=released, released=released, lease_s=60.0)  # released, tasks may run on
    after = RunLock(location).acquire()
    assert after.quiet_until == pytest.approx(released + 5 + 15)
    after.release()
    write_holder(location, 7, heartbeat=released, released=released, lease_s=60.0, tasks_quiet_at=released)
    clean = RunLock(location).acquire()
    assert clean.quiet_until <= time.time()  # all its tasks had finished
    clean.mark_used()
    clean.wait_until_quiet()  # returns at once
    clean.release()


def test_a_create_whose_answer_was_lost_is_recognised(tmp_path, s3_storage_options):
    """A conditional PUT that landed but whose answer was lost is retried and refused (412): the run
    reads the generation back and finds its own lease id, instead of refusing itself."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options, skip_instance_cache=True)
    fs.mkdir("lost-answer")
    location = OutputLocation("s3://lost-answer/run", s3_storage_options)
    real = type(location.fs).pipe_file

    def landed_then_conflict(self, path, data, mode="overwrite", **kwargs):
        real(self, path, data, mode=mode, **kwargs)
        if mode == "create":
            raise FileExistsError(path)

    try:
        type(location.fs).pipe_file = landed_then_conflict
        lock = RunLock(location).acquire()
    finally:
        type(location.fs).pipe_file = real
    assert lock.lease.generation == 1 and read_holder(location).lease_id == lock.lease.lease_id
    lock.release()


def test_a_damaged_lock_file_is_stale_after_a_lease(tmp_path):
    location = OutputLocation(str(tmp_path / "run"))
    damaged = tmp_path / "run" / "_lock" / "000000001.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"")  # a create cut short by a full disk
    with pytest.raises(RunLockHeldError, match=r"an unreadable lock file, last changed \d s ago"):
        RunLock(location).acquire()
    old = time.time() - 200
    os.utime(damaged, (old, old))
    lock = RunLock(location).acquire()
    assert lock.lease.generation == 2
    lock.release()


def test_fences_list_afresh_whatever_the_storage_options_say(s3_storage_options):
    """With the user's use_listings_cache: true, a task's s3fs instance could keep an old listing of
    _lock/; the fence lists it afresh anyway."""
    import s3fs

    options = {**s3_storage_options, "use_listings_cache": True}
    s3fs.S3FileSystem(**s3_storage_options, skip_instance_cache=True).mkdir("cached-listing")
    location = OutputLocation("s3://cached-listing/run", options)
    lock = RunLock(location, lease_s=12).acquire()  # a check is trusted for 1 s
    lock.mark_used()
    fenced = location.with_lease(lock.lease)
    fenced.write_bytes("a.json", b"{}")
    assert location.fs.ls(location.path("_lock"))  # the listing is in this instance's cache now
    other = OutputLocation("s3://cached-listing/run", {**s3_storage_options, "skip_instance_cache": True})
    write_holder(other, 2, heartbeat=time.time(), lease_s=12)
    time.sleep(1.1)
    with pytest.raises(RunLockLostError, match="another run took over"):
        fenced.write_bytes("b.json", b"{}")
    lock.release()


def test_fencing_refuses_writes_once_another_run_holds_the_folder(tmp_path):
    location = OutputLocation(str(tmp_path / "run"))
    lock = RunLock(location, lease_s=1.2).acquire()  # a check is trusted for lease_s / 12 = 0.1 s
    lock.mark_used()
    fenced = location.with_lease(lock.lease)
    fenced.write_json("run.json", {"status": "running"})  # ours: fine
    write_holder(location, 2, heartbeat=time.time(), lease_s=1.2)  # a later generation appears (--steal-lock)
    time.sleep(0.15)
    with pytest.raises(RunLockLostError, match="another run took over"):
        fenced.write_json("run.json", {"status": "mine"})
    again = OutputLocation(str(tmp_path / "run"), lease=Lease(lock.lease.generation, lock.lease.lease_id, 1.2))
    with pytest.raises(RunLockLostError, match="another run took over"):
        again.remove_files(["run.json"])  # deletes are fenced too
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == {"status": "running"}
    lock.renew()
    assert lock.lost and "another run took over" in lock.lost
    with pytest.raises(RunLockLostError):
        lock.check()
    lock.release()
    assert read_holder(location).generation == 2 and read_holder(location).released is None  # not ours to release


def test_a_task_waits_while_the_heartbeat_is_late_and_gives_up_past_the_lease(tmp_path):
    location = OutputLocation(str(tmp_path / "run"))
    lock = RunLock(location, lease_s=2.4).acquire()
    acquired = time.monotonic()
    lock.mark_used()
    lock._stop.set()  # the driver stops renewing (paused)
    lease = lock.lease
    holder = read_holder(location)
    write_holder(location, holder.generation, lease_id=lease.lease_id, heartbeat=time.time() - 1.5, lease_s=2.4,
                 host=socket.gethostname(), pid=os.getpid())
    fenced = OutputLocation(str(tmp_path / "run"), lease=lease)
    started = time.monotonic()
    with pytest.raises(RunLockLostError, match="has not renewed its lock"):
        fenced.write_bytes("x.json", b"{}")
    assert 0.8 < time.monotonic() - started < 3  # waited for the heartbeat until the lease ran out
    assert not (tmp_path / "run" / "x.json").exists()
    time.sleep(max(0.0, 0.75 * 2.4 + 0.1 - (time.monotonic() - acquired)))
    lock.renew()  # its own last heartbeat is older than 3/4 of the lease: it knows it lost the folder
    assert lock.lost and "could not renew" in lock.lost


def test_the_heartbeat_keeps_a_long_run_s_lease(tmp_path):
    location = OutputLocation(str(tmp_path / "run"))
    lock = RunLock(location, lease_s=4.0).acquire()  # renewed every 0.5 s; writes wait past 2 s without one
    lock.mark_used()
    fenced = location.with_lease(lock.lease)
    for _ in range(20):  # 5 s: longer than the lease (4 s leaves a loaded machine's heartbeat thread room)
        fenced.write_bytes("x.json", b"{}")
        time.sleep(0.25)
    assert read_holder(location).heartbeat_age_s() < 2.0 and not lock.lost
    lock.release()


def test_memory_storage_uses_the_non_atomic_fallback():
    location = OutputLocation("memory://lock-fallback/run")
    lock = RunLock(location).acquire()
    with pytest.raises(RunLockHeldError):
        RunLock(location).acquire()
    lock.release()


def test_worker_records_and_their_failures(tmp_path, monkeypatch):
    """The lock says "no worker" until the run records its workers (strictly, before any task); a
    later record that cannot be written waits for the next heartbeat instead of failing the run."""
    from pipelines.errors import StorageError
    from pipelines.outputs.run_lock import this_machine

    location = OutputLocation(str(tmp_path / "run"))
    lock = RunLock(location, lease_s=60).acquire()
    written = read_holder(location)
    assert written.workers == [] and written.machine == this_machine()
    lock.set_workers([[os.getpid(), None]], strict=True)
    assert read_holder(location).workers == [[os.getpid(), None]]

    def failing(holder):
        raise StorageError("the storage is down")

    monkeypatch.setattr(lock, "_write", failing)
    lock.set_workers([[1, None]])  # no exception: the run goes on
    assert lock._holder.workers == [[1, None]] and not lock.lost
    with pytest.raises(StorageError):
        lock.set_workers([[2, None]], strict=True)
    monkeypatch.undo()
    lock.renew()  # the next heartbeat carries the record
    assert read_holder(location).workers == [[2, None]]
    lock.release()


def test_a_clock_ahead_cannot_make_a_rerun_wait_for_hours(tmp_path, caplog):
    location = OutputLocation(str(tmp_path / "run"))
    future = time.time() + 3600
    write_holder(location, 1, heartbeat=future, released=future, tasks_quiet_at=future, lease_s=60.0)
    lock = RunLock(location).acquire()
    assert lock.quiet_until <= time.time() + 50  # at most 10/12 of its lease
    assert "clock 3600 s ahead" in caplog.text or "clock 3599 s ahead" in caplog.text
    lock.release()


def test_a_run_that_lost_its_lock_says_why_whatever_failed_last(tmp_path):
    """The heartbeat gave up during a storage outage while the driver's own write failed too: exit code 4
    (or 5 when another run took over), never 2, and run.json is not written."""
    from pipelines.driver.run import _record_stop
    from pipelines.errors import RunStorageError, StorageError, exit_code_of

    location = OutputLocation(str(tmp_path / "run"))
    lock = RunLock(location, lease_s=60).acquire()
    lock.mark_used()
    lock._last_error = "StorageError: the storage is down"
    lock._lose_by_age(lock._holder)
    raised = _record_stop(location.with_lease(lock.lease), {"sessions": [{}]}, StorageError("cannot write x"),
                          time.perf_counter(), lock)
    assert isinstance(raised, RunStorageError) and exit_code_of(raised) == 4 and "the storage failed" in str(raised)
    assert not (tmp_path / "run" / "run.json").exists()
    lock._lost_to_storage, lock._last_error = False, None
    raised = _record_stop(location, {"sessions": [{}]}, StorageError("x"), time.perf_counter(), lock)
    assert isinstance(raised, RunLockLostError) and exit_code_of(raised) == 5
    lock.release()
