"""The score, detection and failure table layouts every stage writes (the output contract).

Tables are written with explicit Arrow schemas, so that a zero-row part (a chunk without
detections, or a run whose every file failed) has the same column types as the others and
``pd.read_parquet(run / "detections")`` reads the folder as one table.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

__all__ = ["DETECTION_COLUMNS", "DETECTION_SCHEMA", "FAILURE_COLUMNS", "FAILURE_SCHEMA", "ID_COLUMNS",
           "detections_of", "empty_detections", "score_schema"]

#: Columns identifying a clip, first in every score table.
ID_COLUMNS = ["file", "recorder", "start_time", "end_time", "start_time_utc"]
#: Long-format detection table.
DETECTION_COLUMNS = ["detector", "class", *ID_COLUMNS, "score"]
#: ``failures.parquet``.
FAILURE_COLUMNS = ["stage", "item", "error_type", "message"]

_ID_FIELDS = [pa.field("file", pa.string()), pa.field("recorder", pa.string()),
              pa.field("start_time", pa.float64()), pa.field("end_time", pa.float64()),
              pa.field("start_time_utc", pa.timestamp("us", tz="UTC"))]
DETECTION_SCHEMA = pa.schema([pa.field("detector", pa.string()), pa.field("class", pa.string()), *_ID_FIELDS,
                              pa.field("score", pa.float64())])
FAILURE_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in FAILURE_COLUMNS])


def score_schema(class_names, value_type: pa.DataType | None = None) -> pa.Schema:
    """Schema of one detector's score table: the clip's id columns, then one ``value_type`` column
    (default float64) per class."""
    value_type = value_type or pa.float64()
    return pa.schema([*_ID_FIELDS, *(pa.field(str(c), value_type) for c in class_names)])


def detections_of(scores: pd.DataFrame, detector: str, class_name: str, threshold: float) -> pd.DataFrame:
    """Rows of ``scores`` whose ``class_name`` column is at or above ``threshold``, in long format."""
    hits = scores[scores[class_name] >= threshold]
    return pd.DataFrame({"detector": detector, "class": class_name, **{c: hits[c] for c in ID_COLUMNS},
                         "score": hits[class_name].astype(float)}, columns=DETECTION_COLUMNS)


def empty_detections() -> pd.DataFrame:
    """A zero-row detection table with the contract's columns."""
    return DETECTION_SCHEMA.empty_table().to_pandas()
