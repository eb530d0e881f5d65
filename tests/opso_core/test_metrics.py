import numpy as np
import pandas as pd
import pytest
import torch

from opso_core.errors import OpsoValueError
from opso_core.metrics import (
    average_precision,
    multi_target_metrics,
    predict_multi_target_labels,
    predict_single_target_labels,
    roc_auc,
    single_target_metrics,
)


def test_predict_single_target_labels_keeps_type():
    scores = [[0.1, 0.9], [0.8, 0.2]]
    assert predict_single_target_labels(scores) == [[0, 1], [1, 0]]
    np.testing.assert_array_equal(predict_single_target_labels(np.array(scores)), [[0, 1], [1, 0]])
    df = pd.DataFrame(scores, columns=["a", "b"], index=["x", "y"])
    out = predict_single_target_labels(df)
    assert list(out.columns) == ["a", "b"] and list(out.index) == ["x", "y"]
    assert torch.equal(predict_single_target_labels(torch.tensor(scores)), torch.tensor([[0, 1], [1, 0]]))


def test_predict_multi_target_labels_thresholds():
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.4]])
    np.testing.assert_array_equal(predict_multi_target_labels(scores, 0.5), [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(predict_multi_target_labels(scores, [0.05, 0.95, 0.4]), [[1, 0, 1], [1, 0, 1]])
    with pytest.raises(OpsoValueError):
        predict_multi_target_labels(scores, [0.1, 0.2])


def test_average_precision_known_values():
    # sklearn's doc example: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333...
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8333333333)
    assert average_precision([1, 0], [0.9, 0.1]) == 1.0
    assert np.isnan(average_precision([0, 0], [0.9, 0.1]))


def test_roc_auc_known_values():
    # sklearn's doc example: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5  # ties count half
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_multi_target_metrics():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.1]])
    m = multi_target_metrics(targets, scores, ["a", "b"], 0.5)
    assert m["a"]["precision"] == 1.0 and m["a"]["recall"] == 1.0 and m["a"]["support"] == 2
    assert m["b"]["precision"] == 1.0 and m["b"]["recall"] == 0.5 and m["b"]["f1"] == pytest.approx(2 / 3)
    assert m["hamming_loss"] == pytest.approx(1 / 8)
    assert m["jaccard"] == pytest.approx((1 + 0.5) / 2)
    assert m["a"]["avg_precision"] == 1.0 and m["b"]["avg_precision"] == 1.0  # ranking is perfect
    assert m["map"] == 1.0 and m["au_roc"] == 1.0


def test_single_target_metrics():
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    scores = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.6, 0.3, 0.1]])
    m = single_target_metrics(targets, scores)
    np.testing.assert_array_equal(m["confusion_matrix"], [[2, 0, 0], [0, 1, 0], [1, 0, 0]])
    assert m["accuracy"] == 0.75
    assert m["precision"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["recall"] == pytest.approx((1 + 1 + 0) / 3)
    with pytest.raises(OpsoValueError, match="single-target"):
        single_target_metrics(np.array([[1, 1]]), np.array([[0.5, 0.5]]))
