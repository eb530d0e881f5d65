"""A dataset wrapper that survives samples that fail to preprocess (``opensoundscape.ml.safe_dataset``).

Based on the idea of nonechucks' SafeDataset. With ``invalid_sample_behavior="substitute"`` a failed
sample is replaced by the next good one (fine for training; never for prediction, where it would
silently score the wrong clip); ``"none"`` returns ``None`` for it, as OpenSoundscape 0.9.0 does
(prediction gives it NaN scores; the failed samples are in ``_invalid_samples``); ``"raise"`` re-raises.
"""

from __future__ import annotations

import logging

from opso_core.errors import (
    NoValidSamplesError,
    OpsoIndexError,
    OpsoValueError,
    PreprocessingError,
    warn_caller,
)

__all__ = ["SafeDataset", "no_valid_samples"]

logger = logging.getLogger(__name__)
_BEHAVIORS = ("substitute", "none", "raise")


class SafeDataset:
    """Wraps a dataset (e.g. :class:`~opso_core.ml.datasets.AudioFileDataset`) to handle failing samples.

    Parameters
    ----------
    dataset : Dataset
    invalid_sample_behavior : {"substitute", "none", "raise"}
    eager_eval : bool
        Try every sample at construction, filling ``_valid_indices`` / ``_invalid_indices``.

    Attributes
    ----------
    _valid_indices, _invalid_indices : list of int
        Positions of the samples that loaded / failed, in the order they were first tried (lists, as in
        OpenSoundscape 0.9.0).
    _invalid_samples : set
        The files of the samples that failed (for a clip ``(file, start_time, end_time)``, its file, as
        0.9.0 records it).

    Raises
    ------
    NoValidSamplesError
        (an ``IndexError``, as 0.9.0) from ``substitute`` when no sample of the dataset loads.
    """

    def __init__(self, dataset, invalid_sample_behavior, eager_eval=False):
        if invalid_sample_behavior not in _BEHAVIORS:
            raise OpsoValueError(f"invalid_sample_behavior must be one of {_BEHAVIORS}, got {invalid_sample_behavior!r}")
        self.dataset = dataset
        self.invalid_sample_behavior = invalid_sample_behavior
        self._reset_index()
        if eager_eval:
            self._build_index()

    def _reset_index(self):
        """Forget which samples loaded and which failed."""
        self._valid_indices = []
        self._invalid_indices = []
        self._invalid_samples = set()
        self._seen_valid, self._seen_invalid = set(), set()  # membership of the lists above, in O(1)

    def __len__(self):
        return len(self.dataset)

    @property
    def num_samples_examined(self):
        return len(self._valid_indices) + len(self._invalid_indices)

    @property
    def is_index_built(self):
        return self.num_samples_examined == len(self.dataset)

    def _build_index(self):
        for i in range(len(self.dataset)):
            self._safe_get_item(i)

    def _position(self, idx):
        try:
            n = len(self.dataset)
        except TypeError:  # a dataset without a length: the index is its own business
            return idx
        if not -n <= idx < n:
            raise OpsoIndexError(f"index {idx} is out of range for a dataset of {n} samples")
        return idx % n

    def _safe_get_item(self, idx):
        idx = self._position(idx)
        try:
            sample = self.dataset[idx]
        except Exception as exc:
            if self.invalid_sample_behavior == "raise":
                raise
            if idx not in self._seen_invalid:
                self._seen_invalid.add(idx)
                self._invalid_indices.append(idx)
            label_df = getattr(self.dataset, "label_df", None)
            name = label_df.index[idx] if label_df is not None else idx
            self._invalid_samples.add(name[0] if isinstance(name, tuple) else name)
            logger.warning("sample %s failed to preprocess: %s", name, exc)
            return None, exc
        if idx not in self._seen_valid:
            self._seen_valid.add(idx)
            self._valid_indices.append(idx)
        return sample, None

    def __getitem__(self, index):
        index = self._position(index)
        sample, exc = self._safe_get_item(index)
        if sample is not None:
            return sample
        if self.invalid_sample_behavior == "none":
            return None
        # substitute: the next index that works (at most one pass over the dataset)
        for offset in range(1, len(self.dataset)):
            candidate = (index + offset) % len(self.dataset)
            if candidate in self._seen_invalid:
                continue
            sample, _ = self._safe_get_item(candidate)
            if sample is not None:
                return sample
        raise no_valid_samples(sorted(map(str, self._invalid_samples)), exc) from exc

    def report(self, log=None):
        """Warn about (and optionally write to file ``log``) the samples that failed; returns them (a set)."""
        if self._invalid_samples:
            warn_caller(f"There were {len(self._invalid_samples)} sample(s) that raised errors and were skipped"
                          + (f"; they are listed in {log}" if log else ""))
            if log is not None:
                with open(log, "w") as f:
                    f.writelines(f"{s}\n" for s in sorted(map(str, self._invalid_samples)))
        return self._invalid_samples


def no_valid_samples(failed, cause) -> NoValidSamplesError:
    """The error raised when every sample failed: ``failed`` (names, first few shown) and the last ``cause``."""
    while isinstance(cause, PreprocessingError) and cause.__cause__ is not None:  # what failed, not the wrapper
        cause = cause.__cause__
    shown = ", ".join(map(str, failed[:3])) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
    why = f"; the last error was {type(cause).__name__}: {cause}" if cause is not None else ""
    error = NoValidSamplesError(
        f"none of the samples could be loaded and preprocessed ({shown}){why}. Check that the files exist and "
        "are audio, and that the preprocessor suits them (its sample rate and bandpass)")
    error.__cause__ = cause
    return error
