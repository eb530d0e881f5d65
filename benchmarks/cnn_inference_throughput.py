"""CNN inference throughput on this machine: the network alone, ``CNN.predict``, the pipeline's CNN stage.

Generates a synthetic archive (default 10 audio-minutes at 22.05 kHz), builds an untrained ResNet18
(weights=None, 224x224x3 input, the CNN default) and, in the same invocation, measures

- the bare network: its inference form (:func:`opso_core.ml.utils.inference_network`) on random
  batches of the same size and number (the ceiling), on all the machine's cores or the GPU;
- ``CNN.predict`` over the archive (per-clip loading and preprocessing, then the network);
- the pipeline's CNN stage and the whole run: on a CPU, ``--workers`` local workers x 1 thread;
  with ``--device cuda``, ``--workers`` local workers started with ``resources={"GPU": 1}`` (as
  ``dask worker --resources GPU=1`` would be), so tasks are sized for GPU workers, once for each
  value of ``--prepare-threads`` (threads that read audio and compute the next batches).

Prints clips per second, audio-hours per hour, each row's throughput relative to the bare network
(the stage's target is >= 0.9), and per stage run the tasks' size: clips per task, seconds per task
and seconds in the network per task (on a GPU the target is >= 1 s of network work per task).

    python benchmarks/cnn_inference_throughput.py [--minutes 10] [--batch 32] [--device auto] [--workers 2]
        [--prepare-threads auto,1,8] [--predict-minutes M] [--copies N] [--precision bfloat16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _run_stage(config, device, workers: int):
    """Run the pipeline once; returns its summary. GPU runs use workers with the GPU resource."""
    from pipelines.driver.cluster import open_cluster
    from pipelines.driver.run import run_pipeline

    if device.type == "cuda":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=workers, threads_per_worker=1, resources={"GPU": 1}, dashboard_address=None) \
                as cluster, Client(cluster) as client:
            started = time.perf_counter()
            summary = run_pipeline(config, client, overwrite=True, progress=False)
            return summary, time.perf_counter() - started
    with open_cluster(config.cluster) as session:
        started = time.perf_counter()
        summary = run_pipeline(config, session.client, overwrite=True, progress=False, watch=session.check)
        return summary, time.perf_counter() - started


def main():
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    import torch

    from opso_core.ml import cnn_architectures as ca
    from opso_core.ml.cnn import CNN
    from opso_core.ml.utils import inference_input, inference_network, precision_context
    from opso_core.testing import make_archive
    from pipelines.config import load_config
    from pipelines.outputs.location import OutputLocation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="audio minutes in the archive [10]")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    parser.add_argument("--workers", type=int, default=None,
                        help="local Dask workers for the pipeline [2 on a CPU, 1 with a GPU]")
    parser.add_argument("--prepare-threads", default="auto",
                        help="comma-separated values of the cnn entry's prepare_threads to run the stage with "
                             "('auto' = null, opso's default) [auto]")
    parser.add_argument("--predict-minutes", type=float, default=None,
                        help="audio minutes given to CNN.predict [all]; 0 skips it")
    parser.add_argument("--clips-per-task", type=int, default=None, help="the cnn entry's clips_per_task [null]")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="the cnn entry's precision, also used for the bare network [float32]")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="the cnn entry's cuda_graphs: false")
    parser.add_argument("--copies", type=int, default=1,
                        help="hard-link the generated recorder folder this many times (more audio for a GPU, "
                             "without the time to synthesise it) [1]")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    workers = args.workers or (1 if device.type == "cuda" else 2)
    work = Path(tempfile.mkdtemp(prefix="opso-cnn-bench-"))
    n_files = max(1, round(args.minutes / 2.5))
    t0 = time.perf_counter()
    archive = make_archive(work / "archive", n_recorders=1, files_per_recorder=n_files, file_duration_s=150,
                           sample_rate_hz=22050, seed=3)
    for k in range(1, args.copies):
        copy = work / "archive" / f"rec{k:02d}"
        copy.mkdir()
        for f in (work / "archive" / "rec00").iterdir():
            os.link(f, copy / f.name)
    print(f"archive: {n_files} files x 150 s at 22.05 kHz x {args.copies} recorder(s), made in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    n_files *= args.copies
    hours = n_files * 150 / 3600
    model = CNN(ca.resnet18(2, weights=None), ["a", "b"], 2.0)
    model.device = device
    model.save(work / "m.model")
    files = sorted(archive.files.file)  # the first recorder's
    n = n_files * 75  # 2 s clips of 150 s files

    rows = []
    predict_files = files if args.predict_minutes is None else files[: round(args.predict_minutes / 2.5)]
    if predict_files:
        t0 = time.perf_counter()
        scores = model.predict(predict_files, batch_size=args.batch, activation_layer="sigmoid")
        predict_s = time.perf_counter() - t0
        rows.append((f"CNN.predict ({len(scores)} clips)", predict_s, len(scores)))

    network = inference_network(model.network, device)
    x = inference_input(torch.rand(args.batch, 3, 224, 224), device)
    with torch.no_grad(), precision_context(device, args.precision):
        for _ in range(3):
            network(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, n, args.batch):
            network(x[: min(args.batch, n - i)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare_s = time.perf_counter() - t0
    rows.insert(0, (f"network alone (inference form, {'GPU' if device.type == 'cuda' else 'all cores'})", bare_s, n))
    if device.type == "cuda":  # the GPU's share of a batch: spectrograms, network input, network
        from opso_core.ml.spectrogram_tensors import (
            TensorSettings,
            spectrograms_on_device,
            spectrograms_to_tensor,
        )
        from opso_core.stft import SpectrogramParams

        params = SpectrogramParams.resolve(22050)
        audio = torch.randn(args.batch, 44100).pin_memory()
        steps = {"copy audio to the GPU": lambda: audio.to(device, non_blocking=True)}
        on_gpu = steps["copy audio to the GPU"]()
        steps["spectrograms (float64 STFT, dB)"] = lambda: spectrograms_on_device(on_gpu, 22050, params)
        values = steps["spectrograms (float64 STFT, dB)"]()
        freqs = params.frequencies(22050)
        steps["network input (224x224 resize, scale)"] = lambda: spectrograms_to_tensor(values, freqs, TensorSettings())
        def run_network():
            with precision_context(device, args.precision):
                return network(x)

        steps["network"] = run_network
        print(f"GPU time per batch of {args.batch} (ms, median of 20):")
        with torch.no_grad():
            for name, step in steps.items():
                times = []
                for _ in range(23):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    step()
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                print(f"  {name:<40} {statistics.median(times[3:]) * 1e3:8.2f}")

    task_rows = []
    for setting in args.prepare_threads.split(","):
        threads = None if setting.strip() == "auto" else int(setting)
        run = work / f"run-{setting.strip()}"
        config = load_config({"input": {"url": str(work / "archive")}, "output": {"url": str(run)},
                              "spectrogram": {"sample_rate": 22050, "store": "none"},
                              "cnn": [{"name": "m", "model": str(work / "m.model"), "activation": "sigmoid",
                                       "threshold": 0.5, "batch_size": args.batch, "device": args.device,
                                       "prepare_threads": threads, "clips_per_task": args.clips_per_task,
                                       "precision": args.precision, "cuda_graphs": not args.no_cuda_graphs}],
                              "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1}})
        summary, run_s = _run_stage(config, device, workers)
        loc = OutputLocation(str(run))
        records = [loc.read_json(f"_progress/cnn-m/{name}") for name in loc.list("_progress/cnn-m")]
        used = records[0].get("prepare_threads", threads)
        label = f"prepare_threads {setting.strip()} (= {used})"
        rows.append((f"pipeline: CNN stage, {label}", summary.stage_wall_s["cnn:m"], n))
        busy: dict[str, float] = {}  # per worker: seconds in its tasks, less the one-off model load
        for r in records:
            busy[r["worker"]] = busy.get(r["worker"], 0.0) + r["task_s"] - r["model_load_s"]
        steady_s = max(busy.values())
        rows.append((f"pipeline: CNN tasks after model load, {label}", steady_s, n))
        rows.append((f"pipeline: whole run, {label}", run_s, n))
        task_rows.append((label, records))

    print(f"{n} clips of 2 s ({hours:.3f} audio hours), ResNet18 224x224x3, {args.precision}, batch {args.batch}, "
          f"device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, {workers} worker(s), "
          f"{len(os.sched_getaffinity(0))} cores, torch threads in this process {torch.get_num_threads()}")
    print(f"{'method':<64} {'wall s':>8} {'clips/s':>8} {'audio-h/h':>10} {'vs network':>11}")
    for name, s, clips in rows:
        rate = clips / s
        print(f"{name:<64} {s:8.2f} {rate:8.1f} {clips * 2 / 3600 / (s / 3600):10.0f} {rate / (n / bare_s):10.2f}x")
    print(f"\n{'stage run':<28} {'tasks':>6} {'clips/task':>11} {'task s (median)':>16} {'network s/task':>15} "
          f"{'model load s':>13} {'graph batches':>14}")
    for label, records in task_rows:
        clips = [r["n_clips"] for r in records]
        print(f"{label:<28} {len(records):6d} {statistics.median(clips):11.0f} "
              f"{statistics.median(r['task_s'] for r in records):16.2f} "
              f"{statistics.median(r['forward_s'] for r in records):15.2f} "
              f"{max(r['model_load_s'] for r in records):13.2f} "
              f"{sum(r.get('graph_batches', 0) for r in records):14d}")
    print("(network s/task: seconds a task spent in the network's forward passes incl. copying scores back; "
          "the rest of a task is waiting for batches being read and transformed, and writing)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
