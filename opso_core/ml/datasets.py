"""Datasets that turn audio files (or clips of them) into preprocessed samples (``opensoundscape.ml.datasets``)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from opso_core.errors import OpsoTypeAssertionError, OpsoValueError, warn_caller
from opso_core.sample import AudioSample
from opso_core.utils import make_clip_df

__all__ = ["AudioFileDataset", "AudioSplittingDataset"]


def _as_label_df(samples) -> pd.DataFrame:
    if isinstance(samples, pd.DataFrame):
        return samples
    if isinstance(samples, str):
        raise OpsoTypeAssertionError("samples must be a list of paths or a DataFrame, not a single string; wrap it "
                                     "in a list")  # 0.9.0 asserted the type
    if isinstance(samples, list | tuple | np.ndarray | pd.Index):
        return pd.DataFrame(index=[str(s) for s in samples])
    raise OpsoTypeAssertionError(  # 0.9.0 asserted the type: ported `except AssertionError` still catches it
        f"samples must be a DataFrame, a list or an array of paths; got {type(samples).__name__}")


def _warn_if_first_file_is_missing(df: pd.DataFrame) -> None:
    """Warn, as OpenSoundscape 0.9.0 does, when the first sample's file is not on the local disk (a
    likely sign that the table's index is not file paths). URLs are not checked."""
    if not len(df):
        return
    first = df.index[0][0] if isinstance(df.index, pd.MultiIndex) else df.index[0]
    if isinstance(first, str | Path) and "://" not in str(first) and not Path(first).exists():
        warn_caller(f"the index of samples must be file paths; the first sample {first} was not found")


class AudioFileDataset(torch.utils.data.Dataset):
    """One preprocessed sample per row of a label table.

    Parameters
    ----------
    samples : pandas.DataFrame, list or numpy array
        A DataFrame indexed by file path, or by a ``(file, start_time, end_time)`` MultiIndex, with
        one 0/1 column per class (or none); or a list of file paths.
    preprocessor : BasePreprocessor
    bypass_augmentations : bool
        Skip augmentation actions (for validation and prediction).

    ``dataset[i]`` is an :class:`~opso_core.sample.AudioSample`; a failure raises
    :class:`~opso_core.preprocess.utils.PreprocessingError`.
    """

    def __init__(self, samples, preprocessor, bypass_augmentations=False):
        df = _as_label_df(samples)
        if isinstance(df.index, pd.MultiIndex):
            if df.index.nlevels != 3:
                raise OpsoValueError("a MultiIndex must have the levels (file, start_time, end_time)")
        _warn_if_first_file_is_missing(df)
        self.label_df = df
        self.preprocessor = preprocessor
        self.bypass_augmentations = bypass_augmentations
        self.invalid_samples = set()
        self.classes = list(df.columns)

    def __len__(self):
        return len(self.label_df)

    def __getitem__(self, idx):
        sample = AudioSample.from_series(self.label_df.iloc[idx])
        return self.preprocessor.forward(sample, bypass_augmentations=self.bypass_augmentations)

    def __repr__(self):
        return f"<{type(self).__name__} with {len(self)} samples>"

    def class_counts(self):
        """(class names, number of positive labels per class)."""
        return self.label_df.columns, self.label_df.sum()

    def _with_df(self, df):
        new = copy.copy(self)
        new.label_df = df
        return new

    def head(self, n=5):
        """A new dataset of the first ``n`` samples."""
        return self._with_df(self.label_df.head(n))

    def sample(self, **kwargs):
        """A new dataset of randomly chosen rows (arguments of ``pandas.DataFrame.sample``)."""
        return self._with_df(self.label_df.sample(**kwargs))


class AudioSplittingDataset(AudioFileDataset):
    """Clips of ``preprocessor.sample_duration`` seconds split from whole files.

    File labels (if ``samples`` is a labelled DataFrame indexed by file) are copied to each clip.
    A file whose duration cannot be read keeps one row with NaN ``start_time``/``end_time`` (as in
    OpenSoundscape 0.9.0: ``predict`` gives it NaN scores) and is listed in ``invalid_samples``.

    Parameters
    ----------
    samples, preprocessor
        As :class:`AudioFileDataset` (indexed by file path only).
    overlap_fraction : float
        Overlap of consecutive clips as a fraction of the clip duration, in [0, 1).
    final_clip : {None, "extend", "remainder", "full"}
        See :func:`~opso_core.utils.generate_clip_times_df`.
    """

    def __init__(self, samples, preprocessor, overlap_fraction=0, final_clip=None, bypass_augmentations=False):
        if not 0 <= overlap_fraction < 1:
            raise OpsoValueError(f"overlap_fraction must be in [0, 1), got {overlap_fraction}")
        if preprocessor.sample_duration is None:
            raise OpsoValueError("the preprocessor needs a sample_duration to split files into clips")
        df = _as_label_df(samples)
        clip_df, invalid = make_clip_df(df if len(df.columns) else list(df.index),
                                        clip_duration=preprocessor.sample_duration,
                                        clip_overlap=overlap_fraction * preprocessor.sample_duration,
                                        final_clip=final_clip, return_invalid_samples=True)
        super().__init__(clip_df, preprocessor, bypass_augmentations=bypass_augmentations)
        self.invalid_samples = set(invalid)
