"""The score, detection and failure table layouts every stage writes (the output contract).

Tables are written with explicit Arrow schemas, so that a zero-row part (a chunk without
detections, or a run whose every file failed) has the same column types as the others and
``pd.read_parquet(run / "detections")`` reads the folder as one table.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

__all__ = ["DETECTION_COLUMNS", "DETECTION_SCHEMA", "FAILURE_COLUMNS", "FAILURE_SCHEMA", "ID_COLUMNS",
           "EMPTY_RANGE", "LONG_SCORE_COLUMNS", "LONG_SCORE_SCHEMA", "detection_part", "detections_of", "empty_detections", "rederive_detections", "score_part",
           "score_schema", "write_detections", "write_empty_detector_tables"]

#: Columns identifying a clip, first in every score table.
ID_COLUMNS = ["file", "recorder", "start_time", "end_time", "start_time_utc"]
#: Long-format detection table (``common_name``: the class's English name where the detector has one,
#: e.g. BirdNET's; null otherwise).
DETECTION_COLUMNS = ["detector", "class", *ID_COLUMNS, "score", "common_name"]
#: ``failures.parquet``.
FAILURE_COLUMNS = ["stage", "item", "error_type", "message"]

_ID_FIELDS = [pa.field("file", pa.string()), pa.field("recorder", pa.string()),
              pa.field("start_time", pa.float64()), pa.field("end_time", pa.float64()),
              pa.field("start_time_utc", pa.timestamp("us", tz="UTC"))]
DETECTION_SCHEMA = pa.schema([pa.field("detector", pa.string()), pa.field("class", pa.string()), *_ID_FIELDS,
                              pa.field("score", pa.float64()), pa.field("common_name", pa.string())])
#: Long-format score table (detectors with too many classes for a column each, e.g. BirdNET's 6,522):
#: one row per clip and stored class.
LONG_SCORE_COLUMNS = [*ID_COLUMNS, "class", "score"]
LONG_SCORE_SCHEMA = pa.schema([*_ID_FIELDS, pa.field("class", pa.string()), pa.field("score", pa.float32())])
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
                         "score": hits[class_name].astype(float), "common_name": None}, columns=DETECTION_COLUMNS)


def empty_detections() -> pd.DataFrame:
    """A zero-row detection table with the contract's columns."""
    return DETECTION_SCHEMA.empty_table().to_pandas()


def score_part(detector: str, range_name: str) -> str:
    """Path of a detector's score table for one task range: ``scores/detector=<detector>/part-<range>.parquet``."""
    return f"scores/detector={detector}/part-{range_name}.parquet"


def detection_part(detector: str, range_name: str) -> str:
    """Path of a detector's detection table for one task range: ``detections/part-<kind>-<name>-<range>.parquet``."""
    return f"detections/part-{detector.replace(':', '-')}-{range_name}.parquet"


def write_detections(location, scores: pd.DataFrame, detector: str, range_name: str,
                     thresholds: dict[str, float]) -> int:
    """Write the detections of one range's score table: every class at or above its threshold.

    Parameters
    ----------
    location : OutputLocation
    scores : pandas.DataFrame
        The range's score table (id columns, one column per class).
    thresholds : dict
        ``{class: threshold}``, in the order the classes' rows are written.

    Returns
    -------
    int
        Number of detections written.
    """
    frames = [detections_of(scores, detector, cls, threshold) for cls, threshold in thresholds.items()]
    detections = pd.concat(frames, ignore_index=True) if frames else empty_detections()
    location.write_parquet(detection_part(detector, range_name), detections, schema=DETECTION_SCHEMA)
    return len(detections)


#: the range name of the zero-row parts that keep a table folder readable when no task wrote one
EMPTY_RANGE = "000000000-000000000"


def write_empty_detector_tables(location, detector: str, classes, value_type: pa.DataType | None = None,
                                schema: pa.Schema | None = None) -> None:
    """Give ``detector`` a readable score table and detection part where no task wrote one: zero-row
    parts named with :data:`EMPTY_RANGE` (a run whose files all failed still has every table).
    ``schema``: the score table's, when not one column per class (:data:`LONG_SCORE_SCHEMA`)."""
    import re

    if not location.list(f"scores/detector={detector}"):
        schema = schema or score_schema(classes, value_type)
        location.write_parquet(score_part(detector, EMPTY_RANGE), schema.empty_table(), schema=schema)
    own = re.compile(rf"^part-{re.escape(detector.replace(':', '-'))}-\d{{9}}-\d{{9}}\.parquet$")
    if not any(own.match(n) for n in location.list("detections")):
        location.write_parquet(detection_part(detector, EMPTY_RANGE), DETECTION_SCHEMA.empty_table(),
                               schema=DETECTION_SCHEMA)


def rederive_detections(location, detector: str, range_name: str, thresholds: dict[str, float]) -> int:
    """Detections of one range from its stored score table (a changed threshold: no audio is read).

    The same rows, in the same order, as :func:`write_detections` on the table in memory; done in
    Arrow (no pandas round trip), as a threshold change runs one of these per task range.

    Returns
    -------
    int
        Number of detections written.
    """
    import pyarrow.compute as pc

    scores = location.read_arrow(score_part(detector, range_name))
    parts = []
    for cls, threshold in thresholds.items():
        hits = scores.filter(pc.greater_equal(scores[cls], threshold))
        n = hits.num_rows
        parts.append(pa.table([pa.array([detector] * n, pa.string()), pa.array([cls] * n, pa.string()),
                               *(hits[c] for c in ID_COLUMNS), hits[cls].cast(pa.float64()),
                               pa.nulls(n, pa.string())],
                              schema=DETECTION_SCHEMA))
    detections = pa.concat_tables(parts) if parts else DETECTION_SCHEMA.empty_table()
    location.write_parquet(detection_part(detector, range_name), detections, schema=DETECTION_SCHEMA)
    return detections.num_rows
