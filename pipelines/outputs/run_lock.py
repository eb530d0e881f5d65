"""One run per output folder: a lock taken atomically, renewed while the run goes on, and fenced writes.

The lock lives in the run folder, as files ``_lock/<generation>.json`` (``000000001.json``, ...).
The holder is the highest generation; its file says who holds it (host, machine and process
identity, user, command, the run's local worker processes), since when, its lease id, its last
heartbeat and its lease time ``lease_s`` (``output.lease_s``). Three durations follow from
``lease_s`` (120 s by default):

=====================  ==============  ================================================================
fresh                  ``lease_s/2``   a write goes ahead only while the heartbeat is younger than this
check interval         ``lease_s/12``  a successful check is trusted this long in one process
write deadline         ``lease_s/4``   an object-storage write (all its retries) lands within this or fails
=====================  ==============  ================================================================

**Taking the folder.** A run creates generation ``n + 1`` with an atomic create-if-absent: a hard
link of a finished temporary file locally (``O_EXCL`` where links are not supported; both are atomic
on local disks and NFS), a conditional PUT (``If-None-Match: *``) on S3, which AWS S3, MinIO and
the test server honour. A create whose answer was lost (a retried request that then reports a
conflict) is recognised by reading the generation back. Of two runs that try at once, exactly one
creates the generation; the other reads the new holder and stops. A run may take the next
generation only when generation ``n`` is released, or stale:

- its heartbeat is older than its ``lease_s`` (the holder stopped, lost its node or its storage), or
- its driver and all of its local worker processes are gone: same host, same boot, same process
  namespace, and none of the recorded processes (pid and start time) exists (a killed driver), or
- ``--steal-lock`` is given (for a holder known to be dead).

**Waiting for the previous run's tasks.** A taken-over run's tasks may still be writing (a worker
process that outlived its driver, a task of an external cluster, a write in flight). Before its
first write or delete, the new holder waits until none of them can: until the old heartbeat plus
fresh + check interval + write deadline (``10/12 lease_s``; already past for a lock taken because
its heartbeat expired); after ``--steal-lock`` at most the check interval + write deadline; after a
release, the check interval + write deadline unless the old run ended with no task left (it
completed, or closed its own cluster) or its processes are gone. It says so while it waits.

**Renewing.** The holder's driver rewrites its file every ``lease_s / 8`` seconds (a thread). It
renews only while its last heartbeat is younger than ``3/4 lease_s``, and only after reading its own
file back: once its lease could have been taken over, or its file says ``superseded_by``, it never
renews, it has lost the folder (exit code 5; exit code 4 when renewing failed because the storage
did).

**Fencing.** Every write and delete of the run (the driver's and every task's) goes through an
:class:`~pipelines.outputs.OutputLocation` carrying the run's :class:`Lease`, whose :meth:`Lease.check`
lists ``_lock/`` (never from a cache) and reads the run's own file: the write goes ahead only when no
higher generation exists, the file is not ``superseded_by`` a taker (which a taker writes there, for
file systems whose directory listings lag) and the heartbeat is fresh. While the heartbeat is
older (the driver paused), a task waits; past ``lease_s`` it fails with
:class:`~pipelines.errors.RunLockLostError`. So a write starts at most fresh + check interval after
the last heartbeat and lands within the write deadline: ``10/12 lease_s`` in all, while a takeover
by expiry comes at the earliest ``lease_s`` after it. This assumes clocks agree to within a few
seconds (NTP), as on any cluster; a check's cache expires by wall-clock time too, so a suspended
machine re-checks when it wakes. Writes to local disks or network file systems are not bounded by a
deadline (a hung NFS server blocks a write in the kernel).

**Releasing.** At the end of the run (also on errors and Ctrl-C) the holder marks its file
``released``, with the time after which no task of it can write (at once when all finished; a
check interval and a write deadline after it stopped its own cluster). Old generations beyond the last few
are deleted by the holder. A run that stops before writing anything (a check after the lock failed)
deletes its generation instead, and the folders it created for it, so it leaves no trace.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import getpass
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid

from pipelines.errors import RunLockHeldError, RunLockLostError, RunStorageError, StorageError
from pipelines.outputs.location import OutputLocation

__all__ = ["DEFAULT_LEASE_S", "LOCK_FOLDER", "Lease", "LockHolder", "RunLock", "local_worker_processes",
           "read_holder", "this_machine", "worker_identity"]

logger = logging.getLogger(__name__)

LOCK_FOLDER = "_lock"
#: seconds without a heartbeat after which another run may take the folder over (``output.lease_s``)
DEFAULT_LEASE_S = 120.0
#: generations kept below the holder's (for ``opso status`` and post-mortems); older ones are deleted
KEEP_GENERATIONS = 4


def fresh_s(lease_s: float) -> float:
    """Oldest heartbeat (s) under which writes go ahead."""
    return lease_s / 2


def check_interval_s(lease_s: float) -> float:
    """Seconds a successful check is trusted in one process."""
    return lease_s / 12


def write_deadline_s(lease_s: float) -> float:
    """Seconds an object-storage write (with its retries) may take before it fails."""
    return lease_s / 4


def quiet_after_s(lease_s: float) -> float:
    """Seconds after a holder's last heartbeat when none of its tasks can still write."""
    return fresh_s(lease_s) + check_interval_s(lease_s) + write_deadline_s(lease_s)


