"""The stage kinds: one module each, registered here by one line (:mod:`pipelines.stages.base` says
what a kind provides). The driver runs the kinds of :data:`STAGE_KINDS` in phase order, in this
order within a phase, and names none of them.

A new kind: a module exporting ``KIND`` (a :class:`~pipelines.stages.base.StageKind`), one line below,
and its page in the docs.
"""

from __future__ import annotations

from pipelines.stages import birdnet, cnn, linear, localization, spectrograms

__all__ = ["STAGE_KINDS", "enabled_kinds", "output_names"]

#: every registered stage kind, in the order they are planned within a phase
STAGE_KINDS = [
    spectrograms.KIND,
    cnn.KIND,
    birdnet.KIND,
    linear.KIND,
    localization.KIND,
]


def enabled_kinds(config) -> list:
    """The registered kinds the configuration asks for, in phase order (registry order within a phase)."""
    return sorted((kind for kind in STAGE_KINDS if kind.enabled(config)), key=lambda kind: kind.phase)


def output_names() -> tuple:
    """Every name any registered kind may write (:class:`~pipelines.outputs.run_folder.OutputName`):
    what ``--overwrite`` may delete, beside the driver's files and the markers."""
    return tuple(name for kind in STAGE_KINDS for name in kind.output_names)
