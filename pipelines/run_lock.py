"""One run per output folder: a lock taken atomically, renewed while the run goes on, and fenced writes.

The lock lives in the run folder, as files ``_lock/<generation>.json`` (``000000001.json``, ...).
The holder is the highest generation; its file says who holds it (host, pid, user, command),
since when, its lease id, its last heartbeat and its lease time ``lease_s`` (``output.lease_s``).

**Taking the folder.** A run creates generation ``n + 1`` with an atomic create-if-absent: a hard
link of a finished temporary file locally (``O_EXCL`` where links are not supported; both are atomic
on local disks and NFS), a conditional PUT (``If-None-Match: *``) on S3, which AWS S3, MinIO and
the test server honour. Of two runs that try at once, exactly one creates the generation; the other
reads the new holder and stops. A run may take the next generation only when generation ``n`` is
released, or stale:

- its heartbeat is older than its ``lease_s`` (default 120 s: the holder stopped, lost its node or
  was cut off from the storage), or
- it was started on this host and its process is gone (a crashed or killed driver: taken at once), or
- ``--steal-lock`` is given (for a holder known to be dead; its tasks are fenced off as below).

**Renewing.** The holder's driver rewrites its file every ``lease_s / 8`` seconds (a thread). It
renews only while its last heartbeat is younger than ``3/4 lease_s``: once its lease could have
been taken over, it never renews, it has lost the folder.

**Fencing.** Every write and delete of the run (the driver's and every task's) goes through an
:class:`~pipelines.outputs.OutputLocation` carrying the run's :class:`Lease`, whose :meth:`Lease.check`
lists ``_lock/`` and reads the run's own file (at most every ``lease_s / 12`` seconds per process):
the write goes ahead only when no higher generation exists and the heartbeat is younger than
``lease_s / 2``. While the heartbeat is older (the driver paused), a task waits; once it is older
than ``lease_s`` the task fails with :class:`~pipelines.errors.RunLockLostError`. So a write starts
at most ``lease_s / 2 + lease_s / 12`` after the last heartbeat, while a takeover comes at the
earliest ``lease_s`` after it: a task's write has ``5/12 lease_s`` (50 s by default) to finish
before another run may begin. This assumes clocks agree to within a few seconds (NTP), as on
any cluster. After ``--steal-lock`` of a live holder, its tasks stop within ``lease_s / 12``.

**Releasing.** At the end of the run (also on errors and Ctrl-C) the holder marks its file
``released``; the next run takes generation ``n + 1``. Old generations beyond the last few are
deleted by the holder. A run that stops before writing anything (a check after the lock failed)
deletes its generation instead, and the folders it created for it, so it leaves no trace.
"""

from __future__ import annotations

import contextlib
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

from pipelines.errors import RunLockHeldError, RunLockLostError, StorageError
from pipelines.outputs import OutputLocation

__all__ = ["DEFAULT_LEASE_S", "LOCK_FOLDER", "Lease", "LockHolder", "RunLock", "read_holder"]

logger = logging.getLogger(__name__)

LOCK_FOLDER = "_lock"
#: seconds without a heartbeat after which another run may take the folder over (``output.lease_s``)
DEFAULT_LEASE_S = 120.0
#: generations kept below the holder's (for ``opso status`` and post-mortems); older ones are deleted
KEEP_GENERATIONS = 4


def _generation_name(generation: int) -> str:
    return f"{LOCK_FOLDER}/{generation:09d}.json"


