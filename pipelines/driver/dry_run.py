"""``opso run --dry-run``: what a run of a configuration would keep, compute, recompute and remove in its
output folder, without a cluster, a lock or a write.

It runs the checks that need no cluster (the configuration, the input listing, the model files, the
recorders table), reads the folder's ``run.json`` and compares each product's identity with the one
recorded there (:mod:`pipelines.driver.identity`).
"""

from __future__ import annotations

import dataclasses

from pipelines.config import RunConfig
from pipelines.driver.identity import (
    OutputChange,
    compare_outputs,
    decide_start,
    dry_run_lines,
    flatten_config,
    resolve_config_products,
)
from pipelines.driver.inventory import (
    ArchiveListing,
    archive_changes,
    describe_archive_changes,
    list_archive,
)
from pipelines.driver.preflight import check_locations
from pipelines.errors import StorageError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import read_previous_run
from pipelines.review.thresholds import calibrated_config
from pipelines.stages import enabled_kinds, output_names

__all__ = ["DryRun", "dry_run", "plan_run"]

#: stands in for the archive's sample rate before an inventory has found it (no product is kept then)
_PROVISIONAL_SAMPLE_RATE_HZ = 32000


def plan_run(config: RunConfig, *, overwrite: bool = False) -> list[str]:
    """The lines ``opso run --dry-run`` prints: how the run would start, then per stage and product
    ``kept``, ``compute``, ``recompute (changed: key old → new; ...)`` or ``remove``.

    Raises
    ------
    ConfigError, StorageError, OutputConflictError
        As the run itself would, before its cluster starts (a run of another archive in the folder, ...).
    """
    return dry_run(config, overwrite=overwrite).lines


@dataclasses.dataclass(frozen=True)
class DryRun:
    """What :func:`dry_run` found: its lines, the input listing, how the run would start, the
    previous run's ``run.json`` (empty unless resumed or updated) and the configuration as the run
    would use it (calibrated thresholds applied)."""

    lines: list[str]
    listing: ArchiveListing
    start: str
    info: dict
    config: RunConfig


def dry_run(config: RunConfig, *, overwrite: bool = False) -> DryRun:
    """:func:`plan_run`, with what it found on the way (for ``--plan-only``)."""
    check_locations(config)
    inp = config.input
    listing = list_archive(inp.url, inp.pattern, inp.storage_options)
    if not listing.files and not listing.unlisted:
        raise StorageError(f"no files match input.pattern {inp.pattern!r} under {inp.url}")
    kinds = enabled_kinds(config)
    for kind in kinds:
        kind.check(config)
    location = OutputLocation(config.output.url, config.output.storage_options)
    previous = read_previous_run(location, output_names())
    config = calibrated_config(config, location, previous=previous)  # as the run will see it
    start = decide_start(location, previous, config, overwrite)
    info = previous.info if previous is not None and start in ("resume", "update") else {}
    rate = config.spectrogram.sample_rate or info.get("sample_rate_hz")
    lines = [f"opso run --dry-run: {len(listing.files)} input files; output {location.url}"]
    if info and location.exists("inventory.parquet"):  # the run keeps its inventory: say what that leaves out
        stored = location.read_arrow("inventory.parquet", columns=["file"])
        lines += describe_archive_changes(*archive_changes(listing.files, stored.column("file").to_pylist()))
    if rate is None:
        rate = _PROVISIONAL_SAMPLE_RATE_HZ
        if start in ("resume", "update"):
            lines.append("(the archive's sample rate is not recorded yet: the inventory finds it)")
    resolved = resolve_config_products(config, int(rate), bool(info.get("gpu_layout", False)))
    if start == "resume" and "outputs" not in info:  # begun by an opso without identities: all of it is kept
        changes = [OutputChange(n, r.stage, "kept") for n, r in resolved.items()]
    else:
        changes = compare_outputs(info.get("outputs"), resolved, flatten_config(config.public_dict()))
    all_kept = all(c.action == "kept" for c in changes)
    if start == "resume" and all_kept:
        finished = str(info.get("status", "")).startswith("complete")
        lines.append("the same configuration, and the run is complete: nothing to compute" if finished else
                     f"the same configuration (run status {info.get('status')}): its unfinished tasks run")
    elif start == "resume":
        lines.append("the same configuration as the last (interrupted) run; outputs whose identity differs are "
                     "recomputed")
    elif start == "update":
        lines.append("the same archive, other settings: outputs whose identity is unchanged are kept")
    lines += dry_run_lines(start, changes, info.get("stages"))
    return DryRun(lines, listing, start, info, config)
