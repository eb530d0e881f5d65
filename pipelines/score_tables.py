"""The score and detection table layouts every detector writes (ARCHITECTURE.md's output contract)."""

from __future__ import annotations

import pandas as pd

__all__ = ["DETECTION_COLUMNS", "ID_COLUMNS", "detections_of"]

#: Columns identifying a clip, first in every score table.
ID_COLUMNS = ["file", "recorder", "start_time", "end_time", "start_time_utc"]
#: Long-format detection table.
DETECTION_COLUMNS = ["detector", "class", *ID_COLUMNS, "score"]


def detections_of(scores: pd.DataFrame, detector: str, class_name: str, threshold: float) -> pd.DataFrame:
    """Rows of ``scores`` whose ``class_name`` column is at or above ``threshold``, in long format."""
    hits = scores[scores[class_name] >= threshold]
    return pd.DataFrame({"detector": detector, "class": class_name, **{c: hits[c] for c in ID_COLUMNS},
                         "score": hits[class_name].astype(float)}, columns=DETECTION_COLUMNS)