# ---- who and where: the machine and process identities that make "its process has ended" sound

def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def this_machine() -> dict:
    """``{"host", "boot_id", "pid_ns"}`` of this process: a pid means the same process only on the same
    boot of the same machine, in the same process namespace (containers may share a host name)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"host": socket.gethostname(), "boot_id": _read_text("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), or None."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def worker_identity() -> dict:
    """This process's machine and ``[pid, start ticks]`` (run on Dask workers to record them)."""
    return {"machine": this_machine(), "process": [os.getpid(), _start_ticks(os.getpid())]}


def _alive(pid: int, start_ticks: int | None) -> bool:
    """False only when process ``pid`` (started at ``start_ticks``) surely no longer exists on this machine."""
    if pid <= 0 or os.name != "posix":
        return os.name != "posix"  # elsewhere we cannot tell: assume it lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    fields = _stat(pid)
    if fields:
        if fields[0] in ("Z", "X"):
            return False  # a zombie: ended, not yet reaped (containers often have no init that reaps)
        if start_ticks is not None and fields[19] != str(start_ticks):
            return False  # the pid was reused by another process
    return True


def local_worker_processes(client, attempts: int = 1) -> list[list[int]] | None:
    """``[[pid, start ticks], ...]`` of the client's workers when all run on this machine (a local
    cluster), else None (their end cannot be seen from here). Workers that do not answer are asked
    again, up to ``attempts`` times, half a second apart (None when they never do)."""
    found = None
    for attempt in range(attempts):
        try:
            found = client.run(worker_identity)
            break
        except Exception as exc:  # workers leaving or arriving, or a loaded machine: ask again
            logger.debug("could not ask the workers who they are (attempt %d): %s", attempt + 1, exc)
            if attempt + 1 < attempts:
                time.sleep(0.5)
    if found is None:
        return None
    mine = this_machine()
    if not found or any(v["machine"] != mine or v["machine"]["boot_id"] is None for v in found.values()):
        return None
    return sorted(v["process"] for v in found.values())


#: seconds a new run waits for the workers of a run whose driver has ended (a SIGKILLed process group takes
#: a moment to exit, longer on a loaded machine) before it calls the folder held
WORKERS_EXIT_WAIT_S = 10.0


