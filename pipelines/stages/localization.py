"""The localization stage: where the sounds a detector found on several recorders came from.

Runs after the detector stages, on CPU workers only (never the GPU-tagged ones), on the run's own
detections of ``localization.detector`` / ``localization.class``:

1. **Events** (the driver, :func:`candidate_events`): every detection is a reference once; the
   detections of the same class on recorders within ``max_receiver_dist`` metres whose clips overlap
   it in absolute (UTC) time join it, and with at least ``min_n_receivers`` recorders they form one
   candidate event (OpenSoundscape's ``SynchronizedRecorderArray`` grouping, on UTC times, so files
   need not start together). Recordings are taken to be synchronized.
2. **One task per ``events_per_task`` events** (:class:`LocalizationTask`): the reference recorder's
   audio over its clip, and every other recorder's over the same UTC span widened by ``max_delay_s``,
   are read with seeks, band-passed, and cross-correlated (``cc_filter``); delays below
   ``cc_threshold`` are dropped; the position is solved (``algorithm``) and kept when its RMS distance
   residual is at most ``residual_threshold_m``. Rows go to ``localizations/part-<range>.parquet``.

Nothing is dropped silently: the run's summary and ``run.json`` count the detections that formed no
candidate event (too few recorders nearby detected the call at the same time) and, per task, the
candidate events rejected and why (:data:`DROP_REASONS`).

Detections without an absolute start time (files whose start is unknown) cannot be grouped; their
files are listed in ``failures.parquet``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import LocalizationConfig, RunConfig
from pipelines.driver.clip_plan import ClipRange
from pipelines.driver.tasks import Stage, task_ranges
from pipelines.errors import ConfigError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import OutputName
from pipelines.outputs.storage_options import with_storage_defaults
from pipelines.stages.base import RANGE, Product, RunContext, StageKind, flat_settings

__all__ = ["KIND", "LOCALIZATION_SCHEMA", "LocalizationTask", "candidate_events", "check_localization",
           "check_recorders_cover", "localization_stage", "read_recorders_table"]

logger = logging.getLogger(__name__)

STAGE_NAME = "localization"
#: why a detection or a candidate event is not localized (the keys of the summary's ``dropped`` counts)
DROP_REASONS = {
    "no_event": "detections without min_n_receivers recorders detecting at the same time",
    "too_few_delays": "candidate events with fewer than min_n_receivers usable delays (cc_threshold)",
    "no_solution": "candidate events the solver could not place",
    "residual": "candidate events with residual above residual_threshold_m",
}
#: ``localizations/`` rows (the output contract); z is NaN for 2-D arrays.
LOCALIZATION_SCHEMA = pa.schema([
    pa.field("detector", pa.string()), pa.field("class", pa.string()), pa.field("event_id", pa.string()),
    pa.field("start_time_utc", pa.timestamp("us", tz="UTC")), pa.field("duration_s", pa.float64()),
    pa.field("x", pa.float64()), pa.field("y", pa.float64()), pa.field("z", pa.float64()),
    pa.field("residual_rms", pa.float64()), pa.field("n_receivers", pa.int64()),
    pa.field("reference_file", pa.string()), pa.field("receivers", pa.list_(pa.string())),
    pa.field("tdoas", pa.list_(pa.float64())), pa.field("cc_maxs", pa.list_(pa.float64())),
])


_FLAT_TABLES_TOLD: set = set()


def read_recorders_table(url: str, storage_options=None) -> pd.DataFrame:
    """The recorders' positions: a CSV with columns ``recorder, x, y`` and optionally ``z`` (metres).

    Returns
    -------
    pandas.DataFrame
        Indexed by recorder (str), columns ``x, y`` or ``x, y, z`` (float); ``x, y`` when every recorder
        has the same ``z`` (a flat array: a source's height cannot be told, so it is localized in 2-D).

    Raises
    ------
    ConfigError
        Unreadable, a column missing, a value not a number, or a recorder listed twice.
    """
    from opso_core.storage import open_binary

    try:
        with open_binary(url, with_storage_defaults(url, storage_options)) as f:
            table = pd.read_csv(f, dtype={"recorder": str})
    except Exception as exc:  # storage backends raise their own types (s3fs: KeyError, botocore errors)
        raise ConfigError(f"input.recorders_table: cannot read {url}: {type(exc).__name__}: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("recorder", "x", "y") if c not in table.columns]
    if missing:
        raise ConfigError(f"input.recorders_table {url} lacks the columns {missing}; it needs recorder, x, y[, z] "
                          "(metres)")
    dims = ["x", "y", "z"] if "z" in table.columns else ["x", "y"]
    positions = table[dims].apply(pd.to_numeric, errors="coerce")
    if positions.isna().any().any():
        bad = table.loc[positions.isna().any(axis=1), "recorder"].tolist()
        raise ConfigError(f"input.recorders_table {url}: positions of {bad[:5]} are not numbers")
    repeated = sorted(set(table.recorder[table.recorder.duplicated()]))
    if repeated:
        raise ConfigError(f"input.recorders_table {url}: recorders listed more than once: {repeated[:5]}")
    positions.index = table["recorder"].astype(str)
    positions = positions.astype(float)
    if "z" in positions.columns and len(positions) > 1 and positions["z"].nunique() == 1:
        # a flat array cannot tell a source's height (above or below it, the delays are the same): a 3-D solve
        # there returns a z that is noise (about ±1 m on a 40 m grid); solved in 2-D, z is NaN
        if url not in _FLAT_TABLES_TOLD:  # the table is read by several steps of a run: said once
            _FLAT_TABLES_TOLD.add(url)
            logger.info("input.recorders_table: every recorder at z = %g m: localizing in 2-D (z is NaN)",
                        positions["z"].iloc[0])
        positions = positions[["x", "y"]]
    return positions


def check_localization(config: RunConfig) -> None:
    """The checks of the localization settings that need no cluster: the recorders table is readable
    and well formed, and a CNN detector's class is one of its model's classes.

    Raises
    ------
    ConfigError
    """
    cfg = config.localization
    read_recorders_table(config.input.recorders_table, config.input.storage_options)
    kind, _, name = cfg.detector.partition(":")
    if kind == "cnn":
        from pipelines.stages.cnn import cached_cnn_detector

        model = next(m for m in config.cnn if m.name == name)
        classes = cached_cnn_detector(model, config.spectrogram.sample_rate).classes
        if cfg.class_name not in classes:
            raise ConfigError(f"localization.class {cfg.class_name!r} is not a class of model {name!r}: {list(classes)}")


def check_recorders_cover(config: RunConfig, inventory: pd.DataFrame) -> None:
    """The recorders table names the archive's recorders (``inventory``'s readable files'): none of them is
    a configuration error (names are compared exactly, case too); some of them missing is a warning
    (their detections are not localized: ``UnknownRecorder`` in ``failures.parquet``).

    Raises
    ------
    ConfigError
        No recorder of the archive is in ``input.recorders_table``.
    """
    table = read_recorders_table(config.input.recorders_table, config.input.storage_options)
    readable = inventory.loc[inventory["status"] != "failed", "recorder"]
    archive = sorted({str(r) for r in readable.dropna()})
    if not archive:
        if len(readable):
            raise ConfigError(f"none of the archive's {len(readable)} readable files has a recorder name (input."
                              f"recorder {config.input.recorder!r} found none), so no detection can be placed with "
                              "input.recorders_table; set input.recorder to how the files name their recorder")
        return
    listed = {str(r) for r in table.index}
    placed = [r for r in archive if r in listed]
    if not placed:
        raise ConfigError(
            f"input.recorders_table {config.input.recorders_table} names none of the archive's {len(archive)} "
            f"recorders ({', '.join(archive[:5])}{', ...' if len(archive) > 5 else ''}); it lists "
            f"{', '.join(sorted(listed)[:5]) or 'no recorder'}{', ...' if len(listed) > 5 else ''} (names are "
            "compared exactly, case too; input.recorder says how the archive's are read)")
    unplaced = [r for r in archive if r not in listed]
    if unplaced:
        logger.warning("input.recorders_table has no position for %d of the archive's %d recorders (%s%s): their "
                       "detections are not localized (UnknownRecorder in failures.parquet)", len(unplaced),
                       len(archive), ", ".join(unplaced[:5]), ", ..." if len(unplaced) > 5 else "")


def candidate_events(detections: pd.DataFrame, recorders: pd.DataFrame, inventory: pd.DataFrame,
                     cfg: LocalizationConfig) -> tuple[pd.DataFrame, list[list[str]]]:
    """Group detections into candidate events (see the module docstring).

    Parameters
    ----------
    detections : pandas.DataFrame
        The run's detections of the stage's detector and class (``file, recorder, start_time,
        end_time, start_time_utc``).
    recorders : pandas.DataFrame
        :func:`read_recorders_table`.
    inventory : pandas.DataFrame
        The run's inventory (file durations).
    cfg : LocalizationConfig

    Returns
    -------
    (pandas.DataFrame, list, int)
        One row per event, in a deterministic order: ``event_id, start_time_utc, duration_s,
        recorders, files, offsets_s`` (the reference first; ``offsets_s`` is where the event's UTC
        span starts in each file, seconds); failure rows ``[item, error_type, message]``; and the
        number of detections that formed no event (fewer than ``min_n_receivers`` recorders).
    """
    failures = []
    no_time = detections["start_time_utc"].isna()
    for file in sorted(detections.loc[no_time, "file"].unique()):
        failures.append([file, "NoStartTime", "detections of this file have no absolute time (the file's start "
                         "is unknown), so they cannot be grouped with other recorders' for localization"])
    unknown = sorted(set(detections["recorder"]) - set(recorders.index))
    for recorder in unknown:
        failures.append([recorder, "UnknownRecorder", "the recorder is not in input.recorders_table; its "
                         "detections are not localized"])
    dets = detections[~no_time & detections["recorder"].isin(recorders.index)].copy()
    columns = ["event_id", "start_time_utc", "duration_s", "recorders", "files", "offsets_s"]
    if dets.empty:
        return pd.DataFrame(columns=columns), failures, 0
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    dets["utc_s"] = (pd.to_datetime(dets["start_time_utc"], utc=True) - epoch).dt.total_seconds()
    dets["file_start_s"] = dets["utc_s"] - dets["start_time"]
    dets["duration_s"] = dets["end_time"] - dets["start_time"]
    durations = inventory.set_index("file")["duration_s"]
    dets["file_duration_s"] = dets["file"].map(durations).astype(float)
    dets = dets.sort_values(["utc_s", "recorder", "file"], kind="stable").reset_index(drop=True)
    coords = recorders.to_numpy()
    index = {r: i for i, r in enumerate(recorders.index)}
    near = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1) <= cfg.max_receiver_dist
    rows = []
    no_event = 0
    utc = dets["utc_s"].to_numpy()  # sorted: each reference's window is a slice
    rec = dets["recorder"].map(index).to_numpy()
    records = list(dets.itertuples())
    for i, ref in enumerate(records):
        lo = np.searchsorted(utc, ref.utc_s - ref.duration_s, side="right")  # utc within +-duration
        hi = np.searchsorted(utc, ref.utc_s + ref.duration_s, side="left")
        members = {}
        for j in range(lo, hi):
            if rec[j] == rec[i] or not near[rec[i], rec[j]]:
                continue
            other = records[j]
            offset = ref.utc_s - other.file_start_s
            if offset < 0 or offset + ref.duration_s > other.file_duration_s + 1e-6:
                continue  # the event's span is not inside that file
            best = members.get(other.recorder)
            if best is None or abs(other.utc_s - ref.utc_s) < abs(best[2] - ref.utc_s):
                members[other.recorder] = (other.file, offset, other.utc_s)
        if len(members) + 1 < cfg.min_n_receivers:
            no_event += 1
            continue
        names = sorted(members)
        stamp = pd.Timestamp(ref.utc_s, unit="s", tz="UTC")
        rows.append({"event_id": f"{cfg.class_name}-{stamp.strftime('%Y%m%dT%H%M%S.%f')}-{ref.recorder}",
                     "start_time_utc": stamp, "duration_s": float(ref.duration_s),
                     "recorders": [ref.recorder, *names], "files": [ref.file, *(members[n][0] for n in names)],
                     "offsets_s": [float(ref.start_time), *(float(members[n][1]) for n in names)]})
    return pd.DataFrame(rows, columns=columns), failures, no_event


@dataclasses.dataclass(frozen=True)
class LocalizationTask:
    """What one localization task does (picklable): localize a range of candidate events."""

    detector: str
    class_name: str
    positions: tuple[tuple[str, tuple[float, ...]], ...]  # recorder -> (x, y[, z]) metres
    sample_rate_hz: int
    input_storage_options: dict
    algorithm: str
    cc_filter: str
    cc_threshold: float | None
    bandpass: tuple[float, float] | None
    max_delay_s: float
    residual_threshold_m: float | None
    speed_of_sound: float
    min_n_receivers: int

    def __call__(self, clip_range: ClipRange, events: pd.DataFrame, location: OutputLocation,
                 needed: frozenset | None = None) -> dict:
        positions = dict(self.positions)
        rows, failures, dropped = [], [], {}
        for event in events.itertuples(index=False):
            try:
                row = self._localize(event, positions)
            except (OSError, ValueError) as exc:
                failures.append([event.event_id, type(exc).__name__, str(exc)])
                continue
            if isinstance(row, str):
                dropped[DROP_REASONS[row]] = dropped.get(DROP_REASONS[row], 0) + 1
            else:
                rows.append(row)
        table = pd.DataFrame(rows, columns=LOCALIZATION_SCHEMA.names)
        location.write_parquet(f"localizations/part-{clip_range.name}.parquet", table, schema=LOCALIZATION_SCHEMA)
        return {"n_clips": len(clip_range), "n_ok": len(rows), "failures": failures,
                "detections": {f"localized:{self.class_name}": len(rows)}, "dropped": dropped}

    def _localize(self, event, positions) -> dict | str:
        """The event's row, or the key of :data:`DROP_REASONS` saying why it was not localized."""
        from opso_core.audio import Audio
        from opso_core.localization import (
            InsufficientReceiversError,
            calculate_tdoa_residuals,
            delay_from_file,
            localize,
        )

        options = self.input_storage_options or None
        band = None
        if self.bandpass is not None:
            band = (self.bandpass[0], min(self.bandpass[1], 0.49 * self.sample_rate_hz))
        reference = Audio.from_file(event.files[0], offset=event.offsets_s[0], duration=event.duration_s,
                                    sample_rate=self.sample_rate_hz, out_of_bounds_mode="ignore",
                                    storage_options=options)
        if band is not None:
            reference = reference.bandpass(band[0], band[1], order=9)
        tdoas, cc_maxs = [0.0], [np.nan]
        for file, offset in zip(event.files[1:], event.offsets_s[1:], strict=True):
            delay, cc_max = delay_from_file(reference, file, offset, event.duration_s, cc_filter=self.cc_filter,
                                            max_delay=self.max_delay_s, bandpass_range=band,
                                            storage_options=options)
            tdoas.append(delay)
            cc_maxs.append(cc_max)
        tdoas, cc_maxs = np.asarray(tdoas), np.asarray(cc_maxs)
        used = np.ones(len(tdoas), dtype=bool)
        if self.cc_threshold is not None:
            used[1:] = cc_maxs[1:] >= self.cc_threshold
        if used.sum() < self.min_n_receivers:
            return "too_few_delays"
        receivers = [r for r, u in zip(event.recorders, used, strict=True) if u]
        coords = np.array([positions[r] for r in receivers])
        try:
            estimate = localize(coords, tdoas[used], self.algorithm, speed_of_sound=self.speed_of_sound)
        except InsufficientReceiversError:
            return "no_solution"
        if not np.all(np.isfinite(estimate)):
            return "no_solution"
        residuals = calculate_tdoa_residuals(coords, tdoas[used], estimate, self.speed_of_sound)
        rms = float(np.sqrt(np.mean(residuals**2)))
        if not np.isfinite(rms) or (self.residual_threshold_m is not None and rms > self.residual_threshold_m):
            return "residual"
        return {"detector": self.detector, "class": self.class_name, "event_id": event.event_id,
                "start_time_utc": event.start_time_utc, "duration_s": event.duration_s,
                "x": float(estimate[0]), "y": float(estimate[1]),
                "z": float(estimate[2]) if len(estimate) > 2 else np.nan, "residual_rms": rms,
                "n_receivers": int(used.sum()), "reference_file": event.files[0], "receivers": receivers,
                "tdoas": tdoas[used].tolist(), "cc_maxs": cc_maxs[used].tolist()}


def localization_stage(config: RunConfig, location: OutputLocation, inventory: pd.DataFrame, *,
                       sample_rate_hz: int) -> Stage:
    """The localization stage of a run whose detector stages have finished, with the grouping's failure
    rows (``Stage.failures``) and what the grouping dropped (``Stage.dropped``)."""
    from pipelines.outputs.results import read_detections

    cfg = config.localization
    recorders = read_recorders_table(config.input.recorders_table, config.input.storage_options)
    detections = read_detections(location.url, location.storage_options)
    detections = detections[(detections["detector"] == cfg.detector) & (detections["class"] == cfg.class_name)]
    events, failures, no_event = candidate_events(detections, recorders, inventory, cfg)
    logger.info("localization: %d candidate events from %d detections (%d in no event)", len(events),
                len(detections), no_event)
    bandpass = cfg.bandpass
    if bandpass is None and cfg.detector.startswith("ribbit:"):
        species = next(s for s in config.ribbit if f"ribbit:{s.name}" == cfg.detector)
        bandpass = tuple(species.signal_band)
    max_delay = cfg.max_delay_s if cfg.max_delay_s is not None else cfg.max_receiver_dist / cfg.speed_of_sound
    task = LocalizationTask(
        detector=cfg.detector, class_name=cfg.class_name,
        positions=tuple((r, tuple(map(float, p))) for r, p in zip(recorders.index, recorders.to_numpy(), strict=True)),
        sample_rate_hz=sample_rate_hz, input_storage_options=dict(config.input.storage_options),
        algorithm=cfg.algorithm, cc_filter=cfg.cc_filter, cc_threshold=cfg.cc_threshold,
        bandpass=None if bandpass is None else (float(bandpass[0]), float(bandpass[1])), max_delay_s=float(max_delay),
        residual_threshold_m=cfg.residual_threshold_m, speed_of_sound=cfg.speed_of_sound,
        min_n_receivers=cfg.min_n_receivers)
    dropped = {DROP_REASONS["no_event"]: no_event} if no_event else {}
    return Stage(STAGE_NAME, events, task_ranges(len(events), cfg.events_per_task), task, cpu_only=True,
                 failures=tuple(tuple(f) for f in failures), dropped=dropped)


class LocalizationKind(StageKind):
    """Phase 2: localize the events a detector found on several recorders (see the module docstring)."""

    name = "localization"
    phase = 2
    output_names = (OutputName("localizations", rf"part-{RANGE}\.parquet"),)

    def enabled(self, config: RunConfig) -> bool:
        return config.localization is not None

    def check(self, config: RunConfig) -> None:
        check_localization(config)

    def check_inventory(self, config: RunConfig, inventory) -> None:
        check_recorders_cover(config, inventory)

    def products(self, ctx: RunContext) -> list[Product]:
        config = ctx.config
        cfg = config.localization
        recorders = read_recorders_table(config.input.recorders_table, config.input.storage_options)
        table = hashlib.sha256(recorders.to_csv().encode()).hexdigest()[:16]
        own = {**flat_settings("localization", cfg.model_dump(mode="json", by_alias=True)),
               "input.recorders_table.sha256": table, "localization.sample_rate_hz": ctx.sample_rate_hz}
        return [Product("localizations", STAGE_NAME, own, inputs=(f"detections:{cfg.detector}",),
                        outputs=self.output_names)]

    def plan(self, ctx: RunContext, products: dict) -> list[Stage]:
        return [localization_stage(ctx.config, ctx.location, ctx.inventory, sample_rate_hz=ctx.sample_rate_hz)]

    def counters(self, config: RunConfig) -> dict[str, int]:
        return {f"localized:{config.localization.class_name}": 0}

    def write_empty(self, ctx: RunContext) -> None:
        if not ctx.location.list("localizations"):
            ctx.location.write_parquet("localizations/part-000000000-000000000.parquet",
                                       LOCALIZATION_SCHEMA.empty_table().to_pandas(), schema=LOCALIZATION_SCHEMA)


KIND = LocalizationKind()
