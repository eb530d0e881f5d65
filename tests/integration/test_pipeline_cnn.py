"""The CNN inference stage: scores equal CNN.predict, and tasks go to `--resources GPU=1` workers."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from opso_core.ml import cnn_architectures as ca
from opso_core.ml.cnn import CNN
from opso_core.testing import make_archive
from pipelines.config import load_config
from pipelines.driver.run import run_pipeline
from pipelines.errors import ConfigError
from pipelines.outputs.location import OutputLocation

CLASSES = ["frog", "other"]
TOLERANCE = 1e-4  # torch's antialiased resize on the device vs PIL's in CNN.predict


@pytest.fixture(scope="module")
def cnn_archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("cnn_archive"), n_recorders=2, files_per_recorder=1,
                        file_duration_s=12, sample_rate_hz=22050, frog_calls_per_file=1, seed=2)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = CNN(ca.resnet18(2, weights=None), CLASSES, 2.0, sample_shape=(64, 64, 3))
    model.preprocessor.pipeline.bandpass.set(min_f=500, max_f=8000)
    path = tmp_path_factory.mktemp("models") / "toy.model"
    model.save(path)
    return path, model


def config(archive_root, out, model_path, **cnn):
    entry = {"name": "toy", "model": str(model_path), "activation": "sigmoid", "threshold": 0.5, "batch_size": 4}
    entry.update(cnn)
    return load_config({"input": {"url": str(archive_root)}, "output": {"url": str(out)},
                        "spectrogram": {"sample_rate": 22050, "clips_per_chunk": 4}, "cnn": [entry]}, environ={})


def test_scores_equal_cnn_predict(cnn_archive, model_file, dask_client, tmp_path):
    path, model = model_file
    summary = run_pipeline(config(cnn_archive.root, tmp_path / "out", path, overlap_fraction=0.5),
                           dask_client, progress=False)
    assert summary.status == "complete"
    loc = OutputLocation(str(tmp_path / "out"))
    scores = loc.read_parquet_folder("scores/detector=cnn:toy").sort_values(["file", "start_time"])
    files = sorted(cnn_archive.files.file)
    expected = model.predict(files, activation_layer="sigmoid", overlap_fraction=0.5).reset_index()
    expected = expected.sort_values(["file", "start_time"])
    assert len(scores) == len(expected) == 2 * 11  # 12 s files, 2 s clips every 1 s
    np.testing.assert_array_equal(scores.start_time.to_numpy(), expected.start_time.to_numpy())
    diff = np.abs(scores[CLASSES].to_numpy() - expected[CLASSES].to_numpy()).max()
    assert diff < TOLERANCE, diff
    detections = loc.read_parquet_folder("detections")
    assert set(detections.detector) <= {"cnn:toy"}
    for cls in CLASSES:
        assert (detections["class"] == cls).sum() == (expected[cls] >= 0.5).sum()
    # the model's clips (1 s steps) differ from the run's: its input was computed from the audio, no store
    assert not [n for n in loc.list("") if n.startswith("spectrograms-")]
    assert summary.detections["cnn:toy"] == len(detections)


def test_a_reduced_precision_is_close_and_recomputes_the_scores(cnn_archive, model_file, dask_client, tmp_path):
    """``precision: bfloat16`` runs the network under autocast (CPU here; the GPU's tensor cores in use):
    scores near float32's, not equal to them, and a changed precision recomputes the scores."""
    path, _ = model_file
    out = tmp_path / "out"
    run_pipeline(config(cnn_archive.root, out, path), dask_client, progress=False)
    loc = OutputLocation(str(out))
    full = loc.read_parquet_folder("scores/detector=cnn:toy").sort_values(["file", "start_time"])
    summary = run_pipeline(config(cnn_archive.root, out, path, precision="bfloat16"), dask_client, progress=False)
    assert summary.status == "complete"
    reduced = loc.read_parquet_folder("scores/detector=cnn:toy").sort_values(["file", "start_time"])
    diff = np.abs(reduced[CLASSES].to_numpy() - full[CLASSES].to_numpy())
    assert 0 < diff.max() < 2e-2, diff.max()
    with pytest.raises(ConfigError, match="cnn.0.precision: Input should be 'float32', 'bfloat16' or 'float16'"):
        config(cnn_archive.root, tmp_path / "bad", path, precision="int8")


def test_model_errors_are_config_errors(cnn_archive, model_file, dask_client, tmp_path):
    path, model = model_file
    with pytest.raises(ConfigError, match="not found"):
        run_pipeline(config(cnn_archive.root, tmp_path / "a", tmp_path / "missing.model"), dask_client, progress=False)
    model.save(tmp_path / "pickled.model", pickle=True)
    with pytest.raises(ConfigError, match="pickled model is refused"):
        run_pipeline(config(cnn_archive.root, tmp_path / "b", tmp_path / "pickled.model"), dask_client, progress=False)
    with pytest.raises(ConfigError, match="no threshold for classes"):
        run_pipeline(config(cnn_archive.root, tmp_path / "c", path, threshold={"frog": 0.5}), dask_client,
                     progress=False)
    with pytest.raises(ConfigError, match=r"threshold: the model has no classes \['toad'\]"):
        run_pipeline(config(cnn_archive.root, tmp_path / "c", path, threshold={"frog": 0.5, "other": 0.5, "toad": 0.5}),
                     dask_client, progress=False)
    # weights cut short (a partial copy) or missing: found by the checks, naming the model, before any work
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    for name, weights in (("half", members["weights.pt"][: len(members["weights.pt"]) // 2]), ("none", None)):
        broken = tmp_path / f"{name}.model"
        with zipfile.ZipFile(broken, "w") as zf:
            for member, data in members.items():
                if member != "weights.pt":
                    zf.writestr(member, data)
                elif weights is not None:
                    zf.writestr(member, weights)
        match = "weights.pt. are damaged or cut short" if weights is not None else "holds no weights.pt"
        with pytest.raises(ConfigError, match=rf"cnn model {broken}: (its|it) .*{match}"):
            run_pipeline(config(cnn_archive.root, tmp_path / f"d-{name}", broken), dask_client, progress=False)
        assert not (tmp_path / f"d-{name}").exists()


@pytest.mark.slow
def test_tasks_run_on_the_gpu_worker(cnn_archive, model_file, tmp_path):
    """A LocalCluster plus one worker started with --resources GPU=1 (a CPU standing in for the GPU)."""
    from distributed import Client, LocalCluster

    path, _ = model_file
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                 "--nthreads", "1", "--resources", "GPU=1", "--no-dashboard", "--name", "gpu-stand-in"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                workers = client.scheduler_info()["workers"]
                gpu = [a for a, w in workers.items() if (w.get("resources") or {}).get("GPU")]
                if gpu:
                    break
                time.sleep(0.2)
            assert gpu, "the GPU worker did not register"
            summary = run_pipeline(config(cnn_archive.root, tmp_path / "out", path, clips_per_task=4), client,
                                   progress=False)
            assert summary.status == "complete"
            loc = OutputLocation(str(tmp_path / "out"))
            markers = [loc.read_json(f"_progress/cnn-toy/{n}") for n in loc.list("_progress/cnn-toy")]
            assert len(markers) == 3  # 12 clips in tasks of 4
            assert {m["worker"] for m in markers} == set(gpu)
            assert {m["device"] for m in markers} == {"cuda:0" if torch.cuda.is_available() else "cpu"}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_a_local_cluster_with_gpus_sends_cnn_tasks_to_its_gpu_workers(cnn_archive, model_file, tmp_path, dask_client,
                                                                      monkeypatch):
    """``cluster.gpus: 2`` starts a worker per GPU (stand-ins here: no GPU is visible, so they score on
    their CPUs); every CNN task runs on them, and the scores equal a plain run's."""
    from pipelines.driver.cluster import open_cluster

    path, _ = model_file
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cfg = config(cnn_archive.root, tmp_path / "out", path, clips_per_task=4)
    cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"n_workers": 1, "gpus": 2})})
    with open_cluster(cfg.cluster) as session:
        workers = session.client.scheduler_info(n_workers=-1)["workers"]
        gpu = {address for address, w in workers.items() if (w.get("resources") or {}).get("GPU")}
        summary = run_pipeline(cfg, session.client, progress=False, watch=session.check)
    assert summary.status == "complete" and len(gpu) == 2
    loc = OutputLocation(str(tmp_path / "out"))
    markers = [loc.read_json(f"_progress/cnn-toy/{n}") for n in loc.list("_progress/cnn-toy")]
    assert len(markers) == 3 and {m["worker"] for m in markers} <= gpu
    plain = run_pipeline(config(cnn_archive.root, tmp_path / "plain", path, clips_per_task=4), dask_client,
                         progress=False)
    assert plain.status == "complete"
    key = ["file", "start_time"]
    pd.testing.assert_frame_equal(
        loc.read_parquet_folder("scores/detector=cnn:toy").sort_values(key).reset_index(drop=True),
        OutputLocation(str(tmp_path / "plain")).read_parquet_folder("scores/detector=cnn:toy").sort_values(key)
        .reset_index(drop=True))


