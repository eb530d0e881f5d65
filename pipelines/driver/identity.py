"""Each output's identity, and what a rerun with another configuration keeps, recomputes and removes.

A product's identity (:class:`pipelines.stages.base.Product`) is a hash of its full settings: its own
and, recursively, those of the products it reads. ``run.json`` records every product's identity, its
stage and its full settings (``outputs``), and per stage whether every task range has been brought to
those identities (``stages[<stage>].settled``). A rerun compares (:func:`compare_outputs`):

- ``kept``: the same identity; only task ranges without a marker run (an unfinished run resumes);
- ``new``: not in the previous run; computed;
- ``changed``: another identity; its outputs are deleted and recomputed, from the stored scores where
  only a threshold changed (the tasks read their markers, which record each range's identities);
- ``removed``: no longer configured; its outputs are deleted, so the tables agree with ``run.json``.

How a run starts in a folder holding a run is :func:`decide_start`: the same configuration resumes; the
same archive with other settings updates (the above); another archive (``input.*``) is refused, naming
the changed keys, unless ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

from pipelines.errors import OutputConflictError
from pipelines.outputs.run_folder import PreviousRun, has_finished_tasks

logger = logging.getLogger(__name__)

__all__ = ["ARCHIVE_KEYS", "OutputChange", "ResolvedProduct", "archive_identity", "compare_outputs", "config_changes", "decide_start",
           "describe_changes", "flatten_config", "resolve_config_products", "resolve_products"]

#: the settings that choose the archive and how its files are read (the inventory): a run with other values
#: is another run, refused in a folder that holds one
ARCHIVE_KEYS = ("input.url", "input.pattern", "input.recorder", "input.timezone")
#: settings that change no output (where the run writes, how long its lease lasts)
_NOT_SETTINGS = ("output.url", "output.lease_s")


def _identity(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ResolvedProduct:
    """A product with its full settings (its own and its inputs', recursively) and its identity."""

    product: Any  # pipelines.stages.base.Product
    settings: dict
    identity: str

    @property
    def name(self) -> str:
        return self.product.name

    @property
    def stage(self) -> str:
        return self.product.stage

    def record(self) -> dict:
        """What ``run.json`` keeps of it."""
        return {"identity": self.identity, "stage": self.stage, "settings": self.settings,
                "outputs": [[n.folder, n.pattern, n.store] for n in self.product.outputs]}


def resolve_products(products) -> dict[str, ResolvedProduct]:
    """Full settings and identity of every product (inputs before the products reading them).

    Raises
    ------
    ValueError
        A product reads one that is not in ``products`` (a programming error in a stage kind).
    """
    by_name = {p.name: p for p in products}
    resolved: dict[str, ResolvedProduct] = {}

    def resolve(name: str, seen: tuple) -> ResolvedProduct:
        if name in resolved:
            return resolved[name]
        if name not in by_name or name in seen:
            raise ValueError(f"product {seen[-1] if seen else name!r} reads {name!r}, which is "
                             f"{'part of a cycle' if name in seen else 'not a product of this run'}")
        p = by_name[name]
        settings: dict = {}
        for dep in p.inputs:
            settings.update(resolve(dep, (*seen, name)).settings)
        settings.update(p.settings)
        resolved[name] = ResolvedProduct(p, settings, _identity(settings))
        return resolved[name]

    for p in products:
        resolve(p.name, ())
    return resolved


def flatten_config(public: dict, prefix: str = "") -> dict[str, Any]:
    """``{"clips.duration": 2.0, "ribbit[gpt].threshold": 0.02, ...}`` from a configuration's public
    dict; list entries with a ``name`` are keyed by it."""
    out: dict[str, Any] = {}
    for key, value in public.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, path))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            for item in value:
                out.update(flatten_config({k: v for k, v in item.items() if k != "name"},
                                          f"{path}[{item['name']}]"))
                out[f"{path}[{item['name']}]"] = "configured"
        else:
            out[path] = value
    return out


