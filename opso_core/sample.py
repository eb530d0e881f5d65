"""Samples: one piece of data (audio, spectrogram, tensor) with its source, time span and labels
(``opensoundscape.sample``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from opso_core.errors import OpsoTypeError, OpsoValueError

__all__ = ["AudioSample", "Sample", "collate_samples"]


class Sample:
    """Holds one sample's ``data``; subclass it for specific kinds of samples."""

    def __init__(self, data=None):
        self.data = data

    def __repr__(self):
        return f"<{type(self).__name__} data={type(self.data).__name__}>"


class AudioSample(Sample):
    """A clip of an audio file moving through a preprocessing pipeline.

    Parameters
    ----------
    source : str or path-like
        Audio file path or URL (``data`` starts as this and becomes Audio, Spectrogram, Tensor...).
    start_time : float, optional
        Seconds from the start of the file; None for the whole file.
    duration : float, optional
        Seconds; None for the rest of the file.
    labels : pandas.Series, optional
        0/1 per class (index = class names).
    trace : pandas.Series, optional
        Output of each pipeline step, when preprocessing with ``trace=True``.

    Attributes
    ----------
    preprocessing_exception : Exception or None
        The exception raised while preprocessing, if any.
    """

    def __init__(self, source, start_time=None, duration=None, labels=None, trace=None):
        super().__init__(data=source)
        self.source = source
        self.start_time = start_time
        self.duration = duration
        self.labels = labels
        self.trace = trace
        self.preprocessing_exception = None
        self.target_duration = None
        self.target_shape = None
        self.preprocessor = None

    def __repr__(self):
        return f"<AudioSample source={self.source!r} start_time={self.start_time} duration={self.duration}>"

    @classmethod
    def from_series(cls, labels_series: pd.Series) -> AudioSample:
        """A sample from one row of a label DataFrame.

        The row's name is either a file path, or a ``(file, start_time, end_time)`` tuple (a
        MultiIndex row), which gives ``start_time`` and ``duration = end_time - start_time``. The
        row's values become ``labels``.
        """
        if not isinstance(labels_series, pd.Series):
            raise OpsoTypeError(f"from_series expects a pandas Series, got {type(labels_series).__name__}")
        name = labels_series.name
        if isinstance(name, tuple):
            if len(name) != 3:
                raise OpsoValueError(f"a tuple row name must be (file, start_time, end_time), got {name!r}")
            source, start, end = name
            return cls(source, start_time=start, duration=end - start, labels=labels_series.copy())
        return cls(name, labels=labels_series.copy())

    @property
    def categorical_labels(self) -> list:
        """Class names whose label is 1."""
        if self.labels is None:
            return []
        return list(self.labels[self.labels == 1].index)

    @property
    def end_time(self):
        """``start_time + duration`` (None if either is unknown)."""
        if self.start_time is None or self.duration is None:
            return None
        return self.start_time + self.duration


def collate_samples(samples) -> dict:
    """Stack samples' ``data`` tensors and ``labels`` into a batch.

    Returns
    -------
    dict
        ``{"samples": Tensor (batch, ...), "labels": Tensor (batch, n_classes)}`` (float32 labels;
        an empty second dimension when samples have no labels).
    """
    import torch

    samples = list(samples)
    if not samples:
        raise OpsoValueError("cannot collate an empty list of samples")
    data = torch.stack([s.data for s in samples])
    labels = []
    for s in samples:
        values = [] if s.labels is None else np.asarray(s.labels, dtype=np.float32)
        labels.append(torch.as_tensor(np.asarray(values, dtype=np.float32)))
    return {"samples": data, "labels": torch.stack(labels)}