def test_pipeline_scores_table_columns(cnn_archive, model_file, dask_client, tmp_path):
    path, _ = model_file
    run_pipeline(config(cnn_archive.root, tmp_path / "out", path, activation=None, threshold={"frog": 0.0, "other": 99}),
                 dask_client, progress=False)
    loc = OutputLocation(str(tmp_path / "out"))
    scores = loc.read_parquet("scores/detector=cnn:toy/part-000000000-000000012.parquet")  # one task: 12 clips
    assert list(scores.columns) == ["file", "recorder", "start_time", "end_time", "start_time_utc", "frog", "other"]
    detections = loc.read_parquet_folder("detections")
    assert set(detections["class"]) <= {"frog"}  # the impossible threshold keeps 'other' out
    assert isinstance(detections.start_time_utc.iloc[0], pd.Timestamp)
    assert not [n for n in loc.list("") if n.startswith("spectrograms-")]


def test_scores_do_not_depend_on_what_the_store_keeps(cnn_archive, model_file, dask_client, tmp_path):
    """The CNN's input is computed in full precision from the audio: the same scores whether the run
    keeps a compact store, a full one or none."""
    path, _ = model_file
    tables = {}
    for store in ("compact", "full", "none"):
        cfg = config(cnn_archive.root, tmp_path / store, path)
        cfg = cfg.model_copy(update={"spectrogram": cfg.spectrogram.model_copy(update={"store": store})})
        summary = run_pipeline(cfg, dask_client, progress=False)
        loc = OutputLocation(str(tmp_path / store))
        tables[store] = loc.read_parquet_folder("scores/detector=cnn:toy").sort_values(["file", "start_time"])
        assert loc.exists("spectrograms.zarr") == (store != "none")
        # with no store and no RIBBIT nothing uses spectrograms of the run's clips: no such stage
        assert bool(loc.list("_progress/spectrograms")) == (store != "none")
        assert summary.n_clips_failed == 0
        if store == "none":  # the CNN's clips (2 s every 2 s of two 12 s files) are the run's clips
            assert summary.n_clips == len(tables[store]) == 12
    pd.testing.assert_frame_equal(tables["compact"], tables["full"])
    pd.testing.assert_frame_equal(tables["compact"], tables["none"])


