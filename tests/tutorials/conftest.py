"""Data for the seed's tutorials, made locally in place of the downloads the tutorials start with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile

from opso_core.testing import noise, pulse_train

#: the file names the tutorials use literally (the rest are made up in the same style)
WOODCOCK_FILES = ["d4c40b6066b489518f8da83af1ee4984", "e84a4b60a4f2d049d73162ee99a7ead8",
                  "79678c979ebb880d5ed6d56f26ba69ff", "49890077267b569e142440fa39b3041c",
                  "0c453a87185d8c7ce05c5c5ac5d525dc", "01c5d0c90bd4652f308fd9c73feb1bf5",
                  "a1b2c3d4e5f60718293a4b5c6d7e8f90", "b2c3d4e5f60718293a4b5c6d7e8f9011",
                  "c3d4e5f60718293a4b5c6d7e8f901122", "d4e5f60718293a4b5c6d7e8f90112233"]
WOODCOCK_PRESENT = [1, 0, 1, 1, 1, 1, 0, 0, 1, 0]


def _clip(present: bool, seed: int, duration_s: float = 2.0, sample_rate_hz: int = 44100) -> np.ndarray:
    """A woodcock-like 'peent' (a buzzy 3 kHz call at 20 Hz pulses) in pink noise, or the noise alone."""
    samples = noise(duration_s, sample_rate_hz, dBFS=-35, seed=seed).samples
    if present:
        call = pulse_train(20, 3000, 0.3, sample_rate_hz, amplitude=0.3).samples
        start = int(0.5 * sample_rate_hz)
        samples[start : start + len(call)] += call
    return samples.astype(np.float32)


@pytest.fixture()
def woodcock_labeled_data(tmp_path, monkeypatch):
    """``./woodcock_labeled_data`` as chapter 9 downloads it: 2 s clips at 44.1 kHz, ``one_hot_labels.csv``
    (file, present, absent) and a long ``field_data/60s_field_data_sample_1.wav``; the working
    directory is the folder that holds it."""
    folder = tmp_path / "woodcock_labeled_data"
    (folder / "field_data").mkdir(parents=True)
    for i, (name, present) in enumerate(zip(WOODCOCK_FILES, WOODCOCK_PRESENT, strict=True)):
        soundfile.write(folder / f"{name}.wav", _clip(bool(present), seed=i), 44100)
    pd.DataFrame({"file": [f"{n}.wav" for n in WOODCOCK_FILES], "present": WOODCOCK_PRESENT,
                  "absent": [1 - p for p in WOODCOCK_PRESENT]}).to_csv(folder / "one_hot_labels.csv", index=False)
    pd.DataFrame({"filename": [f"{n}.wav" for n in WOODCOCK_FILES],  # chapter 8's table (from Specky)
                  "woodcock": ["present" if p else "absent" for p in WOODCOCK_PRESENT],
                  "sound_type": ["song" if p else "na" for p in WOODCOCK_PRESENT]}).to_csv(
        folder / "woodcock_labels.csv", index=False)
    for k in (1, 2):  # 20 s each (the tutorial's are 60 s)
        long = np.concatenate([_clip(i % 3 == 0, seed=100 * k + i) for i in range(10)])
        soundfile.write(folder / "field_data" / f"60s_field_data_sample_{k}.wav", long, 44100)
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.fixture()
def offline_pretrained_resnet18(tmp_path, monkeypatch):
    """``$TORCH_HOME`` holding a ResNet18 weight file under torchvision's name for its ImageNet weights, so
    ``CNN('resnet18', ...)`` (pretrained by default) builds offline: the file is read from the cache
    without a download. Its weights are random (seeded): these tests check the code paths, not skill."""
    return _offline_weights(tmp_path, monkeypatch, ["resnet18"])


@pytest.fixture()
def offline_pretrained_resnets(tmp_path, monkeypatch):
    """As ``offline_pretrained_resnet18``, for ResNet18 and ResNet50 (chapter 10)."""
    return _offline_weights(tmp_path, monkeypatch, ["resnet18", "resnet50"])


def _offline_weights(tmp_path, monkeypatch, names):
    import torch
    import torchvision

    home = tmp_path / "torch_home"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    for name in names:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        torch.save(getattr(torchvision.models, name)(weights=None).state_dict(), checkpoints / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture()
def sklearn_train_test_split(monkeypatch):
    """A stand-in for ``sklearn.model_selection.train_test_split`` (scikit-learn is not a dependency of
    opso): a seeded random split of a DataFrame's rows, as the tutorials use it."""
    import sys
    import types

    def train_test_split(df, test_size=0.25, random_state=None):
        test = df.sample(frac=test_size, random_state=random_state)
        return df.drop(test.index), test

    model_selection = types.ModuleType("sklearn.model_selection")
    model_selection.train_test_split = train_test_split
    sklearn = types.ModuleType("sklearn")
    sklearn.model_selection = model_selection
    monkeypatch.setitem(sys.modules, "sklearn", sklearn)
    monkeypatch.setitem(sys.modules, "sklearn.model_selection", model_selection)


