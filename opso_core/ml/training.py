"""Training: epochs of forward pass, loss and backpropagation, with validation and checkpoints."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from opso_core.errors import OpsoValueError
from opso_core.ml.datasets import AudioFileDataset
from opso_core.ml.safe_dataset import SafeDataset
from opso_core.ml.utils import collate_audio_samples_to_dict, identity

__all__ = ["train"]

logger = logging.getLogger("opso_core.ml.cnn")


def _check_labels(model, df, name):
    if df is None:
        return
    if list(df.columns) != list(model.classes):
        raise OpsoValueError(f"the columns of {name} ({list(df.columns)}) must be the model's classes "
                             f"({list(model.classes)}), in the same order")
    values = df.to_numpy()
    if not np.isin(values, (0, 1)).all():
        raise OpsoValueError(f"{name} must hold 0/1 labels")
    if model.single_target and (values.sum(axis=1) != 1).any():
        raise OpsoValueError(f"{name}: a single-target model needs exactly one positive class per sample")


def _train_epoch(model, loader, wandb_session=None, progress_bar=False):
    network = model.network
    network.train()
    labels_all, scores_all, losses = [], [], []
    batches = loader
    if progress_bar:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=f"epoch {model.current_epoch}")
    n_batches = len(loader)
    for batch_idx, samples in enumerate(batches):
        batch = collate_audio_samples_to_dict(samples)
        x = batch["samples"].to(model.device)
        y = batch["labels"].to(model.device)
        output = network(x)
        if hasattr(output, "aux_logits") and output.aux_logits is not None:  # Inception in training mode
            logits = output.logits
            loss = model.loss_fn(logits, y) + 0.4 * model.loss_fn(output.aux_logits, y)
        else:
            logits = output
            loss = model.loss_fn(logits, y)
        model.opt_net.zero_grad()
        loss.backward()
        model.opt_net.step()
        losses.append(float(loss.detach().cpu()))
        scores_all.append(logits.detach().cpu().numpy())
        labels_all.append(y.detach().cpu().numpy())
        if batch_idx % model.log_interval == 0:
            model._log(f"Epoch: {model.current_epoch} [batch {batch_idx}/{n_batches}, "
                       f"{100 * batch_idx / n_batches:.2f}%] DistLoss: {np.mean(losses):.3f}", level=2)
    model.scheduler.step()
    model.loss_hist[model.current_epoch] = float(np.mean(losses))
    if wandb_session is not None:
        wandb_session.log({"loss": model.loss_hist[model.current_epoch], "epoch": model.current_epoch})
    return np.concatenate(labels_all), np.concatenate(scores_all)


def _checkpoint(model, path):
    """Save in the safe format; a model it cannot describe (custom architecture) is pickled, with a warning."""
    from opso_core.ml.persistence import UnsafeToDescribeError

    try:
        model.save(path)
    except UnsafeToDescribeError as exc:
        warnings.warn(f"{exc}. Checkpoint {path.name} is saved pickled instead; load it with "
                      "load_model(path, allow_pickle=True)", stacklevel=3)
        model.save(path, pickle=True)


def train(model, train_df, validation_df=None, epochs=1, batch_size=1, num_workers=0, save_path=".",
          save_interval=1, log_interval=10, validation_interval=1,
          invalid_samples_log="./invalid_training_samples.log", raise_errors=False, wandb_session=None,
          progress_bar=False):
    """Train ``model`` (a :class:`~opso_core.ml.cnn.CNN`); see ``CNN.train`` for the arguments."""
    _check_labels(model, train_df, "train_df")
    _check_labels(model, validation_df, "validation_df")
    if epochs < 0 or batch_size < 1:  # epochs=0 sets the model up for training and returns (as 0.9.0)
        raise OpsoValueError(f"epochs must be >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    save_path = Path(save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    model.log_interval = max(1, int(log_interval))
    model.save_path = str(save_path)

    from opso_core.ml.loss import ResampleLoss

    loss_cls = getattr(model, "loss_cls", None)
    if loss_cls is ResampleLoss:
        model.loss_fn = ResampleLoss(torch.as_tensor(train_df.to_numpy().sum(axis=0), dtype=torch.float32),
                                     train_num=len(train_df))
    elif loss_cls is not None:  # as 0.9.0's _init_loss_fn: the loss class set before training is the one used
        model.loss_fn = loss_cls()
    model.network.to(model.device)
    if hasattr(model.loss_fn, "to"):
        model.loss_fn.to(model.device)

    dataset = AudioFileDataset(train_df, model.preprocessor, bypass_augmentations=False)
    safe = SafeDataset(dataset, invalid_sample_behavior="raise" if raise_errors else "substitute")
    loader = torch.utils.data.DataLoader(safe, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                         collate_fn=identity, pin_memory=model.device.type == "cuda")
    if model.opt_net is None:
        model.opt_net = model._init_optimizer()
    if model.scheduler is None:
        model.scheduler = torch.optim.lr_scheduler.StepLR(model.opt_net, step_size=model.lr_update_interval,
                                                          gamma=model.lr_cooling_factor)
    if wandb_session is not None:
        wandb_session.config.update(model._generate_wandb_config())

    activation = "softmax" if model.single_target else "sigmoid"
    for epoch in range(epochs):
        model._log(f"Training epoch {model.current_epoch}", level=1)
        targets, scores = _train_epoch(model, loader, wandb_session, progress_bar)
        _, model.train_metrics[model.current_epoch] = model.eval(targets, scores)
        validation_score = None
        if validation_df is not None and epoch % validation_interval == 0:
            predictions = model.predict(validation_df, batch_size=batch_size, num_workers=num_workers,
                                        activation_layer=activation, split_files_into_clips=False)
            validation_score, model.valid_metrics[model.current_epoch] = model.eval(
                validation_df.to_numpy(), predictions.to_numpy())
            model._log(f"Validation score (epoch {model.current_epoch}): {validation_score:.3f}", level=1)
            if wandb_session is not None:
                wandb_session.log({"validation_score": validation_score, "epoch": model.current_epoch})
        if (model.current_epoch + 1) % save_interval == 0 or epoch == epochs - 1:
            _checkpoint(model, save_path / f"epoch-{model.current_epoch}.model")
        if validation_score is not None and not np.isnan(validation_score) and validation_score > model.best_score:
            model.best_score = float(validation_score)
            model.best_epoch = model.current_epoch
            _checkpoint(model, save_path / "best.model")
        model.current_epoch += 1
    if validation_df is not None and model.best_epoch is not None:
        model._log(f"Best model: epoch {model.best_epoch}, validation score {model.best_score:.3f}", level=1)
    safe.report(log=invalid_samples_log if safe._invalid_samples else None)