def _show(value) -> str:
    if value is _MISSING:
        return "(none)"
    return json.dumps(value, default=str) if not isinstance(value, str) else value


_MISSING = object()


def describe_changes(old: dict, new: dict, most: int = 6) -> list[str]:
    """``["ribbit[gpt].threshold 0.02 → 0.01", ...]``: the keys whose values differ (sorted; at most
    ``most``, then ``... and N more``)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k, _MISSING) != new.get(k, _MISSING))
    lines = [f"{k} {_show(old.get(k, _MISSING))} → {_show(new.get(k, _MISSING))}" for k in keys[:most]]
    if len(keys) > most:
        lines.append(f"... and {len(keys) - most} more")
    return lines


def archive_identity(public: dict) -> str:
    """A short hash of a public configuration's archive keys (:data:`ARCHIVE_KEYS`): equal for two
    configurations of the same archive, read the same way."""
    flat = flatten_config(public)
    text = json.dumps({k: flat.get(k) for k in ARCHIVE_KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_changes(old_public: dict, new_public: dict) -> dict[str, tuple]:
    """The flattened keys whose values differ between two public configurations: ``{key: (old, new)}``."""
    old, new = flatten_config(old_public), flatten_config(new_public)
    return {k: (old.get(k, _MISSING), new.get(k, _MISSING)) for k in sorted(set(old) | set(new))
            if k not in _NOT_SETTINGS and old.get(k, _MISSING) != new.get(k, _MISSING)}


def resolve_config_products(config, sample_rate_hz: int, gpu_layout: bool) -> dict[str, ResolvedProduct]:
    """Every product of ``config``'s enabled stage kinds, resolved (:func:`resolve_products`) for an
    archive at ``sample_rate_hz`` before its inventory is known (``--dry-run``; the calibration check)."""
    from pipelines.driver.context import RunContext
    from pipelines.stages import enabled_kinds

    rate = int(sample_rate_hz)
    ctx = RunContext(config, None, None, None, None, rate, config.spectrogram.params(rate), gpu_layout,
                     gpu_layout=gpu_layout)
    return resolve_products([p for kind in enabled_kinds(config) for p in kind.products(ctx)])


def decide_start(location, previous: PreviousRun | None, config, overwrite: bool) -> str:
    """How a run of ``config`` starts in ``location``.

    Returns
    -------
    str
        ``"new"`` (nothing there), ``"resume"`` (the same configuration: finish what is missing),
        ``"update"`` (the same archive, other settings: keep every output whose identity is unchanged,
        recompute the rest, remove what is no longer configured), ``"overwrite"`` (``overwrite=True``:
        clear the previous run's outputs first) or ``"replace"`` (a run of another archive, or one made
        before outputs had identities, that finished no task: its outputs are cleared, as nothing of
        value is lost).

    Raises
    ------
    OutputConflictError
        Another archive's run (or an older opso's run of other settings) finished tasks there and
        ``overwrite`` is False; the message names the changed keys.
    """
    if previous is None:
        return "new"
    if overwrite:
        return "overwrite"
    if previous.info.get("clearing"):  # an --overwrite (or replace) stopped while deleting: finish it
        logger.warning("%s: a run stopped while removing the previous run's outputs; removing the rest",
                       location.url)
        return "overwrite"
    if previous.fingerprint == config.fingerprint():
        return "resume"
    changes = config_changes(previous.info.get("config") or {}, config.public_dict())
    archive_changed = [k for k in changes if k in ARCHIVE_KEYS]
    if "outputs" in previous.info and not archive_changed:
        return "update"
    if not has_finished_tasks(location):
        return "replace"
    named = {k: v for k, v in changes.items() if k in archive_changed} if archive_changed else changes
    shown = describe_changes({k: v[0] for k, v in named.items() if v[0] is not _MISSING},
                             {k: v[1] for k, v in named.items() if v[1] is not _MISSING})
    if len(named) < len(changes):  # the archive's keys decide; the other settings would be updated in place
        shown.append(f"and {len(changes) - len(named)} other setting(s)")
    if archive_changed:
        why = "a run of another archive"
    else:
        why = "a run made by an earlier opso, whose outputs have no per-stage identities"
    raise OutputConflictError(
        f"{location.url} holds {why} (changed: {'; '.join(shown)}; status {previous.status}); use another "
        "output URL, or start over with --overwrite (deletes that run's outputs, nothing else)")


@dataclasses.dataclass(frozen=True)
class OutputChange:
    """What a rerun does with one product: ``kept``, ``new``, ``changed`` (``keys`` says how) or ``removed``."""

    name: str
    stage: str
    action: str
    keys: tuple[str, ...] = ()
    record: dict | None = None  # the previous run's record of it (for removed and changed products)


def compare_outputs(previous_outputs: dict | None, resolved: dict[str, ResolvedProduct],
                    current: dict | None = None) -> list[OutputChange]:
    """Each product of this run and of the previous one, with what happens to it (see the module docstring).

    ``previous_outputs`` is the previous ``run.json``'s ``outputs`` (None: everything is new);
    ``current``, this run's flattened configuration (:func:`flatten_config`): a removed product whose
    settings name a key this run sets otherwise (``spectrogram.store`` now ``none``) says so.
    """
    previous_outputs = previous_outputs or {}
    changes = []
    for name, r in resolved.items():
        before = previous_outputs.get(name)
        if before is None:
            changes.append(OutputChange(name, r.stage, "new"))
        elif before.get("identity") == r.identity and before.get("stage") == r.stage:
            changes.append(OutputChange(name, r.stage, "kept", record=before))
        else:
            changes.append(OutputChange(name, r.stage, "changed",
                                        tuple(describe_changes(before.get("settings") or {}, r.settings)),
                                        record=before))
    for name, before in previous_outputs.items():
        if name not in resolved:
            settings = before.get("settings") or {}
            why = {k: v for k, v in (current or {}).items() if k in settings and settings[k] != v}
            changes.append(OutputChange(name, before.get("stage", "?"), "removed",
                                        tuple(describe_changes({k: settings[k] for k in why}, why)), record=before))
    return changes


def dry_run_lines(start: str, changes: list[OutputChange], previous_stages: dict | None) -> list[str]:
    """The lines ``opso run --dry-run`` prints: per stage, per product, kept or what is recomputed and why."""
    lines = []
    if start in ("new", "overwrite", "replace"):
        verb = {"new": "a new run", "overwrite": "--overwrite: the previous run's outputs are deleted first",
                "replace": "the previous run finished no task: its outputs are deleted first"}[start]
        lines.append(f"{verb}; everything is computed")
    by_stage: dict[str, list[OutputChange]] = {}
    for c in changes:
        by_stage.setdefault(c.stage, []).append(c)
    previous_stages = previous_stages or {}
    for stage, items in by_stage.items():
        unsettled = start in ("resume", "update") and stage in previous_stages and \
            not previous_stages[stage].get("settled", True)
        lines.append(f"{stage}:" + (" (an earlier change is not finished: every range is checked)" if unsettled
                                    else ""))
        for c in items:
            if start not in ("resume", "update"):
                lines.append(f"  {c.name}: compute")
            elif c.action == "kept" and unsettled:
                lines.append(f"  {c.name}: finish (ranges an interrupted change left with an earlier identity are "
                             "recomputed)")
            elif c.action == "kept":
                lines.append(f"  {c.name}: kept")
            elif c.action == "new":
                lines.append(f"  {c.name}: compute (new)")
            elif c.action == "removed":
                lines.append(f"  {c.name}: remove ({'changed: ' + '; '.join(c.keys) if c.keys else 'no longer configured'})")
            else:
                lines.append(f"  {c.name}: recompute (changed: {'; '.join(c.keys)})")
    return lines