def _wait_for_workers_to_end(holder: LockHolder, wait_s: float = WORKERS_EXIT_WAIT_S) -> str | None:
    """The holder's stale reason once its workers have ended, or None if they still run after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        reason = holder.stale_reason()
        if reason is not None:
            return reason
        time.sleep(0.1)
    return None


# ---- the lock files

def _generation_name(generation: int) -> str:
    return f"{LOCK_FOLDER}/{generation:09d}.json"


def _generations(location: OutputLocation, deadline_s: float | None = None) -> list[int]:
    """The lock generations in the folder, ascending (a fresh listing, whatever the storage options say)."""
    folder = location.path(LOCK_FOLDER)
    try:
        location.fs.invalidate_cache(folder)
        entries = location.fs.ls(folder, detail=False, **location.deadline(deadline_s))
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise StorageError(f"cannot list {location.url_of(LOCK_FOLDER)}: {type(exc).__name__}: {exc}") from exc
    out = []
    for entry in entries:
        stem, _, ext = entry.rstrip("/").rsplit("/", 1)[-1].partition(".")
        if ext == "json" and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def _iso(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "?"
    return datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """One generation's lock file (see the module docstring)."""

    generation: int
    lease_id: str
    host: str
    pid: int
    user: str
    command: str
    started: float
    heartbeat: float
    lease_s: float
    released: float | None = None
    machine: dict | None = None  # this_machine() of the driver
    start_ticks: int | None = None  # of the driver process
    workers: list | None = None  # [[pid, start ticks], ...] of local workers; None: unknown or remote
    tasks_quiet_at: float | None = None  # set at release: when no task of the run can still write (epoch s)
    superseded_by: int | None = None  # written by the run that took the folder over
    corrupt: bool = False  # the file could not be parsed (heartbeat: its modification time)

    @classmethod
    def from_json(cls, generation: int, data: dict) -> LockHolder:
        return cls(generation=generation, lease_id=str(data.get("lease_id", "")), host=str(data.get("host", "?")),
                   pid=int(data.get("pid", -1)), user=str(data.get("user", "?")),
                   command=str(data.get("command", "")), started=float(data.get("started", 0.0)),
                   heartbeat=float(data.get("heartbeat", 0.0)),
                   lease_s=float(data.get("lease_s", DEFAULT_LEASE_S)), released=data.get("released"),
                   machine=data.get("machine"), start_ticks=data.get("start_ticks"), workers=data.get("workers"),
                   tasks_quiet_at=data.get("tasks_quiet_at"), superseded_by=data.get("superseded_by"))

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        for key in ("generation", "corrupt"):
            data.pop(key)
        data.update(started_utc=_iso(self.started), heartbeat_utc=_iso(self.heartbeat))
        if self.released is not None:
            data["released_utc"] = _iso(self.released)
        return data

    @property
    def released_utc(self) -> str:
        """When the lock was released (ISO 8601, UTC), ``"?"`` while it is held."""
        return _iso(self.released)

    def heartbeat_age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat

    def describe(self, now: float | None = None) -> str:
        """``host h, pid 12, user u, started ..., last heartbeat 8 s ago``."""
        if self.corrupt:
            return f"an unreadable lock file, last changed {self.heartbeat_age_s(now):.0f} s ago"
        return (f"host {self.host}, pid {self.pid}, user {self.user}, started {_iso(self.started)}, "
                f"last heartbeat {self.heartbeat_age_s(now):.0f} s ago")

    def _same_machine(self) -> bool:
        mine = this_machine()
        return (self.machine is not None and mine["boot_id"] is not None and self.machine.get("host") == mine["host"]
                and self.machine.get("boot_id") == mine["boot_id"] and self.machine.get("pid_ns") == mine["pid_ns"])

    def writers_gone(self) -> bool:
        """True when the driver and every recorded local worker process surely no longer exist."""
        return (self._same_machine() and self.workers is not None and not _alive(self.pid, self.start_ticks)
                and not any(_alive(int(pid), ticks) for pid, ticks in self.workers))

    def driver_gone(self) -> bool:
        """True when the run's driver process, on this machine, surely no longer exists (its workers may)."""
        return self._same_machine() and self.workers is not None and not _alive(self.pid, self.start_ticks)

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why another run may take this lock over without ``--steal-lock``, or None."""
        if self.released is not None:
            return "it was released"
        if self.superseded_by is not None:
            return f"generation {self.superseded_by} took it over"
        age = self.heartbeat_age_s(now)
        if age > self.lease_s:
            return f"its last heartbeat was {age:.0f} s ago (more than its lease of {self.lease_s:g} s)"
        if self.writers_gone():
            return f"its process {self.pid} and its workers on this host have ended"
        return None

    def quiet_at(self, now: float, steal: bool = False) -> float:
        """When (epoch s) none of this run's tasks can still write (see the module docstring)."""
        interval, deadline = check_interval_s(self.lease_s), write_deadline_s(self.lease_s)
        if self.released is not None:
            if self.writers_gone():
                return 0.0
            return self.tasks_quiet_at if self.tasks_quiet_at is not None else self.released + interval + deadline
        if self.writers_gone() or self.workers == []:  # gone, or never started a task: nothing can write
            return 0.0
        by_heartbeat = self.heartbeat + quiet_after_s(self.lease_s)
        return min(by_heartbeat, now + interval + deadline) if steal else by_heartbeat


