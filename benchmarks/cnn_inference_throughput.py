"""CNN inference throughput on this machine: the network alone, ``CNN.predict``, the pipeline's CNN stage.

Generates a synthetic archive (default 10 audio-minutes at 22.05 kHz), builds an untrained ResNet18
(weights=None, 224x224x3 input, the CNN default) and, in the same invocation, measures

- the bare network: its inference form (:func:`opso_core.ml.utils.inference_network`) on random
  batches of the same size and number, using all the machine's cores (the ceiling);
- ``CNN.predict`` over the archive (per-clip loading and preprocessing, then the network);
- the pipeline's CNN stage on ``--workers`` local workers x 1 thread (reading, spectrograms and
  tensors prepared in a thread while the network runs), and the whole pipeline run.

Prints clips per second, audio-hours per hour and each row's throughput relative to the bare
network (the stage's target is >= 0.9).

    python benchmarks/cnn_inference_throughput.py [--minutes 10] [--batch 32] [--device auto] [--workers 2]
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
    from opso_core.ml.utils import inference_input, inference_network
    from opso_core.testing import make_archive
    from pipelines.cluster import open_cluster
    from pipelines.config import load_config
    from pipelines.graph import run_pipeline
    from pipelines.outputs import OutputLocation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers for the pipeline [2]")
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
    n = len(scores)

    network = inference_network(model.network, device)
    x = inference_input(torch.rand(args.batch, 3, 224, 224), device)
    with torch.no_grad():
        network(x)
        t0 = time.perf_counter()
        for i in range(0, n, args.batch):
            network(x[: min(args.batch, n - i)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare_s = time.perf_counter() - t0

    config = load_config({"input": {"url": str(work / "archive")}, "output": {"url": str(work / "run")},
                          "spectrogram": {"sample_rate": 22050, "store": "none"},
                          "cnn": [{"name": "m", "model": str(work / "m.model"), "activation": "sigmoid",
                                   "threshold": 0.5, "batch_size": args.batch, "device": args.device}],
                          "cluster": {"kind": "local", "n_workers": args.workers, "threads_per_worker": 1}})
    with open_cluster(config.cluster) as session:
        summary = run_pipeline(config, session.client, overwrite=True, progress=False, watch=session.check)
    loc = OutputLocation(str(work / "run"))
    records = [loc.read_json(f"_progress/cnn-m/{name}") for name in loc.list("_progress/cnn-m")]
    in_network = sum(r["forward_s"] for r in records) / args.workers
    print(f"{n} clips of 2 s ({hours:.3f} audio hours), ResNet18 224x224x3, batch {args.batch}, device {device}, "
          f"torch threads in this process {torch.get_num_threads()}")
    print(f"{'method':<52} {'wall s':>8} {'clips/s':>8} {'audio-h/h':>10} {'vs network':>11}")
    rows = [("network alone (inference form, all cores)", bare_s), ("CNN.predict", predict_s),
            (f"pipeline: CNN stage ({args.workers} workers x 1 thread)", summary.stage_wall_s["cnn:m"]),
            (f"pipeline: whole run incl. start-up ({args.workers} workers)", summary.wall_s)]
    for name, s in rows:
        print(f"{name:<52} {s:8.2f} {n / s:8.1f} {hours / (s / 3600):10.0f} {bare_s / s:10.2f}x")
    print(f"(in the stage's tasks, {in_network:.2f} s per worker were spent in the network: the rest is reading, "
          "spectrograms, tensors, scheduling and writing)")
    steady_s = sum(r["task_s"] - r["model_load_s"] for r in records) / args.workers
    print(f"{'pipeline: CNN tasks after the model is loaded':<52} {steady_s:8.2f} {n / steady_s:8.1f} "
          f"{hours / (steady_s / 3600):10.0f} {bare_s / steady_s:10.2f}x")
    print(f"(model load per worker, once: {sum(r['model_load_s'] for r in records) / args.workers:.2f} s; worker "
          "start-up and torch import are in the stage's wall time but not in its tasks)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
