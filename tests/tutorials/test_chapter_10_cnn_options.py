"""The seed's chapter 10 ("Advanced CNN training"), code blocks [24]-[48] in order, with ``opensoundscape``
changed to ``opso_core`` and nothing else, except:

- [24]'s ``%config`` line (IPython magic) is left out;
- [25] downloads the woodcock data: the ``woodcock_labeled_data`` fixture makes a folder of the same
  layout (synthetic calls); ResNet18/ResNet50 ImageNet weights come from torch's cache, filled
  beforehand by ``offline_pretrained_resnets`` (random weights: no network);
- [27] imports scikit-learn's ``train_test_split``: a stand-in with the same call
  (``sklearn_train_test_split``).
"""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.mark.slow
def test_chapter_10_runs_unchanged(woodcock_labeled_data, offline_pretrained_resnets, sklearn_train_test_split,
                                   capsys):
    # [24]
    from opso_core.preprocess import preprocessors
    from opso_core.ml import cnn, cnn_architectures
    import torch
    import pandas as pd
    from pathlib import Path
    import numpy as np
    import random
    import subprocess
    from matplotlib import pyplot as plt

    plt.rcParams["figure.figsize"] = [15, 5]  # for big visuals

    # [26]
    # load one-hot labels dataframe
    labels = pd.read_csv("./woodcock_labeled_data/one_hot_labels.csv").set_index("file")[["present"]]
    # prepend the folder location to the file paths
    labels.index = pd.Series(labels.index).apply(lambda f: "./woodcock_labeled_data/" + f)
    # create class list
    classes = labels.columns
    # inspect
    labels.head()
    # [27]
    from sklearn.model_selection import train_test_split

    train_df, valid_df = train_test_split(labels, test_size=0.2, random_state=0)
    print(f"created train_df (len {len(train_df)}) and valid_df (len {len(valid_df)})")
    assert "created train_df (len 8) and valid_df (len 2)" in capsys.readouterr().out

    # [28]
    arch = cnn_architectures.resnet50(num_classes=len(classes))
    model = cnn.CNN(arch, classes, sample_duration=2.0)
    # [29]
    model = cnn.CNN("resnet18", classes, 2.0)
    # [30]
    # change the model to be single_target
    model.single_target = True
    # or specify single_target when you create the object
    model = cnn.CNN(arch, classes, 2.0)
    # [31]
    assert model.optimizer_params == {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005}
    # [32]
    model.optimizer_params["lr"] = 0.001
    # [33]
    from opso_core.ml.cnn import separate_resnet_feat_clf

    # [34]
    r18_model = cnn.CNN("resnet18", classes, 2.0)
    print(r18_model.optimizer_params)
    separate_resnet_feat_clf(r18_model)  # in place operation!
    # now we can specify separate parameters for the 'feature' and 'classifier' portions of the network
    r18_model.optimizer_params["feature"]["lr"] = 0.001
    r18_model.optimizer_params["classifier"]["lr"] = 0.01
    r18_model.optimizer_params
    assert r18_model.optimizer_params == {"feature": {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005},
                                          "classifier": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005}}
    # [35]
    model.lr_cooling_factor = 0.1
    model.lr_update_interval = 1
    # [36]
    model.optimizer_params["weight_decay"] = 0.001
    # [37]
    my_arch = cnn_architectures.alexnet(num_classes=len(classes), weights=None)
    # [38]
    print(cnn_architectures.list_architectures())
    assert "['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'alexnet', 'vgg11_bn'" in \
        capsys.readouterr().out
    # [39]
    model = cnn.CNN(architecture="resnet18", classes=classes, sample_duration=2.0)
    # [40]
    arch = cnn_architectures.alexnet(num_classes=10, weights=None)
    # [41]
    # See "InceptionV3 architecture" section below for more information
    arch = cnn_architectures.resnet50(num_classes=10, freeze_feature_extractor=True, weights=None)

    # [42]
    from opso_core.ml.cnn import InceptionV3

    # generate an Inception model
    model = InceptionV3(classes=classes, weights=None, sample_duration=2)
    # train and validate for 1 epoch
    # note that Inception will complain if batch_size=1
    model.train(train_df, valid_df, epochs=1, batch_size=4)
    # predict
    scores = model.predict(valid_df)
    assert len(scores) == 2 and list(scores.columns) == ["present"]

    # [43]
    # initialize the AlexNet architecture
    new_arch = cnn_architectures.densenet121(num_classes=2, weights=None)
    # replace the alexnet architecture with the densenet architecture
    model.network = new_arch
    # [44]
    from opso_core.ml.cnn import use_resample_loss

    # [45]
    model = cnn.CNN("resnet18", classes, 2.0)
    use_resample_loss(model)
    print(model.loss_cls)
    assert "ResampleLoss" in capsys.readouterr().out
    # use as normal...
    # model.train(...)
    # model.predict(...)

    # [47]
    model = cnn.CNN("resnet18", classes, 2.0)
    # change the min and max frequencies for the spectrogram bandpass action
    model.preprocessor.pipeline.bandpass.set(min_f=3000, max_f=5000)
    # inspect a few preprocessed samples (see basic CNN training and prediction tutorial for details)
    from opso_core.preprocess.utils import show_tensor_grid
    from opso_core.ml.datasets import AudioFileDataset

    sample_of_4 = train_df.sample(n=4)
    inspection_dataset = AudioFileDataset(sample_of_4, model.preprocessor)
    samples = [sample.data for sample in inspection_dataset]
    labels = [list(sample.labels[sample.labels > 0].index) for sample in inspection_dataset]
    _ = show_tensor_grid(samples, 4, labels=labels)
    # now we can train and validate on the bandpassed spectrograms
    model.train(train_df, valid_df, epochs=0)
    plt.close("all")

    # [48]
    import shutil

    shutil.rmtree("./woodcock_labeled_data")
    for p in Path(".").glob("*.model"):
        p.unlink()