def read_holder(location: OutputLocation) -> LockHolder | None:
    """The lock file of the highest generation in ``location`` (None where no run holds or held it)."""
    for _ in range(5):
        generations = _generations(location)
        if not generations:
            return None
        holder = _read(location, generations[-1])
        if holder is not None:
            return holder
    return None


def _read(location: OutputLocation, generation: int, deadline_s: float | None = None) -> LockHolder | None:
    """The lock file of ``generation``; None if it is gone (deleted between a listing and this read)."""
    rel = _generation_name(generation)
    for attempt in range(5):  # an O_EXCL create may be read before its content is written
        try:
            data = location.fs.cat_file(location.path(rel), **location.deadline(deadline_s))
            return LockHolder.from_json(generation, json.loads(data))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, AttributeError):
            time.sleep(0.05 * (attempt + 1))
        except Exception as exc:
            raise StorageError(f"cannot read {location.url_of(rel)}: {type(exc).__name__}: {exc}") from exc
    try:  # damaged (a create cut short by a full disk): stale once its last change is older than a lease
        modified = location.fs.modified(location.path(rel)).timestamp()
    except Exception:  # no modification time: it stays stale from now
        modified = time.time()
    logger.warning("the lock file %s is not readable JSON; it counts as stale %g s after its last change",
                   location.url_of(rel), DEFAULT_LEASE_S)
    return LockHolder(generation=generation, lease_id="", host="?", pid=-1, user="?", command="", started=modified,
                      heartbeat=modified, lease_s=DEFAULT_LEASE_S, corrupt=True)


