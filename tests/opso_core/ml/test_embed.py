"""``CNN.embed``: the classifier's input by default (the network's last layer on it gives ``predict``'s
logits), any named layer's output, averaged or not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from opso_core.errors import OpsoValueError
from opso_core.ml import cnn_architectures as ca
from opso_core.ml.cnn import CNN
from opso_core.testing import make_archive


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory):
    archive = make_archive(tmp_path_factory.mktemp("embed"), n_recorders=1, files_per_recorder=2, file_duration_s=6,
                           sample_rate_hz=22050, seed=4)
    torch.manual_seed(0)
    model = CNN(ca.resnet18(2, weights=None), ["a", "b"], 2.0, sample_shape=(64, 64, 3))
    return model, sorted(archive.files.file)


def test_the_classifier_s_input_by_default(model_and_files):
    model, files = model_and_files
    embeddings, logits = model.embed(files, return_preds=True, batch_size=2)
    scores = model.predict(files, batch_size=2)
    assert embeddings.shape == (6, 512) and list(embeddings.index) == list(scores.index)
    np.testing.assert_allclose(logits.to_numpy(), scores.to_numpy(), atol=1e-5)
    fc = model.network.fc
    again = embeddings.to_numpy() @ fc.weight.detach().numpy().T + fc.bias.detach().numpy()
    np.testing.assert_allclose(again, logits.to_numpy(), atol=1e-5)
    assert (embeddings.to_numpy() >= 0).all()  # after ReLU and average pooling


def test_a_named_layer_pooled_or_not(model_and_files):
    model, files = model_and_files
    pooled = model.embed(files[:1], target_layer="layer4", batch_size=3)
    assert pooled.shape == (3, 512)
    np.testing.assert_allclose(pooled.to_numpy(), model.embed(files[:1], batch_size=3).to_numpy(), atol=1e-5)
    flat = model.embed(files[:1], target_layer=model.network.layer4, avgpool=False, return_dfs=False, batch_size=3)
    assert isinstance(flat, np.ndarray) and flat.shape == (3, 512 * 2 * 2)
    with pytest.raises(OpsoValueError, match="target_layer"):
        model.embed(files[:1], target_layer=torch.nn.Linear(2, 2))


def test_clip_tables_and_unreadable_files(model_and_files, tmp_path):
    model, files = model_and_files
    table = pd.DataFrame(index=pd.MultiIndex.from_tuples([(files[0], 0.0, 2.0), (files[1], 2.0, 4.0)],
                                                         names=["file", "start_time", "end_time"]))
    assert model.embed(table).shape == (2, 512)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVE")
    out = model.embed([files[0], str(broken)], batch_size=2)
    assert out.shape[1] == 512 and out.loc[files[0]].notna().all().all()
