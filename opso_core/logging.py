"""Weights & Biases helpers (``opensoundscape.logging``); needs the optional ``wandb`` package."""

from __future__ import annotations

import numpy as np

from opso_core.errors import PreprocessingError, missing_dependency

__all__ = ["wandb_table"]


def wandb_table(dataset, n=None, classes_to_extract=(), random_state=None, raise_exceptions=False, drop_labels=False):
    """A ``wandb.Table`` of ``n`` random samples of ``dataset``: image, playable audio, labels.

    Parameters
    ----------
    dataset : AudioFileDataset or AudioSplittingDataset
    n : int, optional
        Number of samples (randomly chosen); None keeps all, in order.
    classes_to_extract : tuple of str
        Add one column per class with its label.
    random_state : int, optional
    raise_exceptions : bool
        Raise if a sample fails to preprocess; otherwise skip it.
    drop_labels : bool
        Leave out the "tags" column of positive classes.
    """
    try:
        import wandb
    except ImportError as exc:
        raise missing_dependency("wandb", "wandb") from exc

    if n is not None and n < len(dataset):
        dataset = dataset.sample(n=n, random_state=random_state)
    columns = ["audio", "image", "file", "start_time"]
    if not drop_labels:
        columns.append("tags")
    columns += list(classes_to_extract)
    rows = []
    for i in range(len(dataset)):
        try:
            sample = dataset[i]
        except PreprocessingError:
            if raise_exceptions:
                raise
            continue
        audio_sample = dataset.preprocessor.forward(
            type(sample).from_series(dataset.label_df.iloc[i]), break_on_key="to_spec", bypass_augmentations=True)
        image = sample.data.detach().cpu().numpy()
        image = np.transpose(image / 2 + 0.5, (1, 2, 0)).clip(0, 1)
        row = [wandb.Audio(audio_sample.data.samples, sample_rate=audio_sample.data.sample_rate),
               wandb.Image(image), str(sample.source), sample.start_time]
        labels = sample.labels if sample.labels is not None else None
        if not drop_labels:
            row.append(", ".join(map(str, sample.categorical_labels)))
        for cls in classes_to_extract:
            row.append(None if labels is None else labels.get(cls))
        rows.append(row)
    return wandb.Table(columns=columns, data=rows)
