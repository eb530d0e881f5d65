"""What the driver hands every stage kind when it plans: one frozen :class:`RunContext`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from opso_core.spectrogram import SpectrogramParams
    from pipelines.config import RunConfig
    from pipelines.driver.clip_plan import ClipIndex
    from pipelines.outputs.location import OutputLocation

__all__ = ["ClipSettings", "RunContext"]


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """How files are cut into clips (``generate_clip_times_df`` semantics): seconds, seconds, final_clip."""

    duration_s: float
    overlap_s: float
    final_clip: str | None


@dataclasses.dataclass(frozen=True, eq=False)
class RunContext:
    """Everything a stage kind plans from, in one frozen object.

    Attributes
    ----------
    config : RunConfig
    location : OutputLocation
        The run folder, carrying the run's lease.
    inventory : pandas.DataFrame
        ``inventory.parquet`` (with ``n_clips``).
    clip_index : ClipIndex
        The run's clips, per file (:class:`pipelines.driver.clip_plan.ClipIndex` with :attr:`clip_settings`):
        a stage's ``Stage.plan``, or the clips it cuts its own from. Never a row per clip.
    clip_settings : ClipSettings
    sample_rate_hz : int
        The run's sample rate (``spectrogram.sample_rate``, or the archive's commonest).
    spectrogram_params : SpectrogramParams
        ``spectrogram.*`` resolved at ``sample_rate_hz``.
    gpu_workers : bool
        The cluster has workers with the ``GPU`` resource (where tasks that can use one go).
    gpu_layout : bool
        Size tasks for GPU workers: as the run's first session found its cluster, so that a resume
        whose GPU workers have not joined yet plans the same ranges.
    """

    config: RunConfig
    location: OutputLocation | None
    inventory: pd.DataFrame | None
    clip_index: ClipIndex | None
    clip_settings: ClipSettings | None
    sample_rate_hz: int
    spectrogram_params: SpectrogramParams
    gpu_workers: bool = False
    gpu_layout: bool = False
