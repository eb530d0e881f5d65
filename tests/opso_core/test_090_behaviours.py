"""Behaviours of OpenSoundscape 0.9.0 that ported code relies on, against the real 0.9.0's
(``tests/reference/opensoundscape_0.9.0_behaviours.json``, made by
``tests/reference/make_opensoundscape_090_behaviours.py`` in the reference environment)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import opso_core

REFERENCE = json.loads((Path(__file__).parents[1] / "reference" / "opensoundscape_0.9.0_behaviours.json").read_text())


@pytest.mark.parametrize("name", REFERENCE["top_level"])
def test_every_top_level_name_of_090(name):
    """``opensoundscape.SpectrogramPreprocessor`` and the rest port as ``opso_core.<name>``."""
    value = getattr(opso_core, name)
    assert value is not None and name in dir(opso_core)


def test_top_level_names_stay_lazy():
    """Exposing the 0.9.0 names does not import torch with ``import opso_core``."""
    import subprocess
    import sys

    code = "import sys, opso_core; opso_core.Audio; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_the_loss_class_as_090_sets_it():
    torch = pytest.importorskip("torch")
    from opso_core.ml import cnn_architectures as ca
    from opso_core.ml.cnn import CNN

    multi = CNN(ca.resnet18(2, weights=None), [0, 1], 2)
    single = CNN(ca.resnet18(2, weights=None), [0, 1], 2, single_target=True)
    assert multi.loss_cls.__name__ == REFERENCE["loss_cls"]["multi_target"]
    assert single.loss_cls.__name__ == REFERENCE["loss_cls"]["single_target"]
    assert isinstance(multi.loss_fn, multi.loss_cls)

    class Halved(torch.nn.BCEWithLogitsLoss):  # a user's replacement, as 0.9.0 users make it
        def forward(self, logits, target):
            return 0.5 * super().forward(logits, target.float())

    multi.loss_cls = Halved
    multi.train(_tiny_labels(), epochs=0, save_path=_tmp(), num_workers=0)  # epochs=0: set up for training only
    assert isinstance(multi.loss_fn, Halved)


def test_an_unknown_architecture_raises_what_090_raises():
    pytest.importorskip("torch")
    import builtins

    from opso_core.ml.cnn import CNN

    with pytest.raises(AssertionError) as caught:
        CNN("not_an_architecture", [0, 1], 2)
    bases = {c.__name__ for c in type(caught.value).__mro__ if getattr(builtins, c.__name__, None) is c}
    assert set(REFERENCE["unknown_architecture"]) <= bases and "ValueError" in bases  # opso's own type too
    assert "choose one of" in str(caught.value)


def _tmp():
    import tempfile

    return tempfile.mkdtemp(prefix="opso-loss-")


def _tiny_labels():
    import pandas as pd

    from opso_core.testing import make_archive

    archive = make_archive(_tmp(), n_recorders=1, files_per_recorder=1, file_duration_s=4, sample_rate_hz=16000)
    return pd.DataFrame({0: [1], 1: [0]}, index=pd.Index(list(archive.files.file), name="file"))


def test_saved_metadata_reads_back_with_090_s_keys(tmp_path):
    import numpy as np

    from opso_core.audio import Audio

    audio = Audio(np.full(16000, 0.01, dtype=np.float32), 16000)
    audio.metadata = {"title": "t", "artist": "x"}
    audio.save(tmp_path / "a.wav")
    back = Audio.from_file(tmp_path / "a.wav").metadata
    # 0.9.0 stores its own version under opensoundscape_version; opso stores opso_core_version, and the
    # 0.9.0 key reads it, so `metadata["opensoundscape_version"] == <package>.__version__` holds for both
    assert REFERENCE["saved_metadata"]["opensoundscape_version"] == REFERENCE["version"]
    assert back["opensoundscape_version"] == back["opso_core_version"] == opso_core.__version__
    expected = set(REFERENCE["saved_metadata"]["keys"]) - {"opensoundscape_version"}
    assert expected <= set(back)  # opso adds format, frames, ... of the header
    assert "opensoundscape_version" not in back  # not stored: the dictionary equals what was saved


def test_an_empty_tag_is_left_out_where_090_fails(tmp_path):
    """Deliberate deviation: 0.9.0 fails to save (libsndfile refuses an empty string); opso saves without it."""
    import numpy as np

    from opso_core.audio import Audio

    assert REFERENCE["empty_tag"].startswith("LibsndfileError")  # what 0.9.0 does
    audio = Audio(np.full(16000, 0.01, dtype=np.float32), 16000)
    audio.metadata = {"title": "", "artist": "x"}
    for fmt in ("opso", "soundfile"):
        audio.save(tmp_path / f"{fmt}.wav", metadata_format=fmt)
        back = Audio.from_file(tmp_path / f"{fmt}.wav").metadata
        assert back["artist"] == "x"
    assert Audio.from_file(tmp_path / "opso.wav").metadata["title"] == ""  # the comment keeps every field


def test_class_aware_sampler_takes_090_s_class_numbers():
    pytest.importorskip("torch")
    import numpy as np

    from opso_core.ml.sampling import ClassAwareSampler

    reference = REFERENCE["class_aware_sampler"]
    labels = reference["labels"]
    sampler = ClassAwareSampler(np.array(labels), num_samples_cls=1)
    drawn = list(sampler)
    assert len(sampler) == len(drawn) == reference["len"]  # the largest class's size x the classes
    assert [sum(labels[i] == c for i in drawn) for c in range(3)] == reference["per_class"]
    with pytest.raises(ValueError, match="class numbers 0 to 1"):
        ClassAwareSampler(np.array([0, 5]))
    one_hot = ClassAwareSampler(np.eye(3)[labels])  # opso's 0/1 form: an epoch is the samples
    assert len(one_hot) == len(labels)


# ------------------------------------------------------------------------------------------------
# Scenarios run the same way on 0.9.0 (recorded) and on opso (here): tests/reference/behaviour_scenarios.py

sys.path.insert(0, str(Path(__file__).parents[1] / "reference"))
from behaviour_scenarios import SCENARIOS, observe  # noqa: E402

SCENARIO_REFERENCE = REFERENCE["scenarios"]


def _both(name, tmp_path):
    """(0.9.0's observation, opso's) of scenario ``name``."""
    return SCENARIO_REFERENCE[name], observe(name, "opso_core", tmp_path)


def _raises_as_090(reference, ours):
    """opso raised an instance of every built-in 0.9.0 raised (ported ``except`` clauses catch it)."""
    assert reference["raised"] and ours["raised"], (reference, ours)
    assert set(reference["raised"]) <= set(ours["raised"]), (reference["raised"], ours["raised"])


def test_every_scenario_has_a_reference():
    assert set(SCENARIOS) == set(SCENARIO_REFERENCE)


def test_gcc_weightings_as_090(tmp_path):
    reference, ours = _both("gcc_weightings", tmp_path)
    for cc_filter, expected in reference["value"].items():
        got = ours["value"][cc_filter]
        assert got["argmax"] == expected["argmax"] and got["len"] == expected["len"]
        # 0.9.0 computes in float32; Hannan-Thomson's 1 - coherence is a difference of numbers near 1, so
        # its float32 value is a few per cent off the float64 one (it was 3x before opso took 0.9.0's formula)
        assert got["max"] == pytest.approx(expected["max"], rel=0.1 if cc_filter == "ht" else 1e-5), cc_filter


def test_tdoa_with_ht_returns_090_s_maximum(tmp_path):
    reference, ours = _both("tdoa_ht_return_max", tmp_path)
    assert ours["value"][0] == reference["value"][0] == pytest.approx(0.007)
    assert ours["value"][1] == pytest.approx(reference["value"][1], rel=0.1)


def test_cwt_peaks_are_090_s_peaks_at_sample_times(tmp_path):
    """Deliberate deviation: a peak at sample i is at i / sample_rate; 0.9.0 spread the n samples over the
    duration with linspace, so its times are ours x n / (n - 1) (0.4 ms later at 3 s here)."""
    reference, ours = _both("cwt_peak_times", tmp_path)
    n = reference["value"]["n"]
    assert ours["value"]["n"] == n == 8000
    ours_as_090 = np.asarray(ours["value"]["times"]) * n / (n - 1)
    np.testing.assert_allclose(ours_as_090, reference["value"]["times"], rtol=0, atol=1e-9)  # the same peaks
    # the peak heights follow PyWavelets' cwt, which changed between the versions (1.5.0 there)
    np.testing.assert_allclose(ours["value"]["levels"], reference["value"]["levels"], atol=0.02)


def test_ruffed_grouse_sequences_as_090_at_sample_times(tmp_path):
    """The same sequence of the same beats; times differ only by 0.9.0's linspace stretch (n / (n - 1) of
    the time within each 20-s window, n = 8,000 samples at 400 Hz)."""
    reference, ours = _both("rugr_sequences", tmp_path)
    assert len(ours["value"]) == len(reference["value"]) == 1
    got, expected = ours["value"][0], reference["value"][0]
    assert got["seq_len"] == expected["seq_len"]
    stretch = 8000 / 7999
    np.testing.assert_allclose(np.asarray(got["sequence_t"]) * stretch, expected["sequence_t"], atol=1e-9)
    assert got["seq_start_time"] * stretch == pytest.approx(expected["seq_start_time"], abs=1e-9)


def test_spatial_event_reference_receiver_cc_max_is_one(tmp_path):
    reference, ours = _both("spatial_event_delays", tmp_path)
    assert ours["value"]["cc_maxs"][0] == reference["value"]["cc_maxs"][0] == 1.0
    np.testing.assert_allclose(ours["value"]["tdoas"], reference["value"]["tdoas"], atol=1e-9)
    # the other receivers' maxima: opso correlates segments widened by max_delay (docs/localization.md),
    # so a delayed sound is whole in both; the normalised maxima stay close to 0.9.0's
    np.testing.assert_allclose(ours["value"]["cc_maxs"][1:], reference["value"]["cc_maxs"][1:], atol=0.05)


@pytest.mark.parametrize(("name", "warning"), [
    ("predict_file_shorter_than_a_clip", "there are no samples to predict on"),
    ("predict_label_columns_differ_from_classes", "the columns of the samples table ['x', 'y'] differ from model.classes"),
    ("predict_one_file_missing", "1 of 3 samples could not be loaded or preprocessed; their scores are NaN")])
def test_predict_returns_and_warns_as_090(name, warning, tmp_path):
    pytest.importorskip("torch")
    reference, ours = _both(name, tmp_path)
    assert ours["raised"] is None and ours["value"] == reference["value"]
    assert reference["warned"] and any(m.startswith(warning) for m in ours["warnings"]), ours["warnings"]


def test_predict_names_the_files_shorter_than_a_clip(tmp_path):
    pytest.importorskip("torch")
    _, ours = _both("predict_file_shorter_than_a_clip", tmp_path)
    assert any("short.wav" in m and "shorter than one clip" in m for m in ours["warnings"]), ours["warnings"]


@pytest.mark.parametrize("name", ["predict_only_file_missing", "predict_preprocessor_as_samples",
                                  "cams_of_an_unknown_class", "safe_dataset_nothing_loads"])
def test_ml_errors_are_090_s_types(name, tmp_path):
    pytest.importorskip("torch")
    _raises_as_090(*_both(name, tmp_path))


@pytest.mark.parametrize("name", ["cam_target_layers", "datasets_label_df", "safe_dataset_substitute"])
def test_ml_attributes_as_090(name, tmp_path):
    pytest.importorskip("torch")
    reference, ours = _both(name, tmp_path)
    assert ours["raised"] is None and ours["value"] == reference["value"]


def test_safe_dataset_substitute_reports_as_090(tmp_path):
    pytest.importorskip("torch")
    reference, ours = _both("safe_dataset_substitute", tmp_path)
    assert reference["warned"] and ours["warned"]
    assert any(m.startswith("There were 1 sample(s) that raised errors") for m in ours["warnings"])


def test_raven_table_without_annotation_column(tmp_path):
    _raises_as_090(*_both("raven_without_annotation_column", tmp_path))
    reference, ours = _both("raven_without_annotation_column_idx_none", tmp_path)
    _same_table(reference["value"], ours["value"])


def test_raven_table_without_annotation_column_or_extra_columns(tmp_path):
    """Deliberate deviation: 0.9.0 drops the (empty) annotation column it has just made, then fails its own
    check of the columns (AssertionError); opso returns the boxes without labels."""
    reference, ours = _both("raven_without_annotation_column_no_extra_columns", tmp_path)
    assert reference["raised"] == ["AssertionError"]
    assert ours["raised"] is None
    assert ours["value"]["columns"] == ["annotation", "end_time", "file", "high_f", "low_f", "start_time"]
    assert ours["value"]["annotation"] == [None, None] and ours["value"]["start_time"] == [0.5, 60.0]


def test_raven_table_with_file_name_columns(tmp_path):
    reference, ours = _both("raven_with_file_name_columns", tmp_path)
    for case, expected in reference["value"].items():
        _same_table(expected, ours["value"][case])


def _same_table(expected, got):
    """The same boxes, labels and columns, except 0.9.0's ``index`` column. Deliberate deviation: 0.9.0
    leaves the row number within each Raven table as a column ``index`` (a ``reset_index`` artifact,
    which to_raven_files would write back as a column); opso does not add it."""
    assert got == {**expected, "columns": [c for c in expected["columns"] if c != "index"]}


def test_one_hot_clip_labels_of_a_two_minute_file(tmp_path):
    reference, ours = _both("one_hot_clip_labels_two_minutes", tmp_path)
    for case in ("read", "given"):
        _same_labels(reference["value"][case], ours["value"][case])


def test_one_hot_clip_labels_without_files(tmp_path):
    reference, ours = _both("one_hot_clip_labels_without_files", tmp_path)
    _same_labels(reference["value"], ours["value"])
    _raises_as_090(*_both("one_hot_clip_labels_without_files_or_duration", tmp_path))


def _same_labels(expected, got):
    """Equal labels. Deliberate deviation: opso's one-hot labels are integers 0/1, as one-hot arrays
    elsewhere in 0.9.0 (``categorical_to_one_hot``); 0.9.0's ``one_hot_labels_like`` gives floats 0.0/1.0,
    which compare and sum the same."""
    assert expected["dtypes"] == ["float64"] and got["dtypes"] == ["int64"]
    assert {k: v for k, v in got.items() if k != "dtypes"} == {k: v for k, v in expected.items() if k != "dtypes"}
