import numpy as np
import pytest
import torch

from opso_core.errors import OpsoValueError
from opso_core.ml.loss import (
    BCEWithLogitsLoss_hot,
    CrossEntropyLoss_hot,
    ResampleLoss,
    reduce_loss,
    weight_reduce_loss,
)
from opso_core.ml.utils import apply_activation_layer, get_batch


def test_bce_hot_matches_torch():
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    y = torch.tensor([[1, 0], [0, 1]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(x, y.float())
    assert float(BCEWithLogitsLoss_hot()(x, y)) == pytest.approx(float(expected))


def test_cross_entropy_hot():
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([[1, 0], [0, 1]])
    expected = torch.nn.functional.cross_entropy(x, torch.tensor([0, 1]))
    assert float(CrossEntropyLoss_hot()(x, y)) == pytest.approx(float(expected))
    with pytest.raises(OpsoValueError, match="one-hot"):
        CrossEntropyLoss_hot()(x, torch.tensor([[1, 1], [0, 1]]))


def test_reductions():
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert float(reduce_loss(loss, "mean")) == 2.0 and float(reduce_loss(loss, "sum")) == 6.0
    assert torch.equal(reduce_loss(loss, "none"), loss)
    assert float(weight_reduce_loss(loss, torch.tensor([1.0, 0.0, 1.0]), avg_factor=2)) == 2.0
    with pytest.raises(OpsoValueError):
        weight_reduce_loss(loss, reduction="sum", avg_factor=2)
    with pytest.raises(OpsoValueError):
        reduce_loss(loss, "max")


def test_resample_loss_is_finite_and_does_not_modify_logits():
    loss_fn = ResampleLoss(torch.tensor([10.0, 2.0]))
    logits = torch.tensor([[0.3, -0.2], [1.0, 0.5]], requires_grad=True)
    before = logits.detach().clone()
    loss = loss_fn(logits, torch.tensor([[1, 0], [1, 1]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.equal(logits.detach(), before)
    assert logits.grad is not None
    with pytest.raises(OpsoValueError):
        ResampleLoss(torch.tensor([1.0, 0.0]))


def test_activation_layers():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(apply_activation_layer(x), x)
    np.testing.assert_allclose(apply_activation_layer(x, "softmax").sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(apply_activation_layer(x, "sigmoid"), torch.sigmoid(x))
    sl = apply_activation_layer(x, "softmax_and_logit")
    np.testing.assert_allclose(torch.sigmoid(sl), torch.softmax(x, 1), rtol=1e-5)
    with pytest.raises(OpsoValueError):
        apply_activation_layer(x, "tanh")


def test_get_batch():
    assert get_batch([1, 2, 3, 4, 5, 6, 7], 3, 0) == [1, 2, 3]
    assert get_batch([1, 2, 3, 4, 5, 6, 7], 3, 2) == [7]


def test_cas_dataloader(labelled_files):
    from opso_core.ml.datasets import AudioFileDataset
    from opso_core.ml.utils import cas_dataloader
    from opso_core.preprocess.preprocessors import SpectrogramPreprocessor

    ds = AudioFileDataset(labelled_files, SpectrogramPreprocessor(1.0, out_shape=(16, 16, 1)), bypass_augmentations=True)
    loader = cas_dataloader(ds, batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert len(batch) == 4 and all(s.data.shape == (1, 16, 16) for s in batch)
    assert sum(int(s.labels["frog"]) for s in batch) == 2  # two classes, two samples each


def test_the_prefetch_helpers_are_still_importable_from_here():
    import opso_core.prefetch
    from opso_core.ml.utils import one_ahead, prefetched

    assert prefetched is opso_core.prefetch.prefetched and one_ahead is opso_core.prefetch.one_ahead


def test_resample_loss_with_one_class_is_finite():
    """0.9.0's initial bias -log(sum(class_freq) / class_freq - 1) is infinite for one class (NaN loss);
    with the number of training samples it is the paper's finite bias."""
    from opso_core.ml.loss import ResampleLoss

    labels = torch.tensor([[1.0], [0.0], [1.0], [1.0]])
    logits = torch.tensor([[0.3], [-0.2], [1.0], [0.1]])
    loss = ResampleLoss(torch.tensor([3.0]), train_num=4)
    assert torch.isfinite(loss.init_bias).all() and torch.isfinite(loss(logits, labels))
    np.testing.assert_allclose(loss.init_bias.numpy(), [-np.log(4 / 3 - 1) * 0.05 / 0.2], rtol=1e-6)
    assert torch.isfinite(ResampleLoss(torch.tensor([3.0]))(logits, labels))  # 0.9.0's default: clamped
    two = ResampleLoss(torch.tensor([3.0, 1.0]))  # single-target counts: the sum is the sample count
    np.testing.assert_allclose(two.init_bias.numpy(), -np.log(np.array([4 / 3, 4.0]) - 1) * 0.25, rtol=1e-6)
