"""A dataset wrapper that survives samples that fail to preprocess (``opensoundscape.ml.safe_dataset``).

Based on the idea of nonechucks' SafeDataset. With ``invalid_sample_behavior="substitute"`` a failed
sample is replaced by the next good one (fine for training; never for prediction, where it would
silently score the wrong clip); ``"none"`` returns ``None`` for it, as OpenSoundscape 0.9.0 does
(prediction gives it NaN scores; the failed samples are in ``_invalid_samples``); ``"raise"`` re-raises.
"""

from __future__ import annotations

import logging
import warnings

from opso_core.errors import OpsoValueError

__all__ = ["SafeDataset"]

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
    _valid_indices, _invalid_indices : set of int
    _invalid_samples : set
        Index values (file paths or clip tuples) of samples that failed.
    """

    def __init__(self, dataset, invalid_sample_behavior, eager_eval=False):
        if invalid_sample_behavior not in _BEHAVIORS:
            raise OpsoValueError(f"invalid_sample_behavior must be one of {_BEHAVIORS}, got {invalid_sample_behavior!r}")
        self.dataset = dataset
        self.invalid_sample_behavior = invalid_sample_behavior
        self._valid_indices = set()
        self._invalid_indices = set()
        self._invalid_samples = set()
        if eager_eval:
            self._build_index()

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

    def _safe_get_item(self, idx):
        try:
            sample = self.dataset[idx]
        except Exception as exc:
            if self.invalid_sample_behavior == "raise":
                raise
            self._invalid_indices.add(idx)
            label_df = getattr(self.dataset, "label_df", None)
            name = label_df.index[idx] if label_df is not None else idx
            self._invalid_samples.add(name)
            logger.warning("sample %s failed to preprocess: %s", name, exc)
            return None, exc
        self._valid_indices.add(idx)
        return sample, None

    def __getitem__(self, index):
        sample, exc = self._safe_get_item(index)
        if sample is not None:
            return sample
        if self.invalid_sample_behavior == "none":
            return None
        # substitute: the next index that works (at most one pass over the dataset)
        for offset in range(1, len(self.dataset)):
            candidate = (index + offset) % len(self.dataset)
            if candidate in self._invalid_indices:
                continue
            sample, _ = self._safe_get_item(candidate)
            if sample is not None:
                return sample
        raise OpsoValueError("no sample of the dataset could be preprocessed") from exc

    def report(self, log=None):
        """Warn about (and optionally write to file ``log``) the samples that failed; returns them."""
        if self._invalid_samples:
            warnings.warn(f"{len(self._invalid_samples)} samples failed to preprocess"
                          + (f"; they are listed in {log}" if log else ""), stacklevel=2)
            if log is not None:
                with open(log, "w") as f:
                    f.writelines(f"{s}\n" for s in sorted(map(str, self._invalid_samples)))
        return self._invalid_samples
