import numpy as np
import pandas as pd
import pytest
import torch

from opso_core.errors import NoValidSamplesError, OpsoValueError
from opso_core.ml.datasets import AudioFileDataset, AudioSplittingDataset
from opso_core.ml.safe_dataset import SafeDataset
from opso_core.ml.sampling import ClassAwareSampler, ImbalancedDatasetSampler
from opso_core.preprocess.preprocessors import SpectrogramPreprocessor
from opso_core.preprocess.utils import PreprocessingError
from opso_core.sample import AudioSample, collate_samples


@pytest.fixture
def pre():
    return SpectrogramPreprocessor(sample_duration=1.0, out_shape=(16, 16, 1))


def test_file_dataset(labelled_files, pre):
    ds = AudioFileDataset(labelled_files, pre)
    assert len(ds) == 8 and ds.classes == ["frog", "other"]
    sample = ds[0]
    assert tuple(sample.data.shape) == (1, 16, 16) and list(sample.labels) == [1, 0]
    names, counts = ds.class_counts()
    assert list(names) == ["frog", "other"] and list(counts) == [4, 4]
    assert len(ds.head(3)) == 3 and len(ds) == 8
    assert len(ds.sample(n=2, random_state=0)) == 2
    unlabelled = AudioFileDataset(list(labelled_files.index), pre)
    assert unlabelled[1].labels.empty
    with pytest.raises(TypeError):
        AudioFileDataset("one_file.wav", pre)


def test_splitting_dataset_counts(labelled_files, pre):
    ds = AudioSplittingDataset(labelled_files, pre)  # 3 s files, 1 s clips
    assert len(ds) == 24
    assert ds.label_df.loc[labelled_files.index[0]]["frog"].tolist() == [1, 1, 1]
    assert len(AudioSplittingDataset(labelled_files, pre, overlap_fraction=0.5)) == 8 * 5
    pre2 = SpectrogramPreprocessor(sample_duration=2.0, out_shape=(16, 16, 1))
    assert len(AudioSplittingDataset(labelled_files, pre2)) == 8
    assert len(AudioSplittingDataset(labelled_files, pre2, final_clip="full")) == 16
    assert len(AudioSplittingDataset(labelled_files, pre2, final_clip="remainder")) == 16
    clip = AudioSplittingDataset(labelled_files, pre2, final_clip="remainder")[1]
    assert clip.start_time == 2.0 and clip.duration == 2.0  # the 1 s remainder is extended to 2 s
    with pytest.raises(OpsoValueError):
        AudioSplittingDataset(labelled_files, pre2, overlap_fraction=1.0)


def test_bypass_augmentations_flag(labelled_files, pre):
    torch.manual_seed(0)
    ds = AudioFileDataset(labelled_files.head(1), pre, bypass_augmentations=True)
    assert torch.equal(ds[0].data, ds[0].data)
    aug = AudioFileDataset(labelled_files.head(1), pre)
    assert not torch.equal(aug[0].data, aug[0].data)  # random trim, masks, noise


def test_safe_dataset_behaviours(labelled_files, pre, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("no")
    df = pd.concat([labelled_files.head(2), pd.DataFrame({"frog": [0], "other": [1]}, index=[str(bad)])])
    ds = AudioFileDataset(df, pre)
    with pytest.raises(PreprocessingError):
        SafeDataset(ds, "raise")[2]
    sub = SafeDataset(ds, "substitute")
    assert sub[2].source == labelled_files.index[0]
    assert sub._invalid_indices == [2] and sub._valid_indices == [0]  # lists, in the order tried, as 0.9.0
    assert sub._invalid_samples == {str(bad)}
    none = SafeDataset(ds, "none", eager_eval=True)
    assert none.is_index_built and none._valid_indices == [0, 1] and none.num_samples_examined == 3
    assert none[2] is None and none[0] is not None and none[-1] is None  # as OpenSoundscape 0.9.0
    assert none._invalid_indices == [2]  # tried twice, listed once
    with pytest.raises(IndexError):
        none[3]
    with pytest.warns(UserWarning, match="There were 1 sample"):
        assert none.report(log=tmp_path / "log.txt") == {str(bad)}
    assert str(bad) in (tmp_path / "log.txt").read_text()
    with pytest.raises(OpsoValueError):
        SafeDataset(ds, "skip")
    only_bad = SafeDataset(AudioFileDataset(df.tail(1), pre), "substitute")
    with pytest.raises(NoValidSamplesError, match="bad.wav"):  # an IndexError, as 0.9.0
        only_bad[0]


def test_samplers():
    labels = np.array([[1, 0]] * 9 + [[0, 1]])
    sampler = ClassAwareSampler(labels, num_samples_cls=1)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 10
    classes = labels[drawn].argmax(1)
    assert 4 <= classes.sum() <= 6  # the rare class is drawn about half the time
    with pytest.raises(OpsoValueError):
        ClassAwareSampler(np.array([[1, 0], [1, 0]]))

    class Fake:
        label_df = pd.DataFrame(labels, columns=["a", "b"])

        def __len__(self):
            return 10

    torch.manual_seed(0)
    imb = ImbalancedDatasetSampler(Fake(), num_samples=2000)
    drawn = np.array(list(imb))
    assert len(drawn) == 2000 and abs((drawn == 9).mean() - 0.5) < 0.05
    assert imb.weights[9] == 1.0 and imb.weights[0] == pytest.approx(1 / 9)


def test_audio_sample_and_collate():
    row = pd.Series({"a": 1, "b": 0}, name=("f.wav", 2.0, 5.0))
    s = AudioSample.from_series(row)
    assert (s.source, s.start_time, s.duration, s.end_time) == ("f.wav", 2.0, 3.0, 5.0)
    assert s.categorical_labels == ["a"]
    s2 = AudioSample.from_series(pd.Series({"a": 0, "b": 1}, name="g.wav"))
    assert s2.start_time is None and s2.end_time is None
    s.data, s2.data = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
    batch = collate_samples([s, s2])
    assert batch["samples"].shape == (2, 1, 4, 4) and batch["labels"].tolist() == [[1, 0], [0, 1]]
