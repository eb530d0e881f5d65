"""The spectrogram stage kind: one task per range of clips reads their audio, computes their
spectrograms, scores them with every RIBBIT species while they are in memory, and writes them to
``spectrograms.zarr`` (compact, full, or not at all: ``spectrogram.store``).

A task covers ``spectrogram.task_audio_s`` seconds of audio (whole Zarr chunks of
``clips_per_chunk`` clips), so per-task overhead is small next to the work, and no two tasks write
the same chunk. RIBBIT reads the values as computed, whatever precision the store keeps.

Per species ``<name>`` a task writes

- ``scores/detector=ribbit:<name>/part-<range>.parquet``: one row per clip, columns ``file,
  recorder, start_time, end_time, start_time_utc, <name>``;
- ``detections/part-ribbit-<name>-<range>.parquet``: the clips scoring at or above the species'
  threshold, long format ``detector, class, file, recorder, start_time, end_time, start_time_utc,
  score``.

Scores equal ``opso_core.ribbit.ribbit_batch`` on the values: for each clip, ``ribbit()`` on that
clip's spectrogram with ``clip_duration`` = the clip length and ``final_clip="full"``. Clips whose
audio could not be read are not scored; they are in ``failures.parquet``.

Products and what a rerun recomputes: the store (``spectrograms``) depends on the clip and
spectrogram settings; a species' scores on those (not the store's encoding) and its own settings
less the threshold; its detections on its scores and the threshold. A changed threshold re-derives
the detections from the stored scores (no audio read). An added species, or a store whose encoding
changed, reads the audio again and computes the spectrograms once more, in full precision: scoring
the stored values instead would give other scores than a clean run wherever the store is compact
(0.625 dB steps) or absent, and the tables must not depend on the order the species were added in.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd

from opso_core.ribbit import RibbitParams, ribbit_batch
from opso_core.spectrogram import SpectrogramParams
from pipelines.config import RunConfig, check_species_bands
from pipelines.driver.clip_plan import ClipRange
from pipelines.driver.tasks import Stage, task_ranges
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import OutputName
from pipelines.outputs.spectrogram_store import (
    STORE_NAME,
    StoreEncoding,
    clip_spectrograms,
    create_store,
    open_store,
    write_clip_coords,
    write_values,
)
from pipelines.outputs.tables import (
    ID_COLUMNS,
    rederive_detections,
    score_part,
    score_schema,
    write_detections,
    write_empty_detector_tables,
)
from pipelines.stages.base import RANGE, ClipSettings, Product, RunContext, StageKind, flat_settings

__all__ = ["KIND", "SpectrogramTask", "detector_name", "score_clips"]

STAGE_NAME = "spectrograms"
#: the store's product name
STORE_PRODUCT = "spectrograms"


def detector_name(species_name: str) -> str:
    """``ribbit:<species>``: the species' detector in the output tables."""
    return f"ribbit:{species_name}"


def score_clips(clip_range: ClipRange, clips: pd.DataFrame, values: np.ndarray, ok: np.ndarray,
                frequencies: np.ndarray, window_step_s: float, *, location: OutputLocation,
                species: list[RibbitParams], thresholds: dict[str, float]) -> dict[str, int]:
    """Score the clips of ``clip_range`` for every species and write their score and detection tables.

    Parameters
    ----------
    clip_range : ClipRange
    clips : pandas.DataFrame
        The plan rows of ``clip_range``, in order.
    values : numpy.ndarray, shape (n_clips, n_frequencies, n_times)
        dB values.
    ok : numpy.ndarray of bool, shape (n_clips,)
        Clips whose audio was read; the others get no score row.
    frequencies : numpy.ndarray
        Hz.
    window_step_s : float
        Seconds between consecutive windows.

    Returns
    -------
    dict
        ``{detector name: number of detections}``.
    """
    ids = clips[ID_COLUMNS].reset_index(drop=True)[ok].reset_index(drop=True)
    scores = ribbit_batch(values[ok], frequencies, window_step_s, species) if ok.any() else {
        sp.name: np.zeros(0) for sp in species}
    detections = {}
    for sp in species:
        table = ids.copy()
        table[sp.name] = scores[sp.name]
        detector = detector_name(sp.name)
        detections[detector] = write_detections(location, table, detector, clip_range.name,
                                                {sp.name: thresholds[sp.name]})
        location.write_parquet(score_part(detector, clip_range.name), table, schema=score_schema([sp.name]))
    return detections