def _ours(location: OutputLocation, rel: str, lease_id: str, deadline_s: float | None) -> bool | None:
    """Whether ``rel`` holds our ``lease_id``; None when it does not exist."""
    try:
        data = json.loads(location.fs.cat_file(location.path(rel), **location.deadline(deadline_s)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return False
    return data.get("lease_id") == lease_id


def _create_exclusive(location: OutputLocation, rel: str, data: bytes, lease_id: str,
                      deadline_s: float | None) -> bool:
    """Create ``rel`` holding ``data`` only if it does not exist; True if this call created it.

    A create reported as a conflict or an error may still have happened (a retried request whose
    first attempt landed): the file is read back, and holds our ``lease_id`` if so.
    """
    target = location.path(rel)
    try:
        if location.is_local:
            return _create_local(target, data)
        if "s3" in _protocols(location.fs):
            try:
                location.fs.pipe_file(target, data, mode="create", **location.deadline(deadline_s))  # If-None-Match: *
                return True
            except Exception as exc:  # a conflict (412/409, mapped variously), or an error after it landed
                mine = _ours(location, rel, lease_id, deadline_s)
                if mine is None:
                    raise
                if not isinstance(exc, FileExistsError) and not mine:
                    logger.debug("creating %s failed (%s) and another run's lock is there", rel, exc)
                return mine
        _warn_not_atomic(location)
        if location.fs.exists(target):
            return bool(_ours(location, rel, lease_id, deadline_s))
        location.fs.pipe_file(target, data)
        return True
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot write the lock {location.url_of(rel)}: {type(exc).__name__}: {exc}") from exc


def _create_local(target: str, data: bytes) -> bool:
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".lock.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)  # atomic, also on NFS; fails if the target exists
            return True
        except FileExistsError:
            with open(target, "rb") as f:  # a retransmitted link on NFS may answer EEXIST for our own
                return f.read() == data
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            return _create_with_o_excl(target, data)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _create_with_o_excl(target: str, data: bytes) -> bool:
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:  # a full disk: no empty lock file left behind
        os.unlink(target)
        raise
    return True


_WARNED_PROTOCOLS: set = set()


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _warn_not_atomic(location: OutputLocation) -> None:
    protocol = _protocols(location.fs)[0]
    if protocol not in _WARNED_PROTOCOLS and protocol != "memory":
        _WARNED_PROTOCOLS.add(protocol)
        logger.warning("the run lock on %s:// storage is not atomic (opso knows conditional writes of local "
                       "disks and S3 only): two runs started at the same moment could both take the folder",
                       protocol)


# ---- what a task carries

@dataclasses.dataclass(frozen=True)
class Lease:
    """What a task carries of the run's lock: the generation, its lease id and lease time (s).

    Picklable; :meth:`check` is the fence every write goes through (see the module docstring).
    """

    generation: int
    lease_id: str
    lease_s: float

    @property
    def check_interval_s(self) -> float:
        return check_interval_s(self.lease_s)

    @property
    def fresh_s(self) -> float:
        return fresh_s(self.lease_s)

    @property
    def write_deadline_s(self) -> float:
        return write_deadline_s(self.lease_s)

    def check(self, location: OutputLocation) -> None:
        """Return when the run still holds ``location``; wait while its driver's heartbeat is late.

        Raises
        ------
        RunLockLostError
            A later run took the folder, the lock was released, or the heartbeat is older than
            ``lease_s``.
        """
        key = (location.url, self.generation, self.lease_id)
        checked = _CHECKED.get(key)
        if checked is not None:
            mono, wall = time.monotonic() - checked[0], time.time() - checked[1]
            if 0 <= mono < self.check_interval_s and 0 <= wall < self.check_interval_s:  # a suspend expires it
                return
        while True:
            holder = self._own_holder(location)
            age = holder.heartbeat_age_s()
            if age <= self.fresh_s:
                _CHECKED[key] = (time.monotonic(), time.time())
                return
            if age > self.lease_s:
                _CHECKED.pop(key, None)
                raise RunLockLostError(
                    f"the run's driver ({holder.host}, pid {holder.pid}) has not renewed its lock on {location.url} "
                    f"for {age:.0f} s (lease {self.lease_s:g} s), so another run may have taken the folder; this "
                    "task writes nothing. Run the same command again to resume")
            time.sleep(min(self.check_interval_s, 1.0))

    def _own_holder(self, location: OutputLocation) -> LockHolder:
        deadline = self.write_deadline_s
        generations = _generations(location, deadline)
        if generations and generations[-1] > self.generation:
            newer = _read(location, generations[-1], deadline)
            raise RunLockLostError(f"another run took over {location.url}"
                                   + (f" ({newer.describe()})" if newer else "") + "; this run writes nothing more")
        holder = _read(location, self.generation, deadline)  # by name: a lagging listing may not show it yet
        if holder is None:
            raise RunLockLostError(f"the run's lock (generation {self.generation}) is gone from {location.url}; "
                                   "this run writes nothing more")
        if holder.superseded_by is not None:
            raise RunLockLostError(f"another run took over {location.url} (lock generation {holder.superseded_by}); "
                                   "this run writes nothing more")
        if holder.lease_id != self.lease_id:
            raise RunLockLostError(f"the lock of {location.url} (generation {self.generation}) belongs to another run")
        if holder.released is not None:
            raise RunLockLostError(f"the run's lock on {location.url} was released; this run writes nothing more")
        return holder


_CHECKED: dict = {}  # (url, generation, lease id) -> (time.monotonic(), time.time()) of the last successful check


def _command_line() -> str:
    text = " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])
    return text if len(text) <= 300 else text[:297] + "..."


class RunLock:
    """The lock of one run folder, held by this process while the run goes on.

    Parameters
    ----------
    location : OutputLocation
        The run folder (without a lease).
    lease_s : float
        Seconds without a heartbeat after which another run may take the folder (``output.lease_s``).
    steal : bool
        Take the folder even from a live holder (``--steal-lock``).

    Call :meth:`acquire`, :meth:`wait_until_quiet` before the first write, and :meth:`release`.
    """

    def __init__(self, location: OutputLocation, lease_s: float = DEFAULT_LEASE_S, *, steal: bool = False):
        self.location = location.with_lease(None)
        self.lease_s = float(lease_s)
        self.steal = steal
        self.lease: Lease | None = None
        self.previous: LockHolder | None = None
        self.quiet_until = 0.0
        self._holder: LockHolder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._lost_to_storage = False
        self._last_error: str | None = None
        self._io = threading.Lock()
        self._used = False
        self._tasks_started = False  # no task that writes was submitted yet (see mark_tasks_started)
        self._tasks_done: str | None = None  # "finished" or "stopped" (see mark_quiesced)
        self._workers: list | None = None
        self._created: list[str] = []  # local folders this lock created (deepest first)

    @property
    def deadline_s(self) -> float:
        return write_deadline_s(self.lease_s)

    # ---- taking the folder

    def acquire(self) -> RunLock:
        """Take the folder (see the module docstring) and start the heartbeat.

        Raises
        ------
        RunLockHeldError
            Another run holds it (the message names the holder and what to do).
        StorageError
            The lock cannot be read or written.
        """
        if self.location.is_local:
            folder = self.location.path(LOCK_FOLDER)
            while not os.path.exists(folder) and folder != os.path.dirname(folder):
                self._created.append(folder)
                folder = os.path.dirname(folder)
        for _ in range(10):
            generations = _generations(self.location, self.deadline_s)
            top = generations[-1] if generations else 0
            holder = _read(self.location, top, self.deadline_s) if top else None
            if top and holder is None:
                continue  # deleted between the listing and the read (a run that wrote nothing): look again
            reason = None
            if holder is not None and holder.released is None:
                reason = holder.stale_reason()
                if reason is None and not self.steal and holder.driver_gone():
                    reason = _wait_for_workers_to_end(holder)  # killed a moment ago: its workers are exiting
                if reason is None and not self.steal:
                    raise RunLockHeldError(self._held_message(holder))
            now = time.time()
            mine = LockHolder(generation=top + 1, lease_id=uuid.uuid4().hex, host=socket.gethostname(),
                              pid=os.getpid(), user=_user(), command=_command_line(), started=now, heartbeat=now,
                              lease_s=self.lease_s, machine=this_machine(), start_ticks=_start_ticks(os.getpid()),
                              workers=[])  # no task runs before set_workers(strict=True) records the workers
            if not _create_exclusive(self.location, _generation_name(mine.generation),
                                     json.dumps(mine.to_json(), indent=2).encode(), mine.lease_id, self.deadline_s):
                continue  # another run created that generation first: look again
            try:
                if _generations(self.location, self.deadline_s)[-1] != mine.generation:
                    self._delete(mine.generation)  # a later generation appeared at once: look again
                    continue
                if holder is not None:  # read again: it cannot change any more (its renewals see ours now)
                    holder = _read(self.location, holder.generation, self.deadline_s) or holder
                if holder is not None and holder.released is None:
                    logger.warning("taking over %s from the run of %s: %s", self.location.url, holder.describe(),
                                   reason or "--steal-lock")
                    self._mark_superseded(holder, mine.generation)
                self.quiet_until = self._quiet_until(holder)
            except BaseException:
                self._delete(mine.generation)
                raise
            self.previous = holder
            self._holder = mine
            self.lease = Lease(mine.generation, mine.lease_id, self.lease_s)
            self._prune(mine.generation)
            logger.debug("took the run folder %s (lock generation %d, lease %g s)", self.location.url,
                        mine.generation, self.lease_s)
            self._thread = threading.Thread(target=self._heartbeats, name="opso-run-lock", daemon=True)
            self._thread.start()  # the last step: nothing after it can fail and leave a renewed lock behind
            return self
        holder = read_holder(self.location)
        raise RunLockHeldError(self._held_message(holder) if holder else f"could not take {self.location.url}")

    def _held_message(self, holder: LockHolder) -> str:
        return (f"the output folder {self.location.url} is in use by another opso run ({holder.describe()}); wait "
                f"for it to end, or if it is dead, run again once its heartbeat is {holder.lease_s:g} s old (or now "
                "with --steal-lock)")

    def _quiet_until(self, holder: LockHolder | None) -> float:
        """When the tasks of the run ``holder`` describes can no longer write: :meth:`LockHolder.quiet_at`,
        at most :func:`quiet_after_s` of its lease from now (its clock may run ahead of ours)."""
        if holder is None:
            return 0.0
        now = time.time()
        ahead = max(holder.heartbeat, holder.released or 0.0) - now  # write times (tasks_quiet_at is a future one)
        if ahead > 5:
            logger.warning("the lock of %s was written by a clock %.0f s ahead of this machine's; check that "
                           "the machines' clocks are synchronised (NTP)", self.location.url, ahead)
        return min(holder.quiet_at(now, self.steal), now + quiet_after_s(holder.lease_s))

    def _mark_superseded(self, holder: LockHolder, generation: int) -> None:
        """Write ``superseded_by`` into the previous holder's file (read by its fences even where a
        directory listing lags)."""
        try:
            self._write(dataclasses.replace(holder, superseded_by=generation))
        except Exception as exc:  # the listing still shows the new generation
            logger.debug("could not mark generation %d superseded: %s", holder.generation, exc)

    def _delete(self, generation: int) -> None:
        try:
            self.location.fs.rm_file(self.location.path(_generation_name(generation)))
        except Exception as exc:  # a lock left behind expires after lease_s
            logger.warning("could not delete the lock generation %d of %s: %s", generation, self.location.url, exc)

    def _prune(self, generation: int) -> None:
        try:
            old = [g for g in _generations(self.location, self.deadline_s) if g < generation - KEEP_GENERATIONS]
            if old:
                self.location.fs.rm([self.location.path(_generation_name(g)) for g in old])
        except Exception as exc:  # old generations are history only
            logger.debug("could not delete old lock generations: %s", exc)

    def wait_until_quiet(self) -> None:
        """Before the run's first write: wait until no task of the run this lock took over can still write."""
        wait_s = self.quiet_until - time.time()
        if wait_s > 0:
            logger.warning("waiting %.0f s before writing in %s: tasks of the run it was taken from (%s) may still "
                           "be writing until then", wait_s, self.location.url, self.previous.describe())
        last_mark = time.monotonic()
        while time.time() < self.quiet_until:
            self.check()
            if time.monotonic() - last_mark >= self.lease_s / 8:
                last_mark = time.monotonic()
                self._reassert_superseded()
            time.sleep(min(1.0, max(0.0, self.quiet_until - time.time())))

    def _reassert_superseded(self) -> None:
        """Write ``superseded_by`` again into the previous holder's file if its driver's last renewal,
        racing the takeover, wrote over it (its next renewal then sees it and stops)."""
        previous, mine = self.previous, self._holder
        if previous is None or previous.released is not None or mine is None:
            return
        try:
            current = _read(self.location, previous.generation, self.deadline_s)
        except StorageError as exc:
            logger.debug("could not read the previous lock generation: %s", exc)
            return
        if current is not None and current.released is None and current.superseded_by is None:
            self._mark_superseded(current, mine.generation)

    # ---- holding it

    def mark_used(self) -> None:
        """Say that the run wrote (or is about to write) in the folder: :meth:`release` then marks the
        lock released instead of deleting it."""
        self._used = True

    def mark_tasks_started(self) -> None:
        """Say that tasks that write are being submitted: until then a release needs no wait after it."""
        self._tasks_started = True

    def mark_quiesced(self, *, stopped: bool = False) -> None:
        """Say that no task of this run is running: all finished (a run taking the folder after the
        release need not wait), or ``stopped`` with the cluster that ran them (a write in flight may
        still land within the write deadline)."""
        if self._tasks_done != "finished":
            self._tasks_done = "stopped" if stopped else "finished"

    def set_workers(self, workers: list | None, *, strict: bool = False) -> None:
        """Record the run's local worker processes (:func:`local_worker_processes`; None: unknown or
        remote), so that a rerun on this host can tell when all of them have ended.

        With ``strict`` (before the first task: the lock says "no worker" until then) the record is
        written now and a storage error is raised; otherwise a failed write is left to the next
        heartbeat, which carries the record."""
        with self._io:
            holder = self._holder
            if holder is None or self._lost or holder.workers == workers:
                return
            self._holder = dataclasses.replace(holder, workers=workers)
        try:
            self.renew()
        except Exception as exc:
            if strict:
                raise
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("could not record the run's workers in its lock on %s (the next heartbeat will): %s",
                           self.location.url, exc)

    @property
    def workers(self) -> list | None:
        """The run's recorded local worker processes (None: unknown or remote)."""
        holder = self._holder
        return None if holder is None else holder.workers

    @property
    def lost(self) -> str | None:
        """Why this run lost the folder, or None while it holds it."""
        return self._lost

    def check(self) -> None:
        """Raise if this run lost the folder: :class:`RunStorageError` when renewing failed because the
        storage did, :class:`RunLockLostError` otherwise."""
        holder = self._holder
        if not self._lost and holder is not None and holder.heartbeat_age_s() > 0.75 * self.lease_s:
            self._lose_by_age(holder)
        if self._lost:
            raise (RunStorageError if self._lost_to_storage else RunLockLostError)(self._lost)

    def _lose_by_age(self, holder: LockHolder) -> None:
        age = holder.heartbeat_age_s()
        if self._last_error:
            self._lost_to_storage = True
            self._lost = (f"the storage failed for {age:.0f} s during the run ({self._last_error}), longer than the "
                          f"run's lock allows (lease {self.lease_s:g} s), so another run may have taken "
                          f"{self.location.url}; this run stopped writing. Run the same command again once the "
                          "storage works")
        else:
            self._lost = (f"this run could not renew its lock on {self.location.url} for {age:.0f} s (lease "
                          f"{self.lease_s:g} s: the driver was paused), so another run may have taken the folder; "
                          "it stopped writing. Run the same command again to resume")

    def _write(self, holder: LockHolder) -> None:
        self.location.write_bytes_unguarded(_generation_name(holder.generation),
                                            json.dumps(holder.to_json(), indent=2).encode(), in_place_when_full=True,
                                            deadline_s=self.deadline_s)

    def renew(self) -> None:
        """Write a new heartbeat now (the heartbeat thread calls this); marks the lock lost instead
        when a later generation exists, the file says ``superseded_by``, or the last heartbeat is too
        old to renew."""
        with self._io:
            holder = self._holder
            if holder is None or self._lost:
                return
            now = time.time()  # the heartbeat written is taken before the checks below, never after them
            if holder.heartbeat_age_s(now) > 0.75 * self.lease_s:
                self._lose_by_age(holder)
                return
            generations = _generations(self.location, self.deadline_s)
            current = _read(self.location, holder.generation, self.deadline_s)
            if (current is None or current.superseded_by is not None or current.lease_id != holder.lease_id
                    or (generations and generations[-1] > holder.generation)):
                newer = _read(self.location, generations[-1], self.deadline_s) if generations else None
                self._lost = (f"another run took over {self.location.url}"
                              + (f" ({newer.describe()})" if newer else "") + "; this run stopped writing")
                return
            if holder.heartbeat_age_s() > 0.75 * self.lease_s:  # the checks took so long it may be taken over
                self._lose_by_age(holder)
                return
            renewed = dataclasses.replace(holder, heartbeat=now)
            self._write(renewed)
            self._holder = renewed
            self._last_error = None

    def _heartbeats(self) -> None:
        period = self.lease_s / 8
        while not self._stop.wait(period):
            try:
                self.renew()
            except Exception as exc:  # storage trouble: try again next period; renew() gives up in time
                self._last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("could not renew the run's lock on %s: %s", self.location.url, exc)
            if self._lost:
                logger.error("%s", self._lost)
                return

    # ---- letting go

    def release(self) -> None:
        """Stop the heartbeat and mark the lock released (if this run still holds it)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.deadline_s * 3)
        if not self._io.acquire(timeout=self.deadline_s * 3):
            logger.warning("could not release the run's lock on %s in time (it expires %g s after its last "
                           "heartbeat)", self.location.url, self.lease_s)
            return
        try:
            holder, self._holder = self._holder, None
            if holder is None or self._lost:
                return
            generations = _generations(self.location, self.deadline_s)
            if generations and generations[-1] == holder.generation:
                if self._used:
                    now = time.time()
                    stopped = now + check_interval_s(self.lease_s) + self.deadline_s
                    done = self._tasks_done if self._tasks_started else "finished"  # no task ever wrote
                    quiet = {"finished": now, "stopped": stopped}.get(done)
                    self._write(dataclasses.replace(holder, released=now, tasks_quiet_at=quiet))
                else:
                    self._discard(holder)
                _CHECKED.pop((self.location.url, holder.generation, holder.lease_id), None)
        except Exception as exc:  # the lock then expires on its own after lease_s
            logger.warning("could not release the run's lock on %s (it expires %g s after its last "
                           "heartbeat): %s", self.location.url, self.lease_s, exc)
        finally:
            self._io.release()

    def _discard(self, holder: LockHolder) -> None:
        """Delete the lock of a run that wrote nothing, and the local folders made for it."""
        self.location.fs.rm_file(self.location.path(_generation_name(holder.generation)))
        for folder in self._created:
            try:
                os.rmdir(folder)
            except OSError:  # not empty (another run's files, or a generation of another run): keep it
                break

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name (a container without /etc/passwd entry)
        return str(os.getuid()) if hasattr(os, "getuid") else "?"
