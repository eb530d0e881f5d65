"""The seed's chapter 7 ("Prediction with pre-trained CNNs"), code blocks [1]-[18] in order, with
``opensoundscape`` changed to ``opso_core`` and nothing else, except:

- [3]'s ``%config`` line (IPython magic) is left out;
- [4]'s ``CNN('resnet18', ...)`` loads ImageNet weights from torch's cache, filled beforehand by
  ``offline_pretrained_resnet18``; [6] downloads ``1min_audio.wav`` and [15] an OpenSoundscape 0.4
  model: fixtures write files of the same kind there (``one_minute_audio_1min``, ``opso_04_model``);
- the last blocks convert models in environments with OpenSoundscape 0.6.x, on placeholder paths
  (``/path/to/saved.model``): they do not run anywhere as printed. Loading the dictionary they write,
  with keys renamed, is what ``load_outdated_model`` does in [17].
"""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:After loading a model")  # [17]'s reminder, as 0.9.0 gives it
def test_chapter_07_runs_unchanged(one_minute_audio_1min, offline_pretrained_resnet18, opso_04_model):
    # [1]
    from opso_core.ml.cnn import load_model
    import opso_core

    # [2]
    # Other utilities and packages
    import torch
    from pathlib import Path
    import numpy as np
    import pandas as pd
    from glob import glob
    import subprocess

    # [3]
    # set up plotting
    from matplotlib import pyplot as plt

    plt.rcParams["figure.figsize"] = [15, 5]  # for large visuals

    # [4]
    from opso_core import CNN

    CNN("resnet18", ["classA", "classB"], 5.0).save("./temp.model")
    # [5]
    model = load_model("./temp.model")

    # [7]
    from glob import glob

    audio_files = glob("./*.wav")  # match all .wav files in the current directory
    audio_files
    assert audio_files == ["./1min_audio.wav"]
    # [8]
    scores = model.predict(audio_files)
    scores.head()
    assert len(scores) == 12 and list(scores.columns) == ["classA", "classB"]
    # [9]
    scores = model.predict(audio_files, overlap_fraction=0.5)
    scores.head()
    assert scores.index.get_level_values("start_time").tolist()[:3] == [0.0, 2.5, 5.0]

    # [10]
    from opso_core.preprocess.utils import show_tensor_grid
    from opso_core.ml.datasets import AudioSplittingDataset

    # generate a dataset with the samples we wish to generate and the model's preprocessor
    inspection_dataset = AudioSplittingDataset(audio_files, model.preprocessor)
    inspection_dataset.bypass_augmentations = True
    samples = [sample.data for sample in inspection_dataset]
    _ = show_tensor_grid(samples, 4)

    # [11]
    scores = model.predict(
        audio_files,
        activation_layer="softmax",
    )
    # [12]
    scores.head()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    # [13]
    from opso_core.metrics import predict_single_target_labels

    predicted_labels = predict_single_target_labels(scores)
    predicted_labels.head()
    assert (predicted_labels.sum(axis=1) == 1).all()
    # [14]
    _ = plt.hist(scores["classA"], bins=20)
    _ = plt.xlabel("softmax score for classA")

    # [16]
    from opso_core.ml.cnn import load_outdated_model

    # [17]
    model = load_outdated_model("./opso_04_model_acanthis-flammea.tar", "resnet18", 5.0)
    # invert values to match the convention of OpenSoundscape 0.7.x (lowest values = quiet, highest = loud)
    model.preprocessor.pipeline.to_tensor.set(invert=True)
    # [18]
    scores = model.predict(audio_files)
    scores.head()
    assert list(scores.columns) == ["acanthis-flammea-absent", "acanthis-flammea-present"] and len(scores) == 12
    plt.close("all")
