"""Checks that run before the cluster starts and before anything is deleted.

A run that would fail on its configuration, its input, its output folder or its cluster settings
fails here, in seconds, with one message, leaving the output folder as it was:

1. the cluster settings (kind, address, batch-system requirements; :mod:`pipelines.driver.cluster`);
2. input and output are different places, neither inside the other;
3. the input can be listed and ``input.pattern`` matches files (credentials and endpoint work);
4. every enabled stage kind's own checks (:meth:`pipelines.stages.base.StageKind.check`: a CNN model can be
   read and its preprocessing reproduced, the recorders table is readable, ...);
5. the output folder is writable and no other run holds it: the run takes its lock here
   (:mod:`pipelines.outputs.run_lock`), and from here on the folder is this run's until it releases it;
6. the output folder holds no other archive's finished work (unless ``--overwrite``); a run of the same
   archive with other settings is updated (:func:`pipelines.driver.identity.decide_start`).

When the check after the lock fails, the lock is released (and deleted: nothing was written)
before the error propagates.

Band-versus-Nyquist checks need the sample rate: with ``spectrogram.sample_rate`` set they are part
of the configuration's own validation; otherwise they run once the inventory has found the rate.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import fsspec

from pipelines.config import RunConfig
from pipelines.driver.identity import decide_start
from pipelines.driver.inventory import list_archive
from pipelines.errors import ConfigError, StorageError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import PreviousRun, read_previous_run
from pipelines.outputs.run_lock import RunLock
from pipelines.review.thresholds import calibrated_config
from pipelines.stages import enabled_kinds, output_names

__all__ = ["Preflight", "check_locations", "check_run"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Preflight:
    """What the checks found: the input files, the folders that could not be listed, how the run
    starts in its output folder, and the output folder's lock, held until :meth:`release`.

    ``start`` is ``new``, ``resume``, ``update``, ``overwrite`` or ``replace``
    (:func:`pipelines.driver.identity.decide_start`).
    """

    files: tuple[str, ...]
    start: str
    previous: PreviousRun | None
    cluster_kind: str | None
    lock: RunLock | None = None
    unlisted: tuple[tuple[str, str], ...] = ()
    config: RunConfig | None = None  # the configuration resolved with the folder's calibrated thresholds

    @property
    def lease(self):
        """The lease the run's writes carry (None without a lock)."""
        return None if self.lock is None else self.lock.lease

    def release(self) -> None:
        """Release the output folder's lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()


def _place(url: str, storage_options: dict) -> tuple[str, str | None, str]:
    """(protocol, endpoint, normalised path) of a URL, to compare two locations."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    except Exception as exc:  # an unknown protocol or bad options: the listing will report it properly
        logger.debug("cannot resolve %s: %s", url, exc)
        return url.split("://", 1)[0] if "://" in url else "file", None, url.rstrip("/")
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return "file", None, os.path.realpath(path)
    endpoint = (storage_options.get("client_kwargs") or {}).get("endpoint_url") or storage_options.get("endpoint_url")
    return protocols[0], endpoint, path.rstrip("/")


def _home_or_above(path: str) -> bool:
    home = os.path.realpath(os.path.expanduser("~"))
    path = path.rstrip("/") or "/"
    return path == home or home.startswith(path.rstrip("/") + "/") or path == "/"


def check_locations(config: RunConfig) -> None:
    """Refuse an output that is the input, or inside it, or that contains it, and an output that is
    the home folder (``~``) or a folder above it: a run's files would mix with the user's.

    Raises
    ------
    ConfigError
        Naming both URLs.
    """
    inp = _place(config.input.url, config.input.storage_options)
    out = _place(config.output.url, config.output.storage_options)
    if out[0] == "file" and _home_or_above(out[2]):
        raise ConfigError(f"output.url {config.output.url} is {out[2]}, your home folder or a folder above it; give "
                          "the run a folder of its own, e.g. ~/opso-runs/<name>")
    if out[0] == "file" and os.path.isfile(out[2]):
        raise ConfigError(f"output.url {config.output.url} is a file; give a folder (new, or a run's)")
    if inp[0] != out[0] or (inp[1] and out[1] and inp[1] != out[1]):
        return
    a, b = inp[2], out[2]
    if a == b or b.startswith(a.rstrip("/") + "/") or a.startswith(b.rstrip("/") + "/"):
        relation = "is" if a == b else "is inside" if b.startswith(a) else "contains"
        raise ConfigError(f"output.url {config.output.url} {relation} input.url {config.input.url}; write the "
                          "results to a separate folder or prefix (opso never writes among the recordings)")


def check_run(config: RunConfig, *, cluster_kind: str | None = None, overwrite: bool = False,
              check_cluster: bool = True, steal_lock: bool = False) -> Preflight:
    """Run every check that needs no cluster and take the output folder's lock (see the module docstring).

    The caller releases the lock (:meth:`Preflight.release`) when the run ends.

    Parameters
    ----------
    config : RunConfig
    cluster_kind : str, optional
        Overrides ``config.cluster.kind`` (the ``--cluster`` option).
    overwrite : bool
        ``--overwrite``: a previous run of another configuration will be cleared (later, once the
        cluster is up), instead of refused.
    check_cluster : bool
        False when the caller brings its own Dask client.
    steal_lock : bool
        ``--steal-lock``: take the folder even from a live holder.

    Raises
    ------
    ConfigError, StorageError, OutputConflictError, ClusterError
        ``RunLockHeldError`` (an ``OutputConflictError``) when another run holds the folder.
    """
    kind = None
    if check_cluster:
        from pipelines.driver.cluster import check_cluster_settings

        kind = check_cluster_settings(config.cluster, cluster_kind)
    check_locations(config)
    inp = config.input
    listing = list_archive(inp.url, inp.pattern, inp.storage_options)
    if not listing.files and not listing.unlisted:
        raise StorageError(f"no files match input.pattern {inp.pattern!r} under {inp.url}")
    for folder, message in listing.unlisted:
        logger.warning("cannot list %s (%s): its recordings are not part of the run", folder, message)
    for stage_kind in enabled_kinds(config):
        stage_kind.check(config)
    location = OutputLocation(config.output.url, config.output.storage_options)
    read_previous_run(location, output_names())  # a folder of foreign outputs is refused before anything is written
    location.check_writable()
    lock = RunLock(location, config.output.lease_s, steal=steal_lock).acquire()
    try:
        previous = read_previous_run(location, output_names())
        config = calibrated_config(config, location, previous=previous)
        start = decide_start(location, previous, config, overwrite)
    except BaseException:
        lock.release()
        raise
    logger.info("checks passed: %d input files; output %s (%s)", len(listing.files), location.url, start)
    return Preflight(listing.files, start, previous, kind, lock, listing.unlisted, config)
