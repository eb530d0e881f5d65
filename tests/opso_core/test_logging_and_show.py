import sys
import types

import matplotlib
import pytest
import torch

from opso_core.errors import MissingDependencyError
from opso_core.preprocess.utils import show_tensor, show_tensor_grid


def test_show_tensor_and_grid():
    show_tensor(torch.zeros(3, 8, 8))
    fig = show_tensor_grid([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)], columns=2, labels=["a", "b"])
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    matplotlib.pyplot.close("all")


def test_wandb_table_needs_wandb(monkeypatch):
    from opso_core.logging import wandb_table

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependencyError, match="wandb"):
        wandb_table(object())


def test_wandb_table_with_a_stand_in(monkeypatch, tmp_path):
    import pandas as pd

    from opso_core.logging import wandb_table
    from opso_core.ml.datasets import AudioFileDataset
    from opso_core.preprocess.preprocessors import SpectrogramPreprocessor
    from opso_core.testing import tone

    fake = types.SimpleNamespace(
        Audio=lambda samples, sample_rate: ("audio", len(samples), sample_rate),
        Image=lambda img: ("image", img.shape),
        Table=lambda columns, data: types.SimpleNamespace(columns=columns, data=data))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    path = tmp_path / "a.wav"
    tone(1000, 2.0, 22050).save(path)
    ds = AudioFileDataset(pd.DataFrame({"frog": [1]}, index=[str(path)]),
                          SpectrogramPreprocessor(2.0, out_shape=(16, 16, 3)))
    table = wandb_table(ds, classes_to_extract=("frog",))
    assert table.columns == ["audio", "image", "file", "start_time", "tags", "frog"]
    audio, image, file, start, tags, frog = table.data[0]
    assert audio == ("audio", 44100, 22050) and image == ("image", (16, 16, 3))
    assert file == str(path) and tags == "frog" and frog == 1


def test_wandb_table_with_wandb(tmp_path, monkeypatch):
    """With the real wandb (offline: a Table is built locally, nothing is sent)."""
    wandb = pytest.importorskip("wandb")
    import pandas as pd

    from opso_core.logging import wandb_table
    from opso_core.ml.datasets import AudioSplittingDataset
    from opso_core.preprocess.preprocessors import SpectrogramPreprocessor
    from opso_core.testing import tone

    monkeypatch.setenv("WANDB_MODE", "disabled")
    path = tmp_path / "a.wav"
    tone(1000, 4.0, 22050).save(path)
    ds = AudioSplittingDataset(pd.DataFrame({"frog": [1], "other": [0]}, index=[str(path)]),
                               SpectrogramPreprocessor(2.0, out_shape=(16, 16, 3)))
    table = wandb_table(ds, n=2, raise_exceptions=True)
    assert isinstance(table, wandb.Table)
    assert table.columns[:4] == ["audio", "image", "file", "start_time"] and len(table.data) == 2
    assert [row[3] for row in table.data] == [0.0, 2.0]