def test_a_changed_threshold_rederives_detections_from_the_stored_scores(cnn_archive, model_file, dask_client,
                                                                          tmp_path):
    path, _ = model_file
    out = tmp_path / "out"
    run_pipeline(config(cnn_archive.root, out, path), dask_client, progress=False)
    scores = {p: p.read_bytes() for p in (out / "scores").rglob("*.parquet")}
    markers = {p: p.read_text() for p in (out / "_progress" / "cnn-toy").glob("*.json")}
    assert markers

    summary = run_pipeline(config(cnn_archive.root, out, path, threshold={"frog": 0.3, "other": 0.6}), dask_client,
                           progress=False)

    assert {p: p.read_bytes() for p in (out / "scores").rglob("*.parquet")} == scores
    import json

    for marker, before in markers.items():  # the network did not run again: its timings are the first run's
        old, new = json.loads(before), json.loads(marker.read_text())
        assert new["forward_s"] == old["forward_s"] and new["products"] != old["products"]
    clean = tmp_path / "clean"
    reference = run_pipeline(config(cnn_archive.root, clean, path, threshold={"frog": 0.3, "other": 0.6}),
                             dask_client, progress=False)
    key = ["class", "file", "start_time"]
    got = pd.read_parquet(out / "detections").sort_values(key).reset_index(drop=True)
    want = pd.read_parquet(clean / "detections").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert summary.detections == reference.detections and len(got) > 0


def test_review_serves_a_cnn_run(cnn_archive, model_file, dask_client, tmp_path):
    """``opso review`` on a CNN run: every class sampled, clips' media read, an answer written."""
    import io

    import soundfile as sf

    from pipelines.outputs.results import read_status
    from pipelines.review.media import ClipMedia
    from pipelines.review.queue import review_items
    from pipelines.review.reviews import read_reviews
    from pipelines.review.server import ReviewApp

    path, _ = model_file
    run_pipeline(config(cnn_archive.root, tmp_path / "out", path, overlap_fraction=0.5), dask_client, progress=False)
    run = str(tmp_path / "out")
    items = review_items(run, n_bins=4, per_bin=2)
    assert set(items["detector"]) == {"cnn:toy"} and set(items["class"]) == set(CLASSES)
    scores = pd.read_parquet(f"{run}/scores/detector=cnn:toy")
    for class_name, group in items.groupby("class"):
        assert group.drop_duplicates("stratum")["stratum_size"].sum() == len(scores) == 22
        assert not group["score"].isna().any() and group["score"].isin(scores[class_name]).all()
    app = ReviewApp(run, items, ClipMedia(run, read_status(run)["config"]))
    for item in items.itertuples():
        assert app.spectrogram(item.id)[:8] == b"\x89PNG\r\n\x1a\n"
        samples, rate = sf.read(io.BytesIO(app.audio(item.id)))
        assert rate == 22050 and len(samples) == round(22050 * (min(item.end_time + 1, 12) - max(item.start_time - 1, 0)))
    app.answer(int(items["id"].iloc[0]), "present", "ana")
    (review,) = read_reviews(run).to_dict("records")
    assert (review["detector"], review["class"], review["file"], review["label"]) == (
        "cnn:toy", items["class"].iloc[0], items["file"].iloc[0], "present")


