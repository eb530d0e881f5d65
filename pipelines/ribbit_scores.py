"""RIBBIT stage: score spectrogram chunks for any number of species in one pass.

Each task reads one chunk of ``spectrograms.zarr`` and writes, per species ``<name>``:

- ``scores/detector=ribbit:<name>/part-<range>.parquet``: one row per clip, columns ``file,
  recorder, start_time, end_time, start_time_utc, <name>``;
- ``detections/part-ribbit-<name>-<range>.parquet``: the clips scoring at or above the species'
  threshold, long format ``detector, class, file, recorder, start_time, end_time, start_time_utc,
  score``.

Scores equal ``opso_core.ribbit.ribbit_batch`` on the stored values: for each clip, ``ribbit()`` on
that clip's spectrogram with ``clip_duration`` = the clip length and ``final_clip="full"``.
Clips whose spectrogram failed (NaN) are not scored; they are in ``failures.parquet``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from opso_core.ribbit import RibbitParams, ribbit_batch
from pipelines.clip_plan import ClipRange
from pipelines.errors import ConfigError
from pipelines.outputs import OutputLocation
from pipelines.score_tables import DETECTION_SCHEMA, ID_COLUMNS, detections_of, score_schema
from pipelines.spectrogram_store import open_store

__all__ = ["check_species_bands", "detector_name", "score_chunk"]

logger = logging.getLogger(__name__)


def detector_name(species_name: str) -> str:
    return f"ribbit:{species_name}"


def check_species_bands(species, sample_rate_hz: float, step_samples: int) -> None:
    """Refuse species that cannot be measured at this sample rate and window step.

    A ``signal_band`` or noise band entirely above the Nyquist frequency (``sample_rate_hz / 2``),
    or a ``pulse_rate_range`` entirely above the Nyquist rate of the amplitude series (one value
    per window step: ``sample_rate_hz / step_samples / 2``), would score every clip 0; a range
    that only reaches past those limits is measured up to them, with a warning.

    Parameters
    ----------
    species : sequence of objects with ``name``, ``signal_band``, ``noise_bands``, ``pulse_rate_range``
    sample_rate_hz : float
        Sample rate of the clips (Hz).
    step_samples : int
        Samples between consecutive spectrogram windows.

    Raises
    ------
    ConfigError
        Naming the species' key, e.g. ``ribbit.0.signal_band``.
    """
    nyquist_hz = sample_rate_hz / 2
    frame_nyquist_hz = sample_rate_hz / step_samples / 2
    for i, sp in enumerate(species):
        bands = [("signal_band", sp.signal_band, nyquist_hz, f"the Nyquist frequency ({nyquist_hz:g} Hz) of "
                  f"sample_rate {sample_rate_hz:g}")]
        bands += [(f"noise_bands.{j}", band, nyquist_hz, f"the Nyquist frequency ({nyquist_hz:g} Hz) of "
                   f"sample_rate {sample_rate_hz:g}") for j, band in enumerate(sp.noise_bands)]
        bands.append(("pulse_rate_range", sp.pulse_rate_range, frame_nyquist_hz,
                      f"the highest pulse rate ({frame_nyquist_hz:g} Hz) that windows every {step_samples} "
                      f"samples at {sample_rate_hz:g} Hz can measure"))
        for key, (low, high), limit, what in bands:
            if low >= limit:
                raise ConfigError(f"ribbit.{i}.{key}: [{low:g}, {high:g}] lies entirely above {what}; "
                                  f"species {sp.name!r} would score 0 on every clip")
            if high > limit:
                logger.warning("ribbit.%d.%s: [%g, %g] reaches above %s; species %r is measured up to %g only",
                               i, key, low, high, what, sp.name, limit)


def score_chunk(clip_range: ClipRange, clips: pd.DataFrame, *, location: OutputLocation,
                species: list[RibbitParams], thresholds: dict[str, float]) -> dict[str, int]:
    """Score one chunk for every species and write its score and detection tables.

    Returns
    -------
    dict
        ``{species name: number of detections}``.
    """
    store = open_store(location, mode="r")
    values = store["spectrogram"][clip_range.start : clip_range.stop]
    frequencies = store["frequency"][:]
    step = float(store.attrs["window_step_s"])
    valid = ~np.isnan(values).any(axis=(1, 2))
    ids = clips[ID_COLUMNS].reset_index(drop=True)
    scores = ribbit_batch(values[valid], frequencies, step, species) if valid.any() else {
        sp.name: np.zeros(0) for sp in species}
    detections = {}
    for sp in species:
        col = np.full(len(ids), np.nan)
        col[valid] = scores[sp.name]
        table = ids.copy()
        table[sp.name] = col
        table = table[valid].reset_index(drop=True)
        det = detections_of(table, detector_name(sp.name), sp.name, thresholds[sp.name])
        location.write_parquet(f"detections/part-ribbit-{sp.name}-{clip_range.name}.parquet", det,
                               schema=DETECTION_SCHEMA)
        location.write_parquet(f"scores/detector={detector_name(sp.name)}/part-{clip_range.name}.parquet", table,
                               schema=score_schema([sp.name]))
        detections[sp.name] = len(det)
    return detections