def _generations(location: OutputLocation) -> list[int]:
    """The lock generations in the folder, ascending (a fresh listing)."""
    out = []
    for name in location.list(LOCK_FOLDER):
        stem, _, ext = name.partition(".")
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

    @classmethod
    def from_json(cls, generation: int, data: dict) -> LockHolder:
        return cls(generation=generation, lease_id=str(data.get("lease_id", "")), host=str(data.get("host", "?")),
                   pid=int(data.get("pid", -1)), user=str(data.get("user", "?")),
                   command=str(data.get("command", "")), started=float(data.get("started", 0.0)),
                   heartbeat=float(data.get("heartbeat", 0.0)),
                   lease_s=float(data.get("lease_s", DEFAULT_LEASE_S)), released=data.get("released"))

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("generation")
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
        return (f"host {self.host}, pid {self.pid}, user {self.user}, started {_iso(self.started)}, "
                f"last heartbeat {self.heartbeat_age_s(now):.0f} s ago")

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why another run may take this lock over without ``--steal-lock``, or None."""
        if self.released is not None:
            return "it was released"
        age = self.heartbeat_age_s(now)
        if age > self.lease_s:
            return f"its last heartbeat was {age:.0f} s ago (more than its lease of {self.lease_s:g} s)"
        if self.host == socket.gethostname() and not _process_alive(self.pid):
            return f"its process {self.pid} on this host has ended"
        return None


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def read_holder(location: OutputLocation) -> LockHolder | None:
    """The lock file of the highest generation in ``location`` (None where no run ever took it)."""
    generations = _generations(location)
    if not generations:
        return None
    return _read(location, generations[-1])


def _read(location: OutputLocation, generation: int) -> LockHolder:
    rel = _generation_name(generation)
    for attempt in range(5):  # an O_EXCL create may be read before its content is written
        try:
            return LockHolder.from_json(generation, json.loads(location.read_bytes(rel)))
        except (ValueError, TypeError):
            if attempt == 4:
                raise StorageError(f"the lock file {location.url_of(rel)} is not readable JSON; if no run is "
                                   "using the folder, delete it") from None
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _create_exclusive(location: OutputLocation, rel: str, data: bytes) -> bool:
    """Create ``rel`` holding ``data`` only if it does not exist; True if this call created it."""
    target = location.path(rel)
    try:
        if location.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = os.path.join(os.path.dirname(target), f".{uuid.uuid4().hex}.tmp-{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, target)  # atomic, also on NFS; fails if the target exists
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                return _create_with_o_excl(target, data)
            finally:
                os.unlink(tmp)
            return True
        if "s3" in _protocols(location.fs):
            try:
                location.fs.pipe_file(target, data, mode="create")  # If-None-Match: *
            except FileExistsError:
                return False
            return True
        _warn_not_atomic(location)
        if location.fs.exists(target):
            return False
        location.fs.pipe_file(target, data)
        return True
    except Exception as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"cannot write the lock {location.url_of(rel)}: {type(exc).__name__}: {exc}") from exc


def _create_with_o_excl(target: str, data: bytes) -> bool:
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
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
        """Seconds a successful check is trusted in one process."""
        return self.lease_s / 12

    @property
    def fresh_s(self) -> float:
        """Oldest heartbeat (s) under which writes go ahead."""
        return self.lease_s / 2

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
        if checked is not None and time.monotonic() - checked < self.check_interval_s:
            return
        while True:
            holder = self._own_holder(location)
            age = holder.heartbeat_age_s()
            if age <= self.fresh_s:
                _CHECKED[key] = time.monotonic()
                return
            if age > self.lease_s:
                _CHECKED.pop(key, None)
                raise RunLockLostError(
                    f"the run's driver ({holder.host}, pid {holder.pid}) has not renewed its lock on {location.url} "
                    f"for {age:.0f} s (lease {self.lease_s:g} s), so another run may have taken the folder; this "
                    "task writes nothing. Run the same command again to resume")
            time.sleep(min(self.check_interval_s, 1.0))

    def _own_holder(self, location: OutputLocation) -> LockHolder:
        generations = _generations(location)
        if not generations or self.generation not in generations:
            raise RunLockLostError(f"the run's lock (generation {self.generation}) is gone from {location.url}; "
                                   "this run writes nothing more")
        if generations[-1] > self.generation:
            newer = _read(location, generations[-1])
            raise RunLockLostError(f"another run took over {location.url} ({newer.describe()}); this run writes "
                                   "nothing more")
        holder = _read(location, self.generation)
        if holder.lease_id != self.lease_id:
            raise RunLockLostError(f"the lock of {location.url} (generation {self.generation}) belongs to another run")
        if holder.released is not None:
            raise RunLockLostError(f"the run's lock on {location.url} was released; this run writes nothing more")
        return holder


_CHECKED: dict = {}  # (url, generation, lease id) -> time.monotonic() of the last successful check


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

    Use ``with RunLock(location).acquire() as lock:`` or call :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, location: OutputLocation, lease_s: float = DEFAULT_LEASE_S, *, steal: bool = False):
        self.location = location.with_lease(None)
        self.lease_s = float(lease_s)
        self.steal = steal
        self.lease: Lease | None = None
        self.previous: LockHolder | None = None
        self._holder: LockHolder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._io = threading.Lock()
        self._used = False
        self._created: list[str] = []  # local folders this lock created (deepest first)

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
            generations = _generations(self.location)
            top = generations[-1] if generations else 0
            if top:
                holder = _read(self.location, top)
                reason = holder.stale_reason()
                if reason is None and not self.steal:
                    raise RunLockHeldError(self._held_message(holder))
                if holder.released is None:
                    logger.warning("taking over %s from the run of %s: %s", self.location.url, holder.describe(),
                                   reason or "--steal-lock")
                self.previous = holder
            now = time.time()
            mine = LockHolder(generation=top + 1, lease_id=uuid.uuid4().hex, host=socket.gethostname(),
                              pid=os.getpid(), user=_user(), command=_command_line(), started=now, heartbeat=now,
                              lease_s=self.lease_s)
            if not _create_exclusive(self.location, _generation_name(mine.generation),
                                     json.dumps(mine.to_json(), indent=2).encode()):
                continue  # another run created that generation first: look again
            if _generations(self.location)[-1] != mine.generation:  # a later generation appeared at once
                self._write(dataclasses.replace(mine, released=time.time()))
                continue
            self._holder = mine
            self.lease = Lease(mine.generation, mine.lease_id, self.lease_s)
            self._prune(mine.generation)
            self._thread = threading.Thread(target=self._heartbeats, name="opso-run-lock", daemon=True)
            self._thread.start()
            logger.info("took the run folder %s (lock generation %d, lease %g s)", self.location.url,
                        mine.generation, self.lease_s)
            return self
        holder = read_holder(self.location)
        raise RunLockHeldError(self._held_message(holder) if holder else f"could not take {self.location.url}")

    def _held_message(self, holder: LockHolder) -> str:
        return (f"the output folder {self.location.url} is in use by another opso run ({holder.describe()}); wait "
                f"for it to end, or if it is dead, run again once its heartbeat is {holder.lease_s:g} s old (or now "
                "with --steal-lock)")

    def _prune(self, generation: int) -> None:
        old = [g for g in _generations(self.location) if g < generation - KEEP_GENERATIONS]
        if old:
            try:
                self.location.fs.rm([self.location.path(_generation_name(g)) for g in old])
            except Exception as exc:  # old generations are history only
                logger.debug("could not delete old lock generations: %s", exc)

    # ---- holding it

    def mark_used(self) -> None:
        """Say that the run wrote (or is about to write) in the folder: :meth:`release` then marks the
        lock released instead of deleting it."""
        self._used = True

    @property
    def lost(self) -> str | None:
        """Why this run lost the folder, or None while it holds it."""
        return self._lost

    def check(self) -> None:
        """Raise :class:`RunLockLostError` if the heartbeat thread found the folder lost."""
        if self._lost:
            raise RunLockLostError(self._lost)

    def _write(self, holder: LockHolder) -> None:
        self.location.write_bytes_unguarded(_generation_name(holder.generation),
                                            json.dumps(holder.to_json(), indent=2).encode(), in_place_when_full=True)

    def renew(self) -> None:
        """Write a new heartbeat now (the heartbeat thread calls this); marks the lock lost instead
        when a later generation exists or the last heartbeat is too old to renew."""
        with self._io:
            holder = self._holder
            if holder is None or self._lost:
                return
            age = holder.heartbeat_age_s()
            if age > 0.75 * self.lease_s:
                self._lost = (f"this run could not renew its lock on {self.location.url} for {age:.0f} s (lease "
                              f"{self.lease_s:g} s: the driver was paused or cut off from the storage), so another "
                              "run may have taken the folder; it stopped writing. Run the same command again to "
                              "resume")
                return
            generations = _generations(self.location)
            if not generations or generations[-1] != holder.generation:
                newer = _read(self.location, generations[-1]) if generations else None
                self._lost = (f"another run took over {self.location.url}"
                              + (f" ({newer.describe()})" if newer else "") + "; this run stopped writing")
                return
            renewed = dataclasses.replace(holder, heartbeat=time.time())
            self._write(renewed)
            self._holder = renewed

    def _heartbeats(self) -> None:
        period = self.lease_s / 8
        while not self._stop.wait(period):
            try:
                self.renew()
            except Exception as exc:  # storage trouble: try again next period; renew() gives up in time
                logger.warning("could not renew the run's lock on %s: %s", self.location.url, exc)
            if self._lost:
                logger.error("%s", self._lost)
                return

    # ---- letting go

    def release(self) -> None:
        """Stop the heartbeat and mark the lock released (if this run still holds it)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.lease_s)
        with self._io:
            holder, self._holder = self._holder, None
            if holder is None or self._lost:
                return
            try:
                generations = _generations(self.location)
                if generations and generations[-1] == holder.generation:
                    if self._used:
                        self._write(dataclasses.replace(holder, released=time.time()))
                    else:
                        self._discard(holder)
                    _CHECKED.pop((self.location.url, holder.generation, holder.lease_id), None)
            except Exception as exc:  # the lock then expires on its own after lease_s
                logger.warning("could not release the run's lock on %s (it expires %g s after its last "
                               "heartbeat): %s", self.location.url, self.lease_s, exc)

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
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return str(os.getuid()) if hasattr(os, "getuid") else "?"
