"""The seed's chapter 8 ("Beginner friendly training and prediction with CNNs"), code blocks [1]-[32] in
order, with ``opensoundscape`` changed to ``opso_core`` and nothing else, except:

- [1]'s ``%config`` line (IPython magic) is left out;
- [3] downloads the woodcock data: the ``woodcock_labeled_data`` fixture makes a folder of the same
  layout (synthetic calls); ``CNN('resnet18', ...)`` loads ImageNet weights, which the
  ``offline_pretrained_resnet18`` fixture puts in torch's cache beforehand (random weights: no network);
- [7] imports scikit-learn's ``train_test_split``, not a dependency of opso: a stand-in with the same
  call is installed (``sklearn_train_test_split``);
- [12] logs in to Weights & Biases: with ``WANDB_MODE=disabled`` ``wandb.init`` returns a disabled run
  (the block's ``try:`` lost its ``except`` in the PDF; the notebook falls back to no session);
- the training runs are as written (10, 1, 1, 3 and 0 epochs) on the small synthetic set.
"""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.mark.slow
def test_chapter_08_runs_unchanged(woodcock_labeled_data, offline_pretrained_resnet18, sklearn_train_test_split,
                                   monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # [1]
    # the cnn module provides classes for training/predicting with various types of CNNs
    from opso_core import CNN

    # other utilities and packages
    import torch
    import pandas as pd
    from pathlib import Path
    import numpy as np
    import pandas as pd
    import random
    import subprocess

    # set up plotting
    from matplotlib import pyplot as plt

    plt.rcParams["figure.figsize"] = [15, 5]  # for large visuals

    # [2]
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)

    # [4]
    # load Specky output: a table of labeled audio files
    specky_table = pd.read_csv(Path("woodcock_labeled_data/woodcock_labels.csv"))
    specky_table.head()
    # [5]
    # update the paths to the audio files
    specky_table.filename = ["./woodcock_labeled_data/" + f for f in specky_table.filename]
    specky_table.head()
    # [6]
    # create a new dataframe with the filenames from the previous table as the index
    labels = pd.DataFrame(index=specky_table["filename"])
    # convert 'present' to 1 and 'absent' to 0
    labels["woodcock"] = [1 if l == "present" else 0 for l in specky_table["woodcock"]]
    # look at the first rows
    labels.head(3)
    assert labels["woodcock"].tolist()[:3] == [1, 0, 1]

    # [7]
    from sklearn.model_selection import train_test_split

    train_df, validation_df = train_test_split(labels, test_size=0.2, random_state=1)

    # [8]
    # Create model object
    classes = train_df.columns  # in this case, there's just one class: ["woodcock"]
    model = CNN("resnet18", classes=classes, sample_duration=2.0)

    # [9]
    # helper functions to visualize processed samples
    from opso_core.preprocess.utils import show_tensor_grid, show_tensor
    from opso_core.ml.datasets import AudioFileDataset

    # [10]
    # pick some random samples from the training set
    sample_of_4 = train_df.sample(n=4)
    # generate a dataset with the samples we wish to generate and the model's preprocessor
    inspection_dataset = AudioFileDataset(sample_of_4, model.preprocessor)
    # generate the samples using the dataset
    samples = [sample.data for sample in inspection_dataset]
    labels = [list(sample.labels[sample.labels > 0].index) for sample in inspection_dataset]
    # display the samples
    _ = show_tensor_grid(samples, 4, labels=labels)

    # [11]
    # turn augmentation off for the dataset
    inspection_dataset.bypass_augmentations = True
    # generate the samples without augmentation
    samples = [sample.data for sample in inspection_dataset]
    labels = [list(sample.labels[sample.labels > 0].index) for sample in inspection_dataset]
    # display the samples
    _ = show_tensor_grid(samples, 4, labels=labels)

    # [12]
    try:
        import wandb

        wandb.login()
        wandb_session = wandb.init(
            entity="kitzeslab",
            project="opensoundscape_tutorials",
            name="cnn training tutorial",
        )
    except Exception:
        wandb_session = None

    # [13]
    model.train(
        train_df=train_df,
        validation_df=validation_df,
        save_path="./binary_train/",  # where to save the trained model
        epochs=10,
        batch_size=8,
        save_interval=5,  # save model every 5 epochs (the best model is always saved in addition)
        num_workers=0,  # specify 4 if you have 4 CPU processes, eg; 0 means only the root process
        wandb_session=wandb_session,
    )
    # let wandb know that we finished training successfully
    wandb.unwatch(model.network)
    wandb.finish()
    assert sorted(model.loss_hist) == list(range(10))
    assert Path("./binary_train/epoch-4.model").exists() and Path("./binary_train/epoch-9.model").exists()

    # [14]
    wandb_session

    # [15]
    samples = model.generate_cams(samples=train_df.head(1))
    samples[0].cam.plot()

    # [16]
    plt.scatter(model.loss_hist.keys(), model.loss_hist.values())
    plt.xlabel("epoch")
    plt.ylabel("loss")

    # [17]
    model.logging_level = 3  # request lots of logged content
    model.log_file = "./binary_train/training_log.txt"  # specify a file to log output to
    Path(model.log_file).parent.mkdir(parents=True, exist_ok=True)  # make the folder ./binary_train
    model.verbose = 0  # don't print anything to the screen during training
    model.train(
        train_df=train_df,
        validation_df=validation_df,
        save_path="./binary_train/",  # where to save the trained model
        epochs=1,
        batch_size=8,
        save_interval=5,  # save model every 5 epochs (the best model is always saved in addition)
        num_workers=0,  # specify 4 if you have 4 CPU processes, eg; 0 means only the root process
    )
    assert Path(model.log_file).read_text().strip()

    # [18]
    from glob import glob

    field_recordings = glob("./woodcock_labeled_data/field_data/*")
    field_recordings
    assert len(field_recordings) == 2
    # [19]
    prediction_scores_df = model.predict(field_recordings)
    # [20]
    prediction_scores_df.head()
    assert list(prediction_scores_df.index.names) == ["file", "start_time", "end_time"]
    assert len(prediction_scores_df) == 2 * 10  # 20 s files, 2 s clips

    # [21]
    from opso_core.metrics import predict_single_target_labels

    score_df = model.predict(field_recordings)
    pred_df = predict_single_target_labels(score_df)
    pred_df.head()
    assert (pred_df["woodcock"] == 1).all()  # one class: always the highest
    # [22]
    from opso_core.metrics import predict_multi_target_labels

    multi_target_pred_df = predict_multi_target_labels(score_df, threshold=0.99)
    multi_target_pred_df.head()
    assert set(multi_target_pred_df["woodcock"]) <= {0, 1}

    # [23]
    valid_scores = model.predict(
        validation_df,
        activation_layer="sigmoid",
        split_files_into_clips=False,
    )
    # [24]
    valid_scores.columns = ["pred_woodcock"]
    validation_df.join(valid_scores).sample(2)
    assert valid_scores["pred_woodcock"].between(0, 1).all()
    # [25]
    score_df = model.predict(
        validation_df,
        batch_size=8,
        num_workers=0,
    )

    # [26]
    from opso_core.ml.cnn import use_resample_loss

    model = CNN("resnet18", classes, 2.0, single_target=False)
    use_resample_loss(model)
    print("model.single_target:", model.single_target)
    assert "model.single_target: False" in capsys.readouterr().out
    # [27]
    model.train(
        train_df,
        validation_df,
        save_path="./multilabel_train/",
        epochs=1,
        batch_size=64,
        save_interval=100,
        num_workers=0,
    )

    # [28]
    model1 = CNN("resnet18", classes, 2.0, single_target=False)
    # Save every 2 epochs
    model1.train(
        train_df,
        validation_df,
        epochs=3,
        batch_size=8,
        save_path="./binary_train/",
        save_interval=2,
        num_workers=0,
    )
    model1.save("./binary_train/my_favorite.model")

    # [29]
    from opso_core.ml.cnn import load_model

    model = load_model("./binary_train/best.model")
    # [30]
    # load the saved model
    model = load_model("./binary_train/best.model")
    # predict on a dataset
    scores = model.predict(field_recordings, activation_layer="sigmoid")
    assert scores["woodcock"].between(0, 1).all()

    # [31]
    # Create architecture
    model = load_model("./binary_train/best.model")
    # Continue training from the checkpoint where the model was saved
    epoch = model.current_epoch
    model.train(train_df, validation_df, save_path=".", epochs=0)
    assert model.current_epoch == epoch
    plt.close("all")

    # [32]
    import shutil

    dirs = ["./multilabel_train", "./binary_train", "./woodcock_labeled_data"]
    for d in dirs:
        try:
            shutil.rmtree(d)
        except:
            pass