@dataclasses.dataclass(frozen=True)
class SpectrogramTask:
    """What one spectrogram task does (picklable; see the module docstring)."""

    params: SpectrogramParams
    sample_rate_hz: int
    clip_duration_s: float
    input_storage_options: dict
    encoding: StoreEncoding | None
    species: tuple[RibbitParams, ...] = ()
    thresholds: tuple[tuple[str, float], ...] = ()
    clips_per_chunk: int = 64
    store_name: str = STORE_NAME
    n_clips: int = 0  # the store's clips (its ``clip`` coordinate)
    index_chunk: int | None = None  # the store's ``clip`` chunk length (None: the default for n_clips)

    def __call__(self, clip_range: ClipRange, clips: pd.DataFrame, location: OutputLocation,
                 needed: frozenset | None = None) -> dict:
        """Write the products in ``needed`` (all by default) for the clips of ``clip_range``."""
        if needed is None:
            needed = frozenset([STORE_PRODUCT] if self.encoding is not None else []) | {
                f"{kind}:{detector_name(sp.name)}" for sp in self.species for kind in ("scores", "detections")}
        thresholds = dict(self.thresholds)
        scored = [sp for sp in self.species if f"scores:{detector_name(sp.name)}" in needed]
        record: dict = {"detections": {}}
        if scored or (self.encoding is not None and STORE_PRODUCT in needed):
            spec = clip_spectrograms(clips, params=self.params, sample_rate_hz=self.sample_rate_hz,
                                     clip_duration_s=self.clip_duration_s, storage_options=self.input_storage_options)
            if scored:
                record["detections"] = score_clips(
                    clip_range, clips, spec.values, spec.ok, spec.frequencies,
                    self.params.step_samples / self.sample_rate_hz, location=location, species=scored,
                    thresholds=thresholds)
            if self.encoding is not None and STORE_PRODUCT in needed:
                write_values(location, clip_range, spec.values, encoding=self.encoding,
                             clips_per_chunk=self.clips_per_chunk, store_name=self.store_name)
                write_clip_coords(location, clip_range, clips, clips_per_chunk=self.clips_per_chunk,
                                  n_clips=self.n_clips, index_chunk=self.index_chunk, store_name=self.store_name)
            record.update(n_ok=int(spec.ok.sum()), n_clips=len(clip_range),
                          failures=[list(f) for f in spec.failures])
        for sp in self.species:  # a changed threshold: from the stored scores, no audio read
            detector = detector_name(sp.name)
            if f"detections:{detector}" in needed and sp not in scored:
                record["detections"][detector] = rederive_detections(location, detector, clip_range.name,
                                                                     {sp.name: thresholds[sp.name]})
        return record


def _species(config: RunConfig) -> tuple[RibbitParams, ...]:
    return tuple(RibbitParams(name=s.name, signal_band=s.signal_band, pulse_rate_range=s.pulse_rate_range,
                              noise_bands=tuple(s.noise_bands), nfft=s.nfft) for s in config.ribbit)


