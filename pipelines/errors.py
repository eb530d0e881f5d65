"""Typed errors of the pipeline (configuration, storage, output conflicts)."""

from __future__ import annotations

from opso_core.errors import OpsoError

__all__ = ["ConfigError", "OutputConflictError", "PipelineError", "StorageError"]


class PipelineError(OpsoError):
    """Base class of pipeline errors."""


class ConfigError(PipelineError, ValueError):
    """The run configuration is invalid; the message names the offending key."""


class StorageError(PipelineError, OSError):
    """Input or output storage cannot be listed, read or written."""


class OutputConflictError(PipelineError, FileExistsError):
    """The output URL holds a run with a different configuration."""
