import numpy as np
import pandas as pd
import pytest

from opso_core.annotations import (
    BoxedAnnotations,
    categorical_to_one_hot,
    one_hot_labels_on_time_interval,
    one_hot_to_categorical,
)
from opso_core.errors import OpsoValueError
from opso_core.testing import tone


@pytest.fixture
def boxes():
    return BoxedAnnotations(pd.DataFrame({
        "file": ["a.wav"] * 4 + ["b.wav"],
        "annotation": ["frog", "bird", "frog", None, "bird"],
        "start_time": [0.5, 2.0, 6.0, 8.0, 1.0],
        "end_time": [1.5, 4.5, 6.1, 9.0, 2.0],
        "low_f": [1000, 3000, 1000, 0, 3000],
        "high_f": [2000, 6000, 2000, 500, 6000],
    }))


def test_trim_modes(boxes):
    t = boxes.trim(1.0, 5.0)
    assert list(t.df.annotation) == ["frog", "bird", "bird"]
    assert list(t.df.start_time) == [0.0, 1.0, 0.0] and list(t.df.end_time) == [0.5, 3.5, 1.0]
    assert list(boxes.trim(1.0, 5.0, edge_mode="remove").df.annotation) == ["bird", "bird"]
    kept = boxes.trim(1.0, 5.0, edge_mode="keep")
    assert kept.df.start_time.tolist() == [-0.5, 1.0, 0.0]
    with pytest.raises(OpsoValueError):
        boxes.trim(1, 5, edge_mode="clip")


def test_bandpass_subset_convert_unique(boxes):
    b = boxes.bandpass(2500, 10000)
    assert list(b.df.annotation) == ["bird", "bird"] and b.df.low_f.tolist() == [3000, 3000]
    assert list(boxes.subset(["frog"]).df.annotation) == ["frog", "frog"]
    assert len(boxes.subset(["frog", None]).df) == 3
    assert sorted(boxes.unique_labels()) == ["bird", "frog"]
    c = boxes.convert_labels({"frog": "anuran"})
    assert list(c.df.annotation[:3]) == ["anuran", "bird", "anuran"]
    c2 = boxes.convert_labels(pd.DataFrame({"old": ["bird"], "new": ["passerine"]}))
    assert "passerine" in c2.unique_labels()
    assert boxes.global_one_hot_labels(["frog", "toad"]) == [1, 0]


def test_one_hot_labels_like(boxes):
    clip_df = pd.DataFrame(index=pd.MultiIndex.from_tuples(
        [("a.wav", 0.0, 2.0), ("a.wav", 2.0, 4.0), ("a.wav", 4.0, 6.0), ("a.wav", 6.0, 8.0), ("b.wav", 0.0, 2.0)],
        names=["file", "start_time", "end_time"]))
    labels = boxes.one_hot_labels_like(clip_df, min_label_overlap=0.25, class_subset=["frog", "bird"])
    assert labels.values.tolist() == [[1, 0], [0, 1], [0, 1], [0, 0], [0, 1]]
    # the 0.1 s frog call at 6.0 s counts by fraction
    frac = boxes.one_hot_labels_like(clip_df, min_label_overlap=0.25, min_label_fraction=0.5,
                                     class_subset=["frog", "bird"])
    assert frac.loc[("a.wav", 6.0, 8.0), "frog"] == 1


def test_one_hot_clip_labels_with_file_durations(tmp_path):
    path = tmp_path / "x.wav"
    tone(1000, 6.0, 8000).save(path)
    boxes = BoxedAnnotations(pd.DataFrame({"file": [str(path)], "annotation": ["frog"], "start_time": [2.2],
                                           "end_time": [3.0]}))
    labels = boxes.one_hot_clip_labels(clip_duration=2.0, clip_overlap=0, min_label_overlap=0.25)
    assert labels["frog"].tolist() == [0, 1, 0]
    fixed = boxes.one_hot_clip_labels(2.0, 0, 0.25, full_duration=4.0)
    assert fixed["frog"].tolist() == [0, 1]


def test_raven_round_trip(tmp_path, boxes):
    written = boxes.subset(["frog", "bird"]).to_raven_files(tmp_path)
    assert sorted(p.name for p in written) == ["a.selections.txt", "b.selections.txt"]
    back = BoxedAnnotations.from_raven_files([tmp_path / "a.selections.txt"], audio_files=["a.wav"])
    assert list(back.df.annotation) == ["frog", "bird", "frog"]
    assert back.df.start_time.tolist() == [0.5, 2.0, 6.0] and back.df.file.unique().tolist() == ["a.wav"]
    assert {"Selection", "View", "Channel"} <= set(back.df.columns)
    core = BoxedAnnotations.from_raven_files([tmp_path / "a.selections.txt"], keep_extra_columns=False)
    assert list(core.df.columns) == ["file", "annotation", "start_time", "end_time", "low_f", "high_f"]


@pytest.mark.data
def test_real_raven_table(opso_test_data):
    path = opso_test_data / "tests" / "raven_annots" / "MSD-0003_20180427_2minstart00.Table.1.selections.txt"
    boxes = BoxedAnnotations.from_raven_files([path], keep_extra_columns=["distance"])
    assert list(boxes.df.columns) == ["file", "annotation", "start_time", "end_time", "low_f", "high_f", "distance"]
    assert boxes.df.annotation.iloc[0] == "WOTH" and boxes.df.start_time.iloc[0] == pytest.approx(1.897648166)
    assert {"WOTH", "EATO"} <= set(boxes.unique_labels())
    empty = BoxedAnnotations.from_raven_files(
        [opso_test_data / "tests" / "raven_annots" / "EmptyExample.Table.1.selections.txt"])
    assert len(empty.df) == 0


def test_categorical_conversions():
    one_hot, classes = categorical_to_one_hot([["white", "red"], ["green", "white"]])
    assert classes == ["green", "red", "white"] and one_hot.tolist() == [[0, 1, 1], [1, 0, 1]]
    assert one_hot_to_categorical(one_hot, classes) == [["red", "white"], ["green", "white"]]
    df = pd.DataFrame({"annotation": ["a", "b"], "start_time": [0.0, 5.0], "end_time": [1.0, 6.0]})
    assert one_hot_labels_on_time_interval(df, ["a", "b"], 0.5, 2.0, min_label_overlap=0.25) == {"a": 1, "b": 0}
    assert np.all(np.asarray(one_hot) >= 0)
