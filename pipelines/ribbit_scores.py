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

import numpy as np
import pandas as pd

from opso_core.ribbit import RibbitParams, ribbit_batch
from pipelines.clip_plan import ClipRange
from pipelines.outputs import OutputLocation
from pipelines.score_tables import ID_COLUMNS, detections_of
from pipelines.spectrogram_store import open_store

__all__ = ["detector_name", "score_chunk"]


def detector_name(species_name: str) -> str:
    return f"ribbit:{species_name}"


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
        location.write_parquet(f"detections/part-ribbit-{sp.name}-{clip_range.name}.parquet", det)
        location.write_parquet(f"scores/detector={detector_name(sp.name)}/part-{clip_range.name}.parquet", table)
        detections[sp.name] = len(det)
    return detections