#: (start, end, label) of the song boxes in 13738.wav, as chapter 6 shows the first five
GWWA_BOXES = [(0.459636, 2.298182, "GWWA_song"), (6.705283, 8.246417, "GWWA_song"), (13.464641, 15.005775, "?"),
              (20.128208, 21.601748, "GWWA_song"), (26.047590, 27.521131, "GWWA_song"),
              (33.2, 34.9, "GWWA_song"), (40.1, 41.7, "GWWA_song"), (47.5, 49.0, "?"), (53.8, 55.4, "GWWA_song")]


def _raven_table(path, boxes):
    rows = [{"Selection": i + 1, "View": "Spectrogram 1", "Channel": 1, "Begin Time (s)": t0, "End Time (s)": t1,
             "Low Freq (Hz)": 4000.0 + 50 * i, "High Freq (Hz)": 9000.0 - 50 * i, "Species": label, "Notes": ""}
            for i, (t0, t1, label) in enumerate(boxes)]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


@pytest.fixture()
def gwwa_audio_and_raven_annotations(tmp_path, monkeypatch):
    """``./gwwa_audio_and_raven_annotations`` as chapter 6 downloads it: three recordings in ``GWWA_XC``
    (60 s, 22.05 kHz, songs where ``13738``'s Raven table has boxes), Raven tables in
    ``GWWA_XC_AnnoTables`` (two for 13738, one for a recording that is not there) and
    ``conversion_table.csv``; the working directory is the folder that holds it."""
    root = tmp_path / "gwwa_audio_and_raven_annotations"
    audio, tables = root / "GWWA_XC", root / "GWWA_XC_AnnoTables"
    audio.mkdir(parents=True)
    tables.mkdir()
    rate = 22050
    for k, name in enumerate(["13738", "135601", "13742"]):
        samples = noise(60.0, rate, dBFS=-40, seed=k).samples
        for t0, t1, _ in GWWA_BOXES:
            song = pulse_train(12, 6000, t1 - t0, rate, amplitude=0.2).samples
            samples[int(t0 * rate) : int(t0 * rate) + len(song)] += song
        soundfile.write(audio / f"{name}.wav", samples.astype(np.float32), rate, subtype="PCM_16")
    _raven_table(tables / "13738.Table.1.selections.txt", GWWA_BOXES)
    _raven_table(tables / "13738.Table.1.selections2.txt", GWWA_BOXES[:3])
    _raven_table(tables / "16989.Table.1.selections.txt", GWWA_BOXES[:2])
    pd.DataFrame({"original": ["gwwa_song"], "new": ["gwwa"]}).to_csv(root / "conversion_table.csv", index=False)
    monkeypatch.chdir(tmp_path)
    return root


@pytest.fixture()
def one_minute_audio(tmp_path, monkeypatch):
    """Chapter 5's downloaded recording, ``./lmin_audio.wav`` (the seed's spelling there): 60 s at 32 kHz,
    16-bit, a warbler-like song at 1.7-3.9 s (5.5-9.5 kHz) and an 8.2 kHz whistle, in pink noise."""
    monkeypatch.chdir(tmp_path)
    return _write_one_minute(tmp_path / "lmin_audio.wav")


