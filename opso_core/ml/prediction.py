"""Prediction: scores for every sample (file or clip) from a CNN, as a DataFrame."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from opso_core.errors import OpsoValueError, warn_caller
from opso_core.ml.batch_preprocessing import batch_preprocessor
from opso_core.ml.datasets import AudioFileDataset, AudioSplittingDataset
from opso_core.ml.safe_dataset import SafeDataset, no_valid_samples
from opso_core.ml.utils import (
    ACTIVATION_LAYERS,
    apply_activation_layer,
    identity,
    inference_input,
    inference_network,
    one_ahead,
)

__all__ = ["FailedRows", "embed", "inference_dataset", "predict", "sample_error", "warn_about_inputs"]

logger = logging.getLogger(__name__)


def inference_dataset(samples, preprocessor, *, split_files_into_clips=True, overlap_fraction=0, final_clip=None,
                      bypass_augmentations=True):
    """The dataset ``CNN.predict`` draws from: whole files split into clips, or one sample per row.

    A DataFrame with a ``(file, start_time, end_time)`` MultiIndex is used as it is.
    """
    is_clip_table = isinstance(samples, pd.DataFrame) and isinstance(samples.index, pd.MultiIndex)
    if split_files_into_clips and not is_clip_table:
        return AudioSplittingDataset(samples, preprocessor, overlap_fraction=overlap_fraction, final_clip=final_clip,
                                     bypass_augmentations=bypass_augmentations)
    return AudioFileDataset(samples, preprocessor, bypass_augmentations=bypass_augmentations)


def _prepared_dataset(model, samples, *, bypass_augmentations, split_files_into_clips, overlap_fraction, final_clip):
    """The batch preprocessor (None: per-sample) and the dataset of ``samples``."""
    # the standard SpectrogramPreprocessor's steps after the audio run a batch at a time
    fast = batch_preprocessor(model.preprocessor, bypass_augmentations)
    dataset = inference_dataset(samples, model.preprocessor if fast is None else fast.audio_steps,
                                split_files_into_clips=split_files_into_clips, overlap_fraction=overlap_fraction,
                                final_clip=final_clip, bypass_augmentations=bypass_augmentations)
    return fast, dataset


def _network_batches(model, dataset, fast, *, batch_size, num_workers, raise_errors, progress_bar, desc):
    """``(first row, rows of the batch, indices of its valid samples, input tensor, late failures)`` per
    batch, the next one prepared in a thread while the caller runs the network; and the SafeDataset
    (its invalid samples once the batches are consumed)."""
    safe = SafeDataset(dataset, invalid_sample_behavior="raise" if raise_errors else "none")
    loader = torch.utils.data.DataLoader(safe, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=identity, pin_memory=model.device.type == "cuda")

    def prepared(batch):  # runs in the prefetch thread: the batch stacked in the network's layout
        valid = [i for i, s in enumerate(batch) if s is not None and s.data is not None]
        if not valid:
            return len(batch), [], None, []
        if fast is None:
            return len(batch), valid, inference_input(torch.stack([batch[i].data for i in valid]), model.device), []
        tensors, ok, failures = fast.tensors([batch[i] for i in valid], device=model.device)
        if failures and raise_errors:
            raise failures[0][1]
        x = None if tensors is None else inference_input(tensors, model.device)
        return len(batch), [valid[i] for i in ok], x, [(valid[i], exc) for i, exc in failures]

    # with num_workers=0 the next batch is loaded and preprocessed in a thread while the network runs
    batches = one_ahead(prepared(b) for b in loader) if num_workers == 0 else (prepared(b) for b in loader)
    if progress_bar:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, total=len(loader))

    def numbered():
        row = 0
        for n_batch, valid, tensors, failures in batches:
            yield row, n_batch, valid, tensors, failures
            row += n_batch

    return numbered(), safe


@torch.no_grad()
def predict(model, samples, batch_size=1, num_workers=0, activation_layer=None, split_files_into_clips=True,
            overlap_fraction=0, final_clip=None, bypass_augmentations=True, invalid_samples_log=None,
            raise_errors=False, wandb_session=None, return_invalid_samples=False, progress_bar=False):
    """Scores of ``model`` (a :class:`~opso_core.ml.cnn.CNN`) for every sample; see ``CNN.predict``.

    Warns (as OpenSoundscape 0.9.0) when a label table's columns differ from ``model.classes``, when
    there is nothing to predict on (naming the files shorter than one clip), and when samples failed
    (their scores are NaN). Raises :class:`~opso_core.errors.NoValidSamplesError` (an ``IndexError``,
    as 0.9.0) when every sample failed.
    """
    fast, dataset = _prepared_dataset(model, samples, bypass_augmentations=bypass_augmentations,
                                      split_files_into_clips=split_files_into_clips,
                                      overlap_fraction=overlap_fraction, final_clip=final_clip)
    warn_about_inputs(model, samples, dataset)
    index = dataset.label_df.index
    n_classes = len(model.classes)
    if len(dataset) == 0:
        scores = pd.DataFrame(np.zeros((0, n_classes)), index=index, columns=model.classes)
        return (scores, set(dataset.invalid_samples)) if return_invalid_samples else scores
    batches, _ = _network_batches(model, dataset, fast, batch_size=batch_size, num_workers=num_workers,
                                  raise_errors=raise_errors, progress_bar=progress_bar, desc="predict")
    network = inference_network(model.network, model.device)
    out = np.full((len(dataset), n_classes), np.nan, dtype=np.float32)
    failed = FailedRows(index)
    for row, n_batch, valid, tensors, failures in batches:
        failed.add_batch(row, n_batch, valid, failures)
        if valid:
            logits = network(tensors)
            scores = apply_activation_layer(logits.float(), activation_layer).cpu().numpy()
            out[[row + i for i in valid]] = scores
        if wandb_session is not None:
            wandb_session.log({"progress": (row + n_batch) / len(dataset)})
    invalid = set(dataset.invalid_samples) | failed.files()
    if len(failed.rows) == len(dataset):
        raise no_valid_samples(sorted(map(str, invalid)), failed.cause(dataset))
    if failed.rows:
        warn_caller(f"{len(failed.rows)} of {len(dataset)} samples could not be loaded or preprocessed; their "
                    "scores are NaN (return_invalid_samples=True or invalid_samples_log lists their files)")
    if invalid_samples_log is not None:
        with open(invalid_samples_log, "w") as f:
            f.writelines(f"{s}\n" for s in sorted(map(str, invalid)))
    scores = pd.DataFrame(out, index=index, columns=model.classes)
    return (scores, invalid) if return_invalid_samples else scores


def warn_about_inputs(model, samples, dataset) -> None:
    """The warnings OpenSoundscape 0.9.0 gives before predicting: a label table whose columns are not
    ``model.classes``; no samples at all (here with the files shorter than one clip named)."""
    if len(dataset.classes) and list(dataset.classes) != list(model.classes):
        warn_caller(f"the columns of the samples table {list(dataset.classes)} differ from model.classes "
                      f"{list(model.classes)}; scores are given for model.classes")
    if len(dataset):
        return
    message = "there are no samples to predict on, so no predictions are generated"
    if isinstance(dataset, AudioSplittingDataset):
        files = list(samples.index if isinstance(samples, pd.DataFrame) else samples)
        unreadable = {str(i) for i in dataset.invalid_samples}
        short = [str(f) for f in files if str(f) not in unreadable]
        if short:
            shown = ", ".join(short[:3]) + (f" and {len(short) - 3} more" if len(short) > 3 else "")
            message += (f": {len(short)} file(s) are shorter than one clip "
                        f"({model.preprocessor.sample_duration} s): {shown} (final_clip='extend' scores them)")
    warn_caller(message)


class FailedRows:
    """The rows of a dataset that got no output, counted in this process from the batches (with
    ``num_workers > 0`` each DataLoader worker has its own copy of the SafeDataset, so its record of
    failures never reaches this process), and the last preprocessing error seen."""

    def __init__(self, index):
        self.index = index
        self.rows: list[int] = []
        self.last_error = None

    def add_batch(self, row, n_batch, valid, failures) -> None:
        """Record a batch of ``n_batch`` rows from ``row`` whose positions ``valid`` got an output;
        ``failures`` are ``(position, exception)`` of the batch-step failures."""
        for i, exc in failures:
            self.last_error = exc
            logger.warning("sample %s failed to preprocess: %s", self.index[row + i], exc)
        ok = set(valid)
        self.rows += [row + i for i in range(n_batch) if i not in ok]

    def files(self) -> set:
        """The files of the failed rows (a clip's file)."""
        return {_file_of(self.index[r]) for r in self.rows}

    def cause(self, dataset):
        """The error to show for the failures: the last batch-step error, else what the first failed
        sample raises when loaded again."""
        if self.last_error is not None or not self.rows:
            return self.last_error
        return sample_error(dataset, self.rows[0])


def sample_error(dataset, position: int):
    """The exception sample ``position`` of ``dataset`` raises (None if it loads): the cause shown when
    every sample failed."""
    try:
        dataset[position]
    except Exception as exc:  # reported, not raised: the caller raises NoValidSamplesError
        return exc
    return None


@torch.no_grad()
def embed(model, samples, target_layer=None, avgpool=True, return_preds=False, return_dfs=True, batch_size=1,
          num_workers=0, split_files_into_clips=True, overlap_fraction=0, final_clip=None, progress_bar=False):
    """Embeddings of ``model`` (a :class:`~opso_core.ml.cnn.CNN`) for every sample; see ``CNN.embed``."""
    import copy

    fast, dataset = _prepared_dataset(model, samples, bypass_augmentations=True,
                                      split_files_into_clips=split_files_into_clips,
                                      overlap_fraction=overlap_fraction, final_clip=final_clip)
    index = dataset.label_df.index
    network = copy.deepcopy(model.network).eval().to(model.device)  # eager: every named layer is there
    if target_layer is None:  # the classifier's input: what the network's last layer classifies
        layer, take_input = network.get_submodule(getattr(network, "classifier_layer", "fc")), True
    else:
        name = target_layer if isinstance(target_layer, str) else next(
            (n for n, m in model.network.named_modules() if m is target_layer), None)
        if name is None:
            raise OpsoValueError("target_layer must be a layer of the model's network (or its name)")
        layer, take_input = network.get_submodule(name), False
    kept = {}

    def keep(module, inputs, output):
        kept["value"] = inputs[0] if take_input else output

    handle = layer.register_forward_hook(keep)
    rows_out, values_out, preds_out = [], [], []
    failed = FailedRows(index)
    try:
        batches, _ = _network_batches(model, dataset, fast, batch_size=batch_size, num_workers=num_workers,
                                      raise_errors=False, progress_bar=progress_bar, desc="embed")
        for row, n_batch, valid, tensors, failures in batches:
            failed.add_batch(row, n_batch, valid, failures)
            if not valid:
                continue
            logits = network(tensors)
            value = kept["value"].float()
            if avgpool and value.dim() == 4:
                value = value.mean(dim=(2, 3))
            rows_out += [row + i for i in valid]
            values_out.append(value.flatten(1).cpu().numpy())
            preds_out.append(logits.float().cpu().numpy())
    finally:
        handle.remove()
    if len(dataset) and len(failed.rows) == len(dataset):
        raise no_valid_samples(sorted(map(str, set(dataset.invalid_samples) | failed.files())), failed.cause(dataset))
    width = values_out[0].shape[1] if values_out else 0
    out = np.full((len(dataset), width), np.nan, dtype=np.float32)
    preds = np.full((len(dataset), len(model.classes)), np.nan, dtype=np.float32)
    if values_out:
        out[rows_out] = np.concatenate(values_out)
        preds[rows_out] = np.concatenate(preds_out)
    if return_dfs:
        out = pd.DataFrame(out, index=index)
        preds = pd.DataFrame(preds, index=index, columns=model.classes)
    return (out, preds) if return_preds else out


def _file_of(index_value):
    return index_value[0] if isinstance(index_value, tuple) else index_value


def check_activation(activation_layer):
    """Raise before any work if ``activation_layer`` is not one ``apply_activation_layer`` knows."""
    if activation_layer not in ACTIVATION_LAYERS:
        raise OpsoValueError(f"activation_layer must be one of {ACTIVATION_LAYERS}; got {activation_layer!r}")
