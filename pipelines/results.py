"""Readers of a run folder; kept at this path for users' scripts and notebooks (the code lives in
:mod:`pipelines.outputs.results`)."""

from pipelines.outputs.results import *  # noqa: F403
from pipelines.outputs.results import __all__  # noqa: F401
