"""Write the outputs of the real OpenSoundscape 0.9.0 that opso's parity tests compare against.

Run it in a reference environment, never the project's:

    ../shared/tools/opensoundscape-0.9.0-venv.sh /tmp/oss-0.9.0        # about 10 minutes, once
    /tmp/oss-0.9.0/bin/python tests/reference/make_opensoundscape_090_reference.py

It writes ``tests/reference/opensoundscape_0.9.0.npz`` (committed): the synthetic input audio, and
0.9.0's spectrogram, images, mel spectrogram, preprocessed tensors and CNN logits for it, plus the
versions of the packages that made them (key ``versions``, JSON). Inputs are generated here (seeded
numpy), and the network's weights are a deterministic function of each parameter's position
(``reference_helpers.deterministic_weights``, which the test imports too), so nothing random differs between
the two environments.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from reference_helpers import deterministic_weights

OUT = Path(__file__).with_name("opensoundscape_0.9.0.npz")
SAMPLE_RATE_HZ = 22050
DURATION_S = 4.0


def synthetic_audio() -> np.ndarray:
    """4 s at 22.05 kHz: a rising chirp, tone bursts at 3 kHz, pink-ish noise at -40 dBFS (float32)."""
    rng = np.random.default_rng(20261126)
    t = np.arange(int(DURATION_S * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    chirp = 0.2 * np.sin(2 * np.pi * (500 * t + 600 * t**2))
    bursts = 0.1 * np.sin(2 * np.pi * 3000 * t) * ((t % 0.5) < 0.1)
    noise = np.cumsum(rng.standard_normal(t.size)) * 1e-3
    noise -= np.convolve(noise, np.ones(501) / 501, mode="same")
    return (chirp + bursts + 0.01 * noise / noise.std()).astype(np.float32)


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "disabled")
    import librosa
    import opensoundscape
    import scipy
    import skimage
    import soundfile
    import torch
    import torchvision
    from opensoundscape.audio import Audio
    from opensoundscape.ml import cnn_architectures
    from opensoundscape.ml.cnn import CNN
    from opensoundscape.preprocess.preprocessors import SpectrogramPreprocessor
    from opensoundscape.spectrogram import MelSpectrogram, Spectrogram

    if opensoundscape.__version__ != "0.9.0":
        sys.exit(f"this needs OpenSoundscape 0.9.0, found {opensoundscape.__version__}")
    samples = synthetic_audio()
    out = {"audio": samples, "sample_rate_hz": np.array(SAMPLE_RATE_HZ)}
    audio = Audio(samples, SAMPLE_RATE_HZ)
    spec = Spectrogram.from_audio(audio)
    out["spectrogram_db"] = spec.spectrogram.astype(np.float32)
    out["image_pil_native"] = np.array(spec.to_image())
    out["image_pil_224"] = np.array(spec.to_image(shape=(224, 224)))
    rgb = spec.to_image(shape=(224, 224), channels=3, return_type="np")
    assert np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[0], rgb[2])  # grey: three equal channels
    out["image_np_224x224x3_channel0"] = rgb[0].astype(np.float32)
    out["image_torch_100x60_inverted"] = spec.to_image(shape=(100, 60), invert=True, return_type="torch").numpy()
    wide = Spectrogram.from_audio(audio, window_samples=1024, overlap_samples=768, decibel_limits=(-120, -10))
    out["image_np_wide_128x512"] = wide.to_image(shape=(128, 512), return_type="np").astype(np.float32)
    out["mel_db"] = MelSpectrogram.from_audio(audio).spectrogram.astype(np.float32)  # all -100: see docs/ml.md
    out["mel_power"] = MelSpectrogram.from_audio(audio, dB_scale=False).spectrogram.astype(np.float32)
    out["mel_power_128_htk"] = MelSpectrogram.from_audio(audio, n_mels=128, htk=True, norm=None, window_samples=1024,
                                                         dB_scale=False).spectrogram.astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        wav = str(Path(tmp) / "synthetic.wav")
        soundfile.write(wav, samples, SAMPLE_RATE_HZ, subtype="FLOAT")
        pre = SpectrogramPreprocessor(sample_duration=2.0)
        out["tensor_default"] = pre.forward(wav, bypass_augmentations=True).data.numpy()
        custom = SpectrogramPreprocessor(sample_duration=2.0, out_shape=(128, 192, 1))
        custom.pipeline.bandpass.set(min_f=1000, max_f=6000)
        out["tensor_bandpass_128x192x1"] = custom.forward(wav, bypass_augmentations=True).data.numpy()

        network = cnn_architectures.resnet18(2, weights=None)
        deterministic_weights(network)
        model = CNN(network, classes=["a", "b"], sample_duration=2.0)
        model.device = torch.device("cpu")
        logits = model.predict([wav], activation_layer=None)
        out["cnn_logits"] = logits.to_numpy(dtype=np.float64)
        out["cnn_clip_starts_s"] = logits.index.get_level_values("start_time").to_numpy(dtype=np.float64)

    versions = {"opensoundscape": opensoundscape.__version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                "librosa": librosa.__version__, "scikit-image": skimage.__version__,
                "python": sys.version.split()[0]}
    out["versions"] = np.array(json.dumps(versions))
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {sorted(out)}")
    print(versions)


if __name__ == "__main__":
    main()
