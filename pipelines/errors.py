"""Typed errors of the pipeline, each with the exit code the ``opso`` command ends with
(:mod:`pipelines.exit_codes`: 2 for configuration, input, output and storage errors, 3 for the cluster).
"""

from __future__ import annotations

from opso_core.errors import OpsoError
from pipelines.exit_codes import EXIT_CLUSTER, EXIT_LOCK_LOST, EXIT_STORAGE, EXIT_USER_ERROR

__all__ = ["ClusterError", "ConfigError", "OutputConflictError", "PipelineError", "RunLockHeldError",
           "RunLockLostError", "RunStorageError", "StorageError", "exit_code_of"]


class PipelineError(OpsoError):
    """Base class of pipeline errors."""

    exit_code = EXIT_USER_ERROR


class ConfigError(PipelineError, ValueError):
    """The run configuration is invalid; the message names the offending key."""


class StorageError(PipelineError, OSError):
    """Input or output storage cannot be listed, read or written."""


class OutputConflictError(PipelineError, FileExistsError):
    """The output URL holds a run with a different configuration, or files opso did not write."""


class RunLockHeldError(OutputConflictError):
    """Another run holds the output folder's lock (the message names it: host, pid, user, heartbeat)."""


class RunLockLostError(PipelineError, RuntimeError):
    """This run no longer holds its output folder's lock: it must not write there any more."""

    exit_code = EXIT_LOCK_LOST


class RunStorageError(StorageError):
    """The storage failed while the run was going on (the run is resumable once it works again)."""

    exit_code = EXIT_STORAGE


class ClusterError(PipelineError, RuntimeError):
    """The Dask cluster cannot be started, reached or kept alive (the run can be resumed later)."""

    exit_code = EXIT_CLUSTER


def exit_code_of(exc: BaseException) -> int:
    """The ``opso`` exit code for an error raised by a run (2 for any other opso error)."""
    return getattr(exc, "exit_code", EXIT_USER_ERROR)
