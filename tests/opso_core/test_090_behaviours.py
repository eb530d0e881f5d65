"""Behaviours of OpenSoundscape 0.9.0 that ported code relies on, against the real 0.9.0's
(``tests/reference/opensoundscape_0.9.0_behaviours.json``, made by
``tests/reference/make_opensoundscape_090_behaviours.py`` in the reference environment)."""

from __future__ import annotations

import json
from pathlib import Path

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
