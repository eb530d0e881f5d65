"""Score differences and speed of the CNN stage's reduced precisions (``cnn[].precision``), per architecture.

For each architecture (default: resnet18, resnet50, efficientnet_b0, densenet121, vgg11_bn) an
untrained network with deterministic weights (``tests/reference/reference_helpers.deterministic_weights``:
the same in every environment) scores the spectrograms of a synthetic archive's clips (the CNN
default preprocessor: 224x224x3 images) in its inference form, in float32 and under each reduced
precision (:func:`opso_core.ml.utils.precision_context`), on the same device, in one invocation.
``--model PATH`` measures a trained model of yours instead (its own preprocessor).

Prints, per architecture and precision: the largest and the 99th-percentile absolute difference
of sigmoid scores from float32, the largest logit difference relative to the logits' standard
deviation, how often the top class changes, and clips per second of the network alone. Run it on
the device you will use: differences and speed depend on the hardware's kernels (float16 on most
CPUs is emulated and slow; bfloat16 is fast on CPUs with AMX or AVX512-BF16 and on recent GPUs).

    python benchmarks/cnn_precision.py [--device auto] [--clips 256] [--batch 64]
        [--architectures resnet18,resnet50] [--model PATH] [--tf32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ARCHITECTURES = ("resnet18", "resnet50", "efficientnet_b0", "densenet121", "vgg11_bn")


def clip_tensors(preprocessor, n_clips: int, work: Path):
    """``n_clips`` preprocessed 2-s clips of a synthetic archive (tones, pulse trains, noise), stacked."""
    import torch

    from opso_core.ml.datasets import AudioSplittingDataset
    from opso_core.testing import make_archive

    files_needed = max(1, -(-n_clips * preprocessor.sample_duration // 60))
    archive = make_archive(work / "archive", n_recorders=1, files_per_recorder=int(files_needed), file_duration_s=60,
                           sample_rate_hz=22050, seed=11)
    dataset = AudioSplittingDataset(sorted(archive.files.file), preprocessor, bypass_augmentations=True)
    return torch.stack([dataset[i].data for i in range(min(n_clips, len(dataset)))])


def measure(network, x, device, precision: str, batch: int):
    """(logits (n, classes) float32 on the CPU, seconds) of ``network`` on ``x`` in ``precision``."""
    import torch

    from opso_core.ml.utils import inference_input, precision_context

    out = []
    with torch.no_grad(), precision_context(device, precision):
        network(inference_input(x[:batch], device))  # warm-up (cuDNN picks its kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for i in range(0, len(x), batch):
            out.append(network(inference_input(x[i : i + batch], device)).float())
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return torch.cat(out).cpu(), seconds


def main():
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))
    from reference_helpers import deterministic_weights

    from opso_core.ml import cnn_architectures as ca
    from opso_core.ml.cnn import CNN, load_model
    from opso_core.ml.utils import PRECISIONS, inference_network

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    parser.add_argument("--clips", type=int, default=256, help="clips scored per architecture [256]")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--model", default=None, help="a model saved with CNN.save() (instead of --architectures)")
    parser.add_argument("--tf32", action="store_true", help="let float32 use TF32 on the GPU (PyTorch's default "
                        "for cuDNN convolutions); off by default, so float32 is the exact reference")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    work = Path(tempfile.mkdtemp(prefix="opso-precision-"))
    if args.model:
        models = {Path(args.model).name: load_model(args.model)}
    else:
        models = {}
        for name in args.architectures.split(","):
            network = getattr(ca, name)(3, weights=None)
            deterministic_weights(network)
            models[name] = CNN(network, ["a", "b", "c"], sample_duration=2.0)
    name0 = next(iter(models))
    x = clip_tensors(models[name0].preprocessor, args.clips, work)
    print(f"{len(x)} clips of 2 s, input {tuple(x.shape[1:])}, batch {args.batch}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"TF32 {'on' if args.tf32 else 'off'}, torch {torch.__version__}")
    print(f"{'architecture':<18} {'precision':<9} {'max |d score|':>14} {'p99 |d score|':>14} "
          f"{'max |d logit|/sd':>17} {'top class changed':>18} {'clips/s':>9} {'vs float32':>10}")
    for name, model in models.items():  # the built-in architectures all take the CNN default input
        network = inference_network(model.network, device)
        reference, reference_s = measure(network, x, device, "float32", args.batch)
        scale = float(reference.std()) or 1.0
        for precision in PRECISIONS:
            logits, seconds = (reference, reference_s) if precision == "float32" else measure(
                network, x, device, precision, args.batch)
            d_score = (torch.sigmoid(logits) - torch.sigmoid(reference)).abs().numpy()
            changed = float((logits.argmax(1) != reference.argmax(1)).float().mean())
            print(f"{name:<18} {precision:<9} {d_score.max():14.2e} {np.percentile(d_score, 99):14.2e} "
                  f"{float((logits - reference).abs().max()) / scale:17.2e} {changed:17.1%} "
                  f"{len(x) / seconds:9.0f} {reference_s / seconds:9.2f}x")


if __name__ == "__main__":
    main()
