"""Reviews of clips, stored in the run folder: one Parquet part per answer, never overwritten.

Each answer (a reviewer says a detector's class is present, absent or unsure in a clip) is written
at once, atomically, as its own file ``reviews/part-<time ns>-<random>.parquet``: a killed reviewer
loses nothing, and several reviewers (or browsers) at once never write the same file, on a local
disk or in a bucket. A reviewer may change an answer; the latest answer of each reviewer for a clip,
detector and class is the one that counts (:func:`read_reviews`). A run's ``--overwrite`` never
deletes ``reviews/`` (it is not a file the run writes); reviews name their clip by file and times as
well as by number, so they stay attached to the audio.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
import uuid

import pandas as pd
import pyarrow as pa

from pipelines.errors import ConfigError
from pipelines.outputs.location import OutputLocation

__all__ = ["LABELS", "REVIEW_COLUMNS", "REVIEW_SCHEMA", "REVIEWS_FOLDER", "read_reviews", "valid_reviewer",
           "write_review"]

REVIEWS_FOLDER = "reviews"
#: the answers a reviewer can give
LABELS = ("present", "absent", "unsure")
REVIEW_SCHEMA = pa.schema([
    pa.field("clip", pa.int64()), pa.field("file", pa.string()), pa.field("start_time", pa.float64()),
    pa.field("end_time", pa.float64()), pa.field("detector", pa.string()), pa.field("class", pa.string()),
    pa.field("score", pa.float64()), pa.field("label", pa.string()), pa.field("reviewer", pa.string()),
    pa.field("time_utc", pa.timestamp("us", tz="UTC")), pa.field("stratum", pa.int64()),
    pa.field("stratum_size", pa.int64()), pa.field("stratum_sampled", pa.int64())])
REVIEW_COLUMNS = REVIEW_SCHEMA.names
_REVIEWER = re.compile(r"^[\w.@'-](?:[\w .@'-]{0,62}[\w.@'-])?$")  # no leading, trailing or only spaces
_KEY = ["reviewer", "detector", "class", "file", "start_time"]


def valid_reviewer(name) -> bool:
    """Whether ``name`` is a usable reviewer name (see :func:`write_review`)."""
    return isinstance(name, str) and bool(_REVIEWER.match(name))


def write_review(url: str, review: dict, storage_options=None) -> str:
    """Write one answer to the run at ``url``; returns its part's path relative to the run.

    Parameters
    ----------
    review : dict
        ``clip, file, start_time, end_time`` (s), ``detector, class, score, label`` (one of
        :data:`LABELS`), ``reviewer`` (1-64 letters, digits, spaces or ``. @ ' -``, no space first or
        last) and the sample's
        ``stratum, stratum_size, stratum_sampled``; ``time_utc`` defaults to now.

    Raises
    ------
    ConfigError
        An unknown label, a missing or non-finite field, a stratum draw outside 1..size, a time without
        a time zone, or an unusable reviewer name (nothing is written).
    """
    missing = sorted(set(REVIEW_COLUMNS) - {"time_utc"} - set(review))
    if missing:
        raise ConfigError(f"a review needs {missing}")
    if review["label"] not in LABELS:
        raise ConfigError(f"a review's label is one of {list(LABELS)}, got {review['label']!r}")
    if not valid_reviewer(review["reviewer"]):
        shown = repr(review["reviewer"])
        raise ConfigError("a reviewer's name is 1 to 64 letters, digits, spaces or . @ ' -, not starting or ending "
                          f"with a space; got {shown if len(shown) <= 70 else shown[:60] + '...'}")
    numbers = {c: review[c] for c in ("clip", "start_time", "end_time", "score", "stratum", "stratum_size",
                                      "stratum_sampled")}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers.values()):
        raise ConfigError(f"a review's clip, times, score and stratum fields are finite numbers, got {numbers}")
    if not 1 <= review["stratum_sampled"] <= review["stratum_size"]:
        raise ConfigError("a review's stratum_sampled is between 1 and its stratum_size, got "
                          f"{review['stratum_sampled']} of {review['stratum_size']}")
    when = review.get("time_utc") or dt.datetime.now(dt.UTC)
    if not isinstance(when, dt.datetime) or when.tzinfo is None:
        raise ConfigError(f"a review's time_utc is a time-zone-aware datetime, got {when!r}")
    row = {c: review.get(c) for c in REVIEW_COLUMNS}
    row["time_utc"] = when.astimezone(dt.UTC)
    table = pa.Table.from_pylist([row], schema=REVIEW_SCHEMA)
    rel = f"{REVIEWS_FOLDER}/part-{time.time_ns()}-{uuid.uuid4().hex[:12]}.parquet"
    OutputLocation(url, storage_options).write_parquet(rel, table)
    return rel


def read_reviews(url: str, storage_options=None, *, latest: bool = True) -> pd.DataFrame:
    """Every review of the run at ``url`` (columns :data:`REVIEW_COLUMNS`; zero rows when there are none).

    With ``latest``, only each reviewer's last answer for a clip, detector and class.
    """
    location = OutputLocation(url, storage_options)
    if not location.exists(REVIEWS_FOLDER):
        return REVIEW_SCHEMA.empty_table().to_pandas()
    table = location.read_parquet_folder(REVIEWS_FOLDER)
    if not len(table):
        return REVIEW_SCHEMA.empty_table().to_pandas()
    table = table[REVIEW_COLUMNS].sort_values("time_utc", kind="stable")
    if latest:
        table = table.drop_duplicates(_KEY, keep="last")
    return table.reset_index(drop=True)