def test_embeddings_are_the_classifier_s_input(cnn_archive, model_file, dask_client, tmp_path):
    """``embeddings: true`` keeps each clip's classifier input: the model's fc layer on the stored
    embedding gives the stored score back; an example clip of the archive finds itself first."""
    import xarray as xr

    from pipelines.embeddings.search import search

    path, model = model_file
    summary = run_pipeline(config(cnn_archive.root, tmp_path / "out", path, embeddings=True, batch_size=4,
                                  clips_per_task=8), dask_client, progress=False)
    assert summary.status == "complete"
    ds = xr.open_zarr(tmp_path / "out" / "embeddings.zarr" / "cnn-toy")
    assert ds["embedding"].shape == (12, 512) and ds["embedding"].dtype == np.float16
    assert ds["embedding"].data.chunks[0][0] == 8  # whole batches, a task's clips
    scores = pd.read_parquet(tmp_path / "out" / "scores" / "detector=cnn:toy").sort_values(["file", "start_time"])
    order = np.lexsort((ds["start_time"].values, np.array(ds["file"].values.tolist(), dtype=object)))
    emb = torch.tensor(np.asarray(ds["embedding"].values[order], dtype=np.float32))
    fc = model.network.fc
    logits = (emb @ fc.weight.detach().T + fc.bias.detach()).numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), scores[CLASSES].to_numpy(), atol=2e-3)  # float16 input
    first = scores.iloc[3]
    found = search(str(tmp_path / "out"), [f"{first.file}:{first.start_time:g}-{first.end_time:g}"], k=3)
    assert (found["file"].iloc[0], found["start_time"].iloc[0]) == (first.file, first.start_time)
    assert found["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-3)
    # the run again: nothing to do (the store is kept)
    again = run_pipeline(config(cnn_archive.root, tmp_path / "out", path, embeddings=True, batch_size=4,
                                clips_per_task=8), dask_client, progress=False)
    assert again.status == "complete"
    # other clips (overlapping): the old store is deleted with the old embeddings, not reused
    changed = run_pipeline(config(cnn_archive.root, tmp_path / "out", path, embeddings=True, batch_size=4,
                                  clips_per_task=8, overlap_fraction=0.5), dask_client, progress=False)
    assert changed.status == "complete"
    ds = xr.open_zarr(tmp_path / "out" / "embeddings.zarr" / "cnn-toy")
    assert ds["embedding"].shape == (22, 512) and not np.isnan(np.asarray(ds["embedding"].values, float)).any()
    assert len(pd.read_parquet(tmp_path / "out" / "scores" / "detector=cnn:toy")) == 22


def test_a_linear_classifier_on_a_cnn_s_embeddings(cnn_archive, model_file, dask_client, tmp_path):
    from pipelines.embeddings.linear import train_linear

    path, _ = model_file
    out = tmp_path / "out"
    base = config(cnn_archive.root, out, path, embeddings=True, batch_size=4, clips_per_task=8)
    run_pipeline(base, dask_client, progress=False)
    scores = pd.read_parquet(out / "scores" / "detector=cnn:toy")
    labels = scores[["file", "start_time", "end_time"]].assign(loud=(scores["frog"] >= scores["frog"].median()).astype(int))
    labels.to_csv(tmp_path / "labels.csv", index=False)
    model = train_linear(str(out), str(tmp_path / "labels.csv"), test_fraction=0)
    assert model.embedding == "cnn:toy" and model.classes == ("loud",)
    (tmp_path / "loud.opso-linear").write_bytes(model.to_bytes())
    data = base.model_dump(mode="json", by_alias=True)
    data["linear"] = [{"name": "loud", "model": str(tmp_path / "loud.opso-linear")}]
    summary = run_pipeline(load_config(data, environ={}), dask_client, progress=False)
    assert summary.status == "complete"
    linear = pd.read_parquet(out / "scores" / "detector=linear:loud").merge(labels, on=["file", "start_time"])
    assert len(linear) == 12 and ((linear["loud_x"] >= 0.5) == (linear["loud_y"] == 1)).mean() >= 0.9
