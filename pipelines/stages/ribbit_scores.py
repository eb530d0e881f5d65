"""RIBBIT scores of clip spectrograms for any number of species in one pass.

Called by the spectrogram task on the spectrograms it has just computed (full precision, in
memory), it writes, per species ``<name>``:

- ``scores/detector=ribbit:<name>/part-<range>.parquet``: one row per clip, columns ``file,
  recorder, start_time, end_time, start_time_utc, <name>``;
- ``detections/part-ribbit-<name>-<range>.parquet``: the clips scoring at or above the species'
  threshold, long format ``detector, class, file, recorder, start_time, end_time, start_time_utc,
  score``.

Scores equal ``opso_core.ribbit.ribbit_batch`` on the values: for each clip, ``ribbit()`` on that
clip's spectrogram with ``clip_duration`` = the clip length and ``final_clip="full"``. Clips whose
audio could not be read are not scored; they are in ``failures.parquet``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from opso_core.ribbit import RibbitParams, ribbit_batch
from pipelines.driver.clip_plan import ClipRange
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.tables import DETECTION_SCHEMA, ID_COLUMNS, detections_of, score_schema

__all__ = ["detector_name", "score_clips"]


def detector_name(species_name: str) -> str:
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
        det = detections_of(table, detector_name(sp.name), sp.name, thresholds[sp.name])
        location.write_parquet(f"detections/part-ribbit-{sp.name}-{clip_range.name}.parquet", det,
                               schema=DETECTION_SCHEMA)
        location.write_parquet(f"scores/detector={detector_name(sp.name)}/part-{clip_range.name}.parquet", table,
                               schema=score_schema([sp.name]))
        detections[detector_name(sp.name)] = len(det)
    return detections
