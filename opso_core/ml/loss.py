"""Loss functions for one-hot labels (``opensoundscape.ml.loss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from opso_core.errors import OpsoValueError

__all__ = ["BCEWithLogitsLoss_hot", "CrossEntropyLoss_hot", "ResampleLoss", "binary_cross_entropy", "reduce_loss",
           "weight_reduce_loss"]


class BCEWithLogitsLoss_hot(nn.BCEWithLogitsLoss):
    """``nn.BCEWithLogitsLoss`` taking 0/1 labels of any dtype (multi-target)."""

    def forward(self, x, target):
        return super().forward(x, target.float())


class CrossEntropyLoss_hot(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` taking one-hot labels (single-target); other labels raise."""

    def forward(self, x, target):
        sums = target.sum(1)
        if not (bool((sums == 1).all())):
            raise OpsoValueError("labels must be one-hot (exactly one 1 per sample) for CrossEntropyLoss_hot; "
                                 "use a multi-target model for other labels")
        return super().forward(x, target.argmax(1))


def reduce_loss(loss, reduction):
    """Reduce an element-wise loss: ``"none"``, ``"mean"`` or ``"sum"``."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise OpsoValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def weight_reduce_loss(loss, weight=None, reduction="mean", avg_factor=None):
    """Apply element-wise ``weight``, then reduce (``avg_factor`` divides the sum instead of the count)."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return reduce_loss(loss, reduction)
    if reduction == "mean":
        return loss.sum() / avg_factor
    if reduction != "none":
        raise OpsoValueError('avg_factor can not be used with reduction="sum"')
    return loss


def binary_cross_entropy(pred, label, weight=None, reduction="mean", avg_factor=None):
    """Element-wise BCE with logits, weighted and reduced (helper of :class:`ResampleLoss`)."""
    if weight is not None:
        weight = weight.float()
    loss = F.binary_cross_entropy_with_logits(pred, label.float(), weight, reduction="none")
    return weight_reduce_loss(loss, reduction=reduction, avg_factor=avg_factor)


class ResampleLoss(nn.Module):
    """Distribution-balanced loss for multi-target training on imbalanced classes (Wu et al. 2020).

    Parameters
    ----------
    class_freq : torch.Tensor, shape (n_classes,)
        Number of positive training samples per class (all > 0).
    reduction : {"mean", "sum", "none"}
    loss_weight : float
    train_num : int, optional
        Number of training samples, for the logits' initial bias ``-log(train_num / class_freq - 1)``.
        Default: ``class_freq.sum()``, as OpenSoundscape 0.9.0 (right for single-target labels; for one
        class, or a class present in every sample, 0.9.0's bias is infinite and the loss NaN). CNN
        training passes the real number; a class in every sample gets the bias of 1 - 1e-6 of them.
    """

    def __init__(self, class_freq, reduction="mean", loss_weight=1.0, *, train_num=None):
        super().__init__()
        class_freq = torch.as_tensor(class_freq).float()
        if (class_freq <= 0).any():
            raise OpsoValueError("ResampleLoss needs at least one positive sample of every class")
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.cls_criterion = binary_cross_entropy
        self.map_alpha, self.map_beta, self.map_gamma = 10.0, 0.2, 0.1
        self.neg_scale = 0.2
        init_bias = 0.05
        self.register_buffer("class_freq", class_freq)
        train_num = class_freq.sum() if train_num is None else torch.as_tensor(float(train_num))
        odds = (train_num / class_freq - 1).clamp_min(1e-6)  # 0 when a class is in every sample
        self.register_buffer("init_bias", -torch.log(odds) * init_bias / self.neg_scale)
        self.register_buffer("freq_inv", 1.0 / class_freq)

    def forward(self, cls_score, label, weight=None, reduction_override=None):
        if reduction_override not in (None, "none", "mean", "sum"):
            raise OpsoValueError(f"reduction_override must be None, 'none', 'mean' or 'sum', got {reduction_override!r}")
        reduction = reduction_override or self.reduction
        label = label.float()
        weight = self.rebalance_weight(label)
        cls_score, weight = self.logit_reg_functions(label, cls_score, weight)
        return self.loss_weight * self.cls_criterion(cls_score, label, weight, reduction=reduction)

    def reweight_functions(self, label):
        return self.rebalance_weight(label.float())

    def logit_reg_functions(self, labels, logits, weight=None):
        logits = logits + self.init_bias  # out of place: the network's output is not modified
        logits = logits * (1 - labels) * self.neg_scale + logits * labels
        weight = weight / self.neg_scale * (1 - labels) + weight * labels
        return logits, weight

    def rebalance_weight(self, gt_labels):
        repeat_rate = torch.sum(gt_labels * self.freq_inv, dim=1, keepdim=True).clamp_min(1e-12)
        pos_weight = self.freq_inv.unsqueeze(0) / repeat_rate
        return torch.sigmoid(self.map_beta * (pos_weight - self.map_gamma)) + self.map_alpha
