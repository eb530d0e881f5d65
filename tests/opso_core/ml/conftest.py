"""A tiny labelled dataset: 22.05 kHz clips with pulsed 'frog' calls or a 5 kHz 'other' tone."""

import pandas as pd
import pytest
import torch

from opso_core.audio import mix
from opso_core.testing import noise, pulse_train, tone

SR = 22050


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    torch.set_num_threads(1)  # 2 cores: one thread each for torch and the rest


@pytest.fixture(scope="session")
def labelled_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    rows = {}
    for i in range(8):
        frog = i % 2 == 0
        sound = pulse_train(12, 2000, 3.0, SR) if frog else tone(5000, 3.0, SR, amplitude=0.1)
        path = root / f"clip{i}.wav"
        mix([noise(3.0, SR, dBFS=-40, seed=i), sound], gain=0).save(path)
        rows[str(path)] = {"frog": int(frog), "other": int(not frog)}
    return pd.DataFrame.from_dict(rows, orient="index")
