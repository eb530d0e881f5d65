"""How the CNN stage sizes its work on a worker."""

import os

import torch

from pipelines.stages.cnn import MAX_DEFAULT_PREPARE_THREADS, prepare_threads


def test_prepare_threads_defaults():
    assert prepare_threads(None, torch.device("cpu")) == 1
    assert prepare_threads(3, torch.device("cpu")) == 3
    cores = len(os.sched_getaffinity(0))
    assert prepare_threads(None, torch.device("cuda")) == max(1, min(MAX_DEFAULT_PREPARE_THREADS, cores - 1))
    assert prepare_threads(None, "cuda:1") == prepare_threads(None, torch.device("cuda:1"))


def test_a_batch_from_audio_equals_the_batch_from_its_spectrograms():
    """BatchScorer's two entries (audio -> spectrograms on the device, or spectrograms from the prepare
    threads) give the same logits on a CPU; graphs are recorded only on CUDA, without embeddings or colormaps."""
    import dataclasses

    import numpy as np
    import torch

    from opso_core.ml import cnn_architectures as ca
    from opso_core.ml.spectrogram_tensors import TensorSettings
    from opso_core.ml.utils import inference_network
    from opso_core.stft import SpectrogramParams, spectrogram_batch
    from pipelines.stages.cnn import CnnDetector
    from pipelines.stages.cnn_batch import BatchScorer

    torch.manual_seed(0)
    params = SpectrogramParams.resolve(22050)
    detector = CnnDetector(name="t", url="m", sha256="x", storage_options={}, classes=("a", "b"), activation=None,
                           thresholds=(0.5, 0.5), batch_size=4, device="cpu", clip_duration_s=2.0, overlap_s=0.0,
                           final_clip=None, sample_rate_hz=22050, params=params, tensor_settings=TensorSettings())
    network = inference_network(ca.resnet18(2, weights=None), torch.device("cpu"))
    scorer = BatchScorer(network, detector, torch.device("cpu"))
    assert not scorer.graphs  # CPU
    audio = np.random.default_rng(0).normal(0, 0.1, (4, 44100)).astype(np.float32)
    with torch.no_grad():
        from_audio = scorer.from_audio(torch.from_numpy(audio))
        values, _, _ = spectrogram_batch(audio, 22050, params)
        from_values = scorer.from_spectrograms(values)
    assert from_audio.dtype == torch.float32 and from_audio.shape == (4, 2)
    np.testing.assert_allclose(from_audio.numpy(), from_values.numpy(), atol=1e-4)
    assert scorer.replays == 0
    cuda = torch.device("cuda")
    assert BatchScorer(network, detector, cuda).graphs
    assert not BatchScorer(network, detector, cuda, keep_embeddings=True).graphs
    assert not BatchScorer(network, detector, cuda, cuda_graphs=False).graphs
    colored = dataclasses.replace(detector, tensor_settings=TensorSettings(colormap="viridis"))
    assert not BatchScorer(network, colored, cuda).graphs