@pytest.fixture()
def one_minute_audio_1min(tmp_path, monkeypatch):
    """The same recording as chapter 7 names it, ``./1min_audio.wav``, alone in the working directory."""
    monkeypatch.chdir(tmp_path)
    return _write_one_minute(tmp_path / "1min_audio.wav")


def _write_one_minute(path):
    from opso_core.testing import fm_sweep, tone

    rate = 32000
    samples = noise(60.0, rate, dBFS=-45, seed=7).samples
    for k in range(8):  # 8 rising notes
        note = fm_sweep(5500, 9500, 0.2, rate, amplitude=0.2).samples
        start = int((1.75 + 0.27 * k) * rate)
        samples[start : start + len(note)] += note
    whistle = tone(8200, 1.0, rate, amplitude=0.1).samples
    samples[int(2.5 * rate) : int(2.5 * rate) + len(whistle)] += whistle
    soundfile.write(path, samples.astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.fixture()
def ipython_display():
    """A context manager putting a stand-in for ``IPython.display`` (not a test dependency) in place for one
    notebook cell; yields the list of what the cell displayed. Only for that cell: matplotlib treats an
    importable IPython as a notebook."""
    import contextlib
    import sys
    import types

    @contextlib.contextmanager
    def stand_in():
        shown = []
        display = types.ModuleType("IPython.display")
        display.Audio = lambda data=None, rate=None, autoplay=False, normalize=True, **kw: ("audio", len(data), rate)
        display.display = shown.append
        ipython = types.ModuleType("IPython")
        ipython.display = display
        saved = {name: sys.modules.get(name) for name in ("IPython", "IPython.display")}
        sys.modules.update({"IPython": ipython, "IPython.display": display})
        try:
            yield shown
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module

    return stand_in


@pytest.fixture()
def great_plains_toad_dataset(tmp_path, monkeypatch):
    """``./great_plains_toad_dataset`` as chapter 11 downloads it: 10 s recordings at 22.05 kHz, three with
    a Great Plains Toad-like trill (2.1 kHz carrier, 14 pulses/s) named ``gpt*.wav`` (the first one's
    call at the beginning), and five without (``negative1-5.wav``; ``negative5`` holds a 5.7 kHz bird
    series at 9.5 notes/s)."""
    folder = tmp_path / "great_plains_toad_dataset"
    folder.mkdir()
    rate = 22050
    for k in range(3):
        samples = noise(10.0, rate, dBFS=-45, seed=200 + k).samples
        trill = pulse_train(14, 2100, 4.0, rate, amplitude=0.3).samples
        start = int((0.2 + 2.5 * k) * rate)
        samples[start : start + len(trill)] += trill
        soundfile.write(folder / f"gpt{k}.wav", samples.astype(np.float32), rate)
    for k in range(1, 6):
        samples = noise(10.0, rate, dBFS=-45, seed=300 + k).samples
        if k == 5:
            series = pulse_train(9.5, 5700, 3.0, rate, amplitude=0.3).samples
            samples[rate : rate + len(series)] += series
        soundfile.write(folder / f"negative{k}.wav", samples.astype(np.float32), rate)
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.fixture()
def opso_04_model(tmp_path):
    """``./opso_04_model_acanthis-flammea.tar`` as chapter 7 downloads it: a model saved by OpenSoundscape
    0.4 (a dict: ``model_state_dict`` with ``feature.``/``classifier.`` keys, ``classes``; random
    ResNet18 weights)."""
    import torch
    import torchvision

    torch.manual_seed(4)
    network = torchvision.models.resnet18(weights=None)
    network.fc = torch.nn.Linear(network.fc.in_features, 2)
    state = {(f"classifier.{k[3:]}" if k.startswith("fc.") else f"feature.{k}"): v
             for k, v in network.state_dict().items()}
    path = tmp_path / "opso_04_model_acanthis-flammea.tar"
    torch.save({"model_state_dict": state, "classes": ["acanthis-flammea-absent", "acanthis-flammea-present"]},
               path)
    return path
