"""Samplers that balance classes within batches (``opensoundscape.ml.sampling``)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data.sampler import Sampler

from opso_core.errors import OpsoValueError

__all__ = ["ClassAwareSampler", "ImbalancedDatasetSampler"]


class _RandomCycleIter:
    def __init__(self, data):
        self.data = list(data)
        self.length = len(self.data)
        self.i = self.length - 1

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        if self.i == self.length:
            self.i = 0
            random.shuffle(self.data)
        return self.data[self.i]


class ClassAwareSampler(Sampler):
    """Pick classes in turn (cycling in random order) and draw ``num_samples_cls`` samples of each.

    Parameters
    ----------
    labels : array-like, shape (n_samples,) or (n_samples, n_classes)
        Each sample's class number (0 to n_classes - 1, as OpenSoundscape 0.9.0 takes them: an epoch
        is then the largest class's size times the number of classes), or 0/1 labels per class (an
        epoch is ``n_samples``); every class needs at least one sample.
    num_samples_cls : int
        Consecutive samples drawn per chosen class.
    """

    def __init__(self, labels, num_samples_cls=1):
        labels = np.asarray(labels)
        if labels.ndim == 1:  # class numbers, as 0.9.0 takes them
            n_classes = len(np.unique(labels))
            if len(labels) and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                                or labels.max() >= n_classes):
                raise OpsoValueError(f"1-D labels are class numbers 0 to {n_classes - 1} (one per class present), "
                                     f"got {np.unique(labels)[:10].tolist()}")
            per_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
            num_samples = max((len(p) for p in per_class), default=0) * n_classes
        elif labels.ndim == 2:
            per_class = [np.flatnonzero(labels[:, c]) for c in range(labels.shape[1])]
            num_samples = labels.shape[0]
        else:
            raise OpsoValueError(f"labels must be (n_samples,) or (n_samples, n_classes), got shape {labels.shape}")
        if any(len(p) == 0 for p in per_class):
            raise OpsoValueError("ClassAwareSampler needs at least one positive sample of every class")
        self.class_iter = _RandomCycleIter(range(len(per_class)))
        self.data_iters = [_RandomCycleIter(p) for p in per_class]
        self.num_samples = num_samples
        self.num_samples_cls = int(num_samples_cls)

    def __iter__(self):
        produced = 0
        while produced < self.num_samples:
            cls = next(self.class_iter)
            for _ in range(self.num_samples_cls):
                if produced >= self.num_samples:
                    break
                yield int(next(self.data_iters[cls]))
                produced += 1

    def __len__(self):
        return self.num_samples


class ImbalancedDatasetSampler(Sampler):
    """Draw indices with probability inversely proportional to their class's frequency (with replacement).

    Parameters
    ----------
    dataset : Dataset
        With a ``label_df`` (0/1 columns; the first positive class of a row is its label), unless
        ``callback_get_label(dataset, index)`` gives the label.
    indices : list of int, optional
    num_samples : int, optional
        Samples per epoch; default ``len(indices)``.
    callback_get_label : callable, optional
    """

    def __init__(self, dataset, indices=None, num_samples=None, callback_get_label=None):
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.num_samples = len(self.indices) if num_samples is None else int(num_samples)
        if callback_get_label is not None:
            labels = [callback_get_label(dataset, i) for i in self.indices]
        else:
            values = np.asarray(dataset.label_df.values)[self.indices]
            labels = list(values.argmax(axis=1)) if values.ndim == 2 and values.shape[1] else [0] * len(self.indices)
        counts: dict = {}
        for lab in labels:
            counts[lab] = counts.get(lab, 0) + 1
        self.weights = torch.tensor([1.0 / counts[lab] for lab in labels], dtype=torch.double)

    def __iter__(self):
        chosen = torch.multinomial(self.weights, self.num_samples, replacement=True)
        return (self.indices[i] for i in chosen.tolist())

    def __len__(self):
        return self.num_samples
