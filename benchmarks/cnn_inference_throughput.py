"""CNN inference throughput on this machine: ``CNN.predict`` vs the pipeline's CNN stage.

Generates a synthetic archive (default 10 audio-minutes at 22.05 kHz), builds an untrained
ResNet18 (weights=None, 224x224x3 input, the CNN default), and scores every 2-s clip twice in the
same invocation: with ``CNN.predict`` (per-clip audio loading and PIL preprocessing) and with the
pipeline (Zarr spectrogram chunks, batched preprocessing on the worker's device). Prints clips per
second and audio-hours per hour, and the ratio to ``CNN.predict``.

    python benchmarks/cnn_inference_throughput.py [--minutes 10] [--batch 32] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main():
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    import torch

    from opso_core.ml import cnn_architectures as ca
    from opso_core.ml.cnn import CNN
    from opso_core.testing import make_archive
    from pipelines.cluster import open_cluster
    from pipelines.config import load_config
    from pipelines.graph import run_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    parser.add_argument("--workers", type=int, default=1, help="local Dask workers for the pipeline [1]")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="opso-cnn-bench-"))
    n_files = max(1, round(args.minutes / 2.5))
    archive = make_archive(work / "archive", n_recorders=1, files_per_recorder=n_files, file_duration_s=150,
                           sample_rate_hz=22050, seed=3)
    hours = n_files * 150 / 3600
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model = CNN(ca.resnet18(2, weights=None), ["a", "b"], 2.0)
    model.device = device
    model.save(work / "m.model")
    files = list(archive.files.file)

    t0 = time.perf_counter()
    scores = model.predict(files, batch_size=args.batch, activation_layer="sigmoid")
    predict_s = time.perf_counter() - t0

    config = load_config({"input": {"url": str(work / "archive")}, "output": {"url": str(work / "run")},
                          "spectrogram": {"sample_rate": 22050, "clips_per_chunk": 64},
                          "cnn": [{"name": "m", "model": str(work / "m.model"), "activation": "sigmoid",
                                   "threshold": 0.5, "batch_size": args.batch, "device": args.device}],
                          "cluster": {"kind": "local", "n_workers": args.workers, "threads_per_worker": 1}})
    with open_cluster(config.cluster) as session:
        summary = run_pipeline(config, session.client, overwrite=True, progress=False, watch=session.check)
    n = len(scores)
    print(f"{n} clips of 2 s ({hours:.3f} audio hours), ResNet18 224x224x3, batch {args.batch}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':<44} {'wall s':>8} {'clips/s':>8} {'audio-h/h':>10} {'vs predict':>10}")
    rows = [("CNN.predict", predict_s)]
    rows += [(f"pipeline: {k}", v) for k, v in summary.stage_wall_s.items() if k != "inventory"]
    rows.append((f"pipeline: whole run ({args.workers} worker)", summary.wall_s))
    for name, s in rows:
        print(f"{name:<44} {s:8.2f} {n / s:8.1f} {hours / (s / 3600):10.0f} {predict_s / s:10.2f}")
    print("(pipeline stages overlap: CNN tasks start as soon as their spectrogram chunk is written)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
