"""What every stage kind says about itself, so that the driver can run it without naming it.

A stage kind is one module of :mod:`pipelines.stages` exporting one :class:`StageKind` (``KIND``),
registered by one line in :data:`pipelines.stages.STAGE_KINDS`. It says:

- its ``name`` and ``phase`` (1: detectors, which read audio; 2: stages that read every detection, run
  once phase 1 has finished without a failed task);
- :meth:`~StageKind.enabled`: whether the configuration asks for it;
- :meth:`~StageKind.check`: its checks that need no cluster (called by preflight, before the lock);
- :attr:`~StageKind.output_names`: every name it may write in the run folder (``--overwrite`` deletes
  exactly the names of the registered kinds, and nothing else);
- :meth:`~StageKind.products`: its outputs (:class:`Product`), each with the settings it depends on, from
  which its identity is computed;
- :meth:`~StageKind.plan`: its :class:`~pipelines.driver.tasks.Stage`\\ s (ranges, picklable task) from a
  :class:`RunContext`;
- :meth:`~StageKind.counters`: the detection counters it adds to the summary (zero-initialised);
- :meth:`~StageKind.write_empty`: its zero-row tables, so that every table folder reads after any run.

Identity: a :class:`Product`'s ``settings`` are flat ``{key: value}`` pairs named like the
configuration (``ribbit[gpt].threshold``) plus values derived from it (``cnn[birds].model_sha256``);
``inputs`` names the products it reads. Its identity is a hash of its settings and of every input's
settings (:func:`pipelines.driver.identity.resolve_products`), so a rerun keeps a product whose
identity is unchanged and recomputes the rest, naming the keys that changed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pipelines.driver.context import ClipSettings, RunContext

if TYPE_CHECKING:
    from opso_core.spectrogram import SpectrogramParams
    from pipelines.config import RunConfig
    from pipelines.driver.tasks import Stage
    from pipelines.outputs.run_folder import OutputName

__all__ = ["ClipSettings", "Product", "RunContext", "StageKind", "flat_settings"]

#: a task range's name in output file names: ``000000064-000000128``
RANGE = r"\d{9}-\d{9}"


@dataclasses.dataclass(frozen=True)
class Product:
    """One output of a stage (a score table, a detection table, a Zarr store), with what it depends on.

    Attributes
    ----------
    name : str
        Unique in the run: ``spectrograms``, ``scores:ribbit:gpt``, ``detections:cnn:birds``, ``localizations``.
    stage : str
        The stage whose tasks write it (its markers record the product's identity).
    settings : dict
        ``{key: JSON value}``: the settings its values depend on (configuration keys and derived values),
        not those of its inputs.
    inputs : tuple of str
        Names of the products it reads; their settings are part of its identity.
    outputs : tuple of OutputName
        Its names in the run folder: deleted when it is recomputed under another identity or removed.
    detector : str or None
        For detection tables: the detector whose detections count in the summary. A detection
        table's product is named ``detections:<detector>`` and its tasks report
        ``{"detections": {<detector>: count}}`` (the driver keeps a range's count only while the
        range's marker holds that product's current identity).
    rederivable : bool
        Recomputed from its stored inputs alone, in milliseconds (detections from scores): when only
        such products of a stage changed, the driver gives each task many ranges.
    """

    name: str
    stage: str
    settings: dict[str, Any]
    inputs: tuple[str, ...] = ()
    outputs: tuple[OutputName, ...] = ()
    detector: str | None = None
    rederivable: bool = False


class StageKind:
    """A kind of stage (see the module docstring); subclasses override what applies to them."""

    #: the kind's name (``spectrograms``, ``cnn``, ``localization``)
    name: str = ""
    #: 1: reads audio (detectors); 2: reads every detection of phase 1
    phase: int = 1
    #: every name the kind may write, relative to the run folder (:class:`~pipelines.outputs.run_folder.OutputName`)
    output_names: tuple = ()

    def enabled(self, config: RunConfig) -> bool:
        """Whether the configuration asks for this kind."""
        raise NotImplementedError

    def check(self, config: RunConfig) -> None:
        """Checks that need no cluster and no inventory (preflight); raise ``ConfigError`` with the fix."""

    def check_at_sample_rate(self, config: RunConfig, sample_rate_hz: int, params: SpectrogramParams) -> None:
        """Checks that need the archive's sample rate, when ``spectrogram.sample_rate`` is null (run
        after the inventory; a failure stops the run with ``run.json`` saying why)."""

    def check_inventory(self, config: RunConfig, inventory) -> None:
        """Checks that need the archive's inventory (``pandas.DataFrame``, one row per file): run after it,
        before the previous run is cleared or any task starts; raise ``ConfigError`` with the fix."""

    def run_clips(self, config: RunConfig) -> tuple[ClipSettings, str] | None:
        """The clip settings this kind would give the whole run, and the stage whose analysed clips
        the summary counts; the first kind in the registry that offers them decides."""
        return None

    def products(self, ctx: RunContext) -> list[Product]:
        """The kind's outputs and what each depends on (no inventory needed: ``ctx.clip_index`` may be None)."""
        raise NotImplementedError

    def plan(self, ctx: RunContext, products: dict[str, Product]) -> list[Stage]:
        """The kind's stages for this run; ``products`` are the resolved products of the run (by name).

        May create metadata the tasks write into (a Zarr store's), through ``ctx.location``.
        """
        raise NotImplementedError

    def counters(self, config: RunConfig) -> dict[str, int]:
        """The summary's detection counters this kind adds, zero-initialised (``{"ribbit:gpt": 0}``)."""
        return {}

    def write_empty(self, ctx: RunContext) -> None:
        """Write the kind's zero-row tables where no task wrote one (every table folder reads after a run)."""


def flat_settings(prefix: str, values: dict, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{f"{prefix}.{key}": value}`` for a configuration section's dumped values, less ``drop``
    (lists and tuples become lists, so settings compare as JSON)."""
    out = {}
    for key, value in values.items():
        if key in drop:
            continue
        if isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        elif isinstance(value, list):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f"{prefix}.{key}"] = value
    return out