class SpectrogramKind(StageKind):
    """Spectrograms (the store) and RIBBIT scores and detections, computed in one pass over the audio."""

    name = "spectrograms"
    phase = 1
    output_names = (
        OutputName("", r"spectrograms\.zarr", store=True),
        OutputName("scores", rf"detector=ribbit:[^/]+/part-{RANGE}\.parquet"),
        OutputName("detections", rf"part-ribbit-[A-Za-z0-9_.-]+-{RANGE}\.parquet"),
    )

    def enabled(self, config: RunConfig) -> bool:
        return bool(config.ribbit) or config.spectrogram.store != "none"

    def check_at_sample_rate(self, config: RunConfig, sample_rate_hz: int, params: SpectrogramParams) -> None:
        if config.ribbit:
            check_species_bands(config.ribbit, sample_rate_hz, params.step_samples)

    def run_clips(self, config: RunConfig):
        if not self.enabled(config):
            return None
        c = config.clips
        return ClipSettings(c.duration, c.overlap, c.final_clip), STAGE_NAME

    def products(self, ctx: RunContext) -> list[Product]:
        config = ctx.config
        sc = config.spectrogram.model_dump(mode="json")
        layout = {**flat_settings("clips", config.clips.model_dump(mode="json")),
                  **flat_settings("spectrogram", sc, drop=("store", "compact_step_db", "sample_rate")),
                  "spectrogram.sample_rate_hz": ctx.sample_rate_hz}
        products = []
        if config.spectrogram.store != "none":
            products.append(Product(STORE_PRODUCT, STAGE_NAME, {
                **layout, "spectrogram.store": sc["store"],
                **({"spectrogram.compact_step_db": sc["compact_step_db"]} if sc["store"] == "compact" else {})},
                outputs=(OutputName("", re.escape(STORE_NAME), store=True),)))
        for s in config.ribbit:
            detector = detector_name(s.name)
            own = flat_settings(f"ribbit[{s.name}]", s.model_dump(mode="json"),
                                drop=("name", "threshold", "calibrated_thresholds"))
            products.append(Product(f"scores:{detector}", STAGE_NAME, {**layout, **own}, outputs=(
                OutputName(f"scores/detector={detector}", rf"part-{RANGE}\.parquet"),)))
            products.append(Product(f"detections:{detector}", STAGE_NAME,
                                    {f"ribbit[{s.name}].threshold": s.threshold}, inputs=(f"scores:{detector}",),
                                    outputs=(OutputName("detections", rf"part-ribbit-{re.escape(s.name)}-{RANGE}\.parquet"),),
                                    detector=detector, rederivable=True))
        return products

    def plan(self, ctx: RunContext, products: dict) -> list[Stage]:
        config, location, clip_index = ctx.config, ctx.location, ctx.clip_index
        sc, clips_cfg = config.spectrogram, config.clips
        encoding, index_chunk = None, None
        if sc.store != "none":
            encoding = StoreEncoding(sc.store, sc.compact_step_db, tuple(sc.decibel_limits))
        if encoding is not None and location is not None:  # no location: planned only (opso run --dry-run)
            location.check_lease()  # the store's metadata is written with zarr, not through the location
            if not location.exists(f"{STORE_NAME}/.zmetadata"):
                create_store(location, clip_index.n_clips, params=ctx.spectrogram_params,
                             sample_rate_hz=ctx.sample_rate_hz,
                             clip_duration_s=clips_cfg.duration, clips_per_chunk=sc.clips_per_chunk,
                             encoding=encoding)
            index_chunk = open_store(location, mode="r")["clip"].chunks[0]  # a store begun by an older
            # opso keeps its own layout (one chunk of every clip)
        task = SpectrogramTask(params=ctx.spectrogram_params, sample_rate_hz=ctx.sample_rate_hz,
                               clip_duration_s=clips_cfg.duration,
                               input_storage_options=dict(config.input.storage_options), encoding=encoding,
                               species=_species(config), thresholds=tuple((s.name, s.threshold) for s in config.ribbit),
                               clips_per_chunk=sc.clips_per_chunk, n_clips=clip_index.n_clips,
                               index_chunk=index_chunk)
        step_s = clips_cfg.duration - clips_cfg.overlap
        ranges = task_ranges(clip_index.n_clips, max(1, round(sc.task_audio_s / step_s)), align=sc.clips_per_chunk)
        return [Stage(STAGE_NAME, clip_index, ranges, task)]

    def counters(self, config: RunConfig) -> dict[str, int]:
        return {detector_name(s.name): 0 for s in config.ribbit}

    def write_empty(self, ctx: RunContext) -> None:
        for s in ctx.config.ribbit:
            write_empty_detector_tables(ctx.location, detector_name(s.name), [s.name])


KIND = SpectrogramKind()
