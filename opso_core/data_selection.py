"""Resampling label tables to balance classes (``opensoundscape.data_selection``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from opso_core.errors import OpsoValueError

__all__ = ["resample", "upsample"]


def upsample(input_df, label_column="Labels", with_replace=False, random_state=None):
    """Repeat the rows of smaller classes (categorical ``label_column``) up to the largest class's count.

    Each class's rows are repeated ``max_count // n`` times, then ``max_count % n`` more are drawn
    (with or without replacement).
    """
    if label_column not in input_df.columns:
        raise OpsoValueError(f"no column {label_column!r} in the DataFrame")
    counts = input_df[label_column].value_counts()
    max_count = counts.max()
    parts = []
    for label in counts.index:
        rows = input_df[input_df[label_column] == label]
        repeats, extra = divmod(max_count, len(rows))
        parts.append(pd.concat([rows] * repeats))
        if extra:
            parts.append(rows.sample(n=extra, replace=with_replace, random_state=random_state))
    return pd.concat(parts)


def resample(df, n_samples_per_class, upsample=True, downsample=True, with_replace=False, random_state=None):
    """Resample a one-hot label table to ``n_samples_per_class`` rows per class.

    Classes with fewer rows are repeated (``upsample``), classes with more are subsampled
    (``downsample``). Rows come out ordered by class. Assumes single-label rows.
    """
    rng = np.random.RandomState(random_state) if random_state is not None else None
    parts = []
    for cls in df.columns:
        rows = df[df[cls] == 1]
        if len(rows) == 0:
            continue
        if len(rows) > n_samples_per_class and downsample:
            rows = rows.sample(n=n_samples_per_class, replace=with_replace, random_state=rng)
        elif len(rows) < n_samples_per_class and upsample:
            repeats, extra = divmod(n_samples_per_class, len(rows))
            rows = pd.concat([rows] * repeats + ([rows.sample(n=extra, replace=with_replace, random_state=rng)]
                                                 if extra else []))
        parts.append(rows)
    if not parts:
        return df.iloc[0:0]
    return pd.concat(parts)
