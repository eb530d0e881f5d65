"""The CNN stage on a real CUDA device (skipped without one): tasks run on the `GPU=1` worker, on the GPU,
and give CNN.predict's scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opso_core.ml import cnn_architectures as ca
from opso_core.ml.cnn import CNN
from opso_core.testing import make_archive
from pipelines.config import load_config
from pipelines.driver.run import run_pipeline
from pipelines.outputs.location import OutputLocation

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none is visible)")]

CLASSES = ["frog", "other"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("gpu_archive"), n_recorders=2, files_per_recorder=2,
                        file_duration_s=30, sample_rate_hz=22050, frog_calls_per_file=2, seed=5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    model = CNN(ca.resnet18(2, weights=None), CLASSES, 2.0)  # the default 224x224x3 input
    path = tmp_path_factory.mktemp("models") / "resnet18.model"
    model.save(path)
    return path, model


@pytest.fixture(autouse=True)
def fresh_graphs():
    """The worker runs in this process: each test records its own CUDA graphs."""
    from pipelines.stages.cnn_batch import forget_graphs

    forget_graphs()
    yield
    forget_graphs()


@pytest.fixture(scope="module")
def gpu_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, resources={"GPU": 1},
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


def _run(archive, path, out, client, **cnn):
    entry = {"name": "r18", "model": str(path), "activation": "sigmoid", "threshold": 0.5, "batch_size": 16}
    entry.update(cnn)
    config = load_config({"input": {"url": str(archive.root)}, "output": {"url": str(out)},
                          "spectrogram": {"sample_rate": 22050, "store": "none"}, "cnn": [entry]}, environ={})
    summary = run_pipeline(config, client, progress=False)
    assert summary.status == "complete"
    loc = OutputLocation(str(out))
    markers = [loc.read_json(f"_progress/cnn-r18/{n}") for n in loc.list("_progress/cnn-r18")]
    scores = loc.read_parquet_folder("scores/detector=cnn:r18").sort_values(["file", "start_time"])
    return scores, markers


def _expected(model, archive, device):
    model.device = device
    try:
        table = model.predict(sorted(archive.files.file), activation_layer="sigmoid", batch_size=16).reset_index()
    finally:
        model.device = torch.device("cpu")
    return table.sort_values(["file", "start_time"])[CLASSES].to_numpy()


def test_cnn_stage_on_the_gpu_equals_cnn_predict_without_tf32(archive, model, gpu_client, tmp_path, monkeypatch):
    """With TF32 off (full float32 convolutions) the GPU stage gives the CPU's CNN.predict scores to 1e-4."""
    path, cnn = model
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the worker runs in this process
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    scores, markers = _run(archive, path, tmp_path / "out", gpu_client, prepare_threads=3)
    assert {m["device"] for m in markers} == {"cuda:0"}
    assert {m["prepare_threads"] for m in markers} == {3}
    assert sum(m["graph_batches"] for m in markers) > 0  # full batches ran as the recorded CUDA graph
    assert len(scores) == 4 * 15  # 30 s files, 2 s clips
    expected = _expected(cnn, archive, torch.device("cpu"))
    diff = np.abs(scores[CLASSES].to_numpy() - expected).max()
    print(f"GPU stage (TF32 off) vs CPU CNN.predict: max |score difference| {diff:.2e}")
    assert diff < 1e-4, diff


def test_cnn_stage_on_the_gpu_with_torch_defaults(archive, model, gpu_client, tmp_path):
    """PyTorch's defaults let cuDNN run convolutions in TF32 (10-bit mantissa): scores stay within a few
    1e-4 of the CPU's (1.7e-4 measured on an H200), and of CNN.predict's on the same GPU."""
    path, cnn = model
    scores, markers = _run(archive, path, tmp_path / "out", gpu_client)
    assert {m["device"] for m in markers} == {"cuda:0"}
    values = scores[CLASSES].to_numpy()
    versus_cpu = np.abs(values - _expected(cnn, archive, torch.device("cpu"))).max()
    versus_gpu = np.abs(values - _expected(cnn, archive, torch.device("cuda"))).max()
    print(f"GPU stage (torch defaults, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}): max |score difference| "
          f"vs CPU CNN.predict {versus_cpu:.2e}, vs GPU CNN.predict {versus_gpu:.2e}")
    assert versus_gpu < 1e-3, versus_gpu
    assert versus_cpu < 1e-3, versus_cpu


def test_cuda_graph_batches_equal_eager_batches(archive, model, gpu_client, tmp_path, monkeypatch):
    """The recorded graph replays the eager computation's kernels: the same scores (to float rounding;
    TF32 off, so neither side's convolutions depend on cuDNN's choice of TF32 kernels)."""
    path, _ = model
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    graphs, with_markers = _run(archive, path, tmp_path / "graphs", gpu_client)
    eager, eager_markers = _run(archive, path, tmp_path / "eager", gpu_client, cuda_graphs=False)
    assert sum(m["graph_batches"] for m in with_markers) > 0 and sum(m["graph_batches"] for m in eager_markers) == 0
    diff = np.abs(graphs[CLASSES].to_numpy() - eager[CLASSES].to_numpy()).max()
    print(f"CUDA graph vs eager batches: max |score difference| {diff:.2e}")
    assert diff < 1e-5, diff


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_on_the_gpu(archive, model, gpu_client, tmp_path, precision):
    """Autocast on the GPU (inside the CUDA graph): scores near float32's; the difference is printed for
    the docs' table."""
    path, cnn = model
    scores, markers = _run(archive, path, tmp_path / precision, gpu_client, precision=precision)
    assert sum(m["graph_batches"] for m in markers) > 0
    diff = np.abs(scores[CLASSES].to_numpy() - _expected(cnn, archive, torch.device("cpu"))).max()
    print(f"GPU stage in {precision} vs CPU CNN.predict (float32): max |score difference| {diff:.2e}")
    assert diff < 2e-2, diff


def test_a_local_cluster_gives_the_gpu_its_own_worker(archive, model, tmp_path):
    """``cluster.gpus: auto`` on a GPU machine: a worker process for the GPU (resource GPU=1), where every CNN
    task runs, on cuda:0, as CUDA graphs."""
    from pipelines.driver.cluster import open_cluster

    path, _ = model
    config = load_config({"input": {"url": str(archive.root)}, "output": {"url": str(tmp_path / "out")},
                          "spectrogram": {"sample_rate": 22050, "store": "none"},
                          "cnn": [{"name": "r18", "model": str(path), "activation": "sigmoid", "threshold": 0.5,
                                   "batch_size": 16}],
                          "cluster": {"n_workers": 1}}, environ={})
    with open_cluster(config.cluster, gpu_work=config.gpu_work) as session:
        workers = session.client.scheduler_info(n_workers=-1)["workers"]
        gpu = {a for a, w in workers.items() if (w.get("resources") or {}).get("GPU")}
        assert len(gpu) == torch.cuda.device_count() >= 1
        summary = run_pipeline(config, session.client, progress=False, watch=session.check)
    assert summary.status == "complete"
    loc = OutputLocation(str(tmp_path / "out"))
    markers = [loc.read_json(f"_progress/cnn-r18/{n}") for n in loc.list("_progress/cnn-r18")]
    assert {m["worker"] for m in markers} <= gpu and {m["device"] for m in markers} == {"cuda:0"}
    assert sum(m["graph_batches"] for m in markers) > 0
