"""docs/birdnet.md's examples run against an ``opso demo --birdnet`` run: its configuration loads, its
pandas and xarray blocks (in order, one namespace) and its SQL block (with DuckDB when installed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config

DOC = Path(__file__).parents[2] / "docs" / "birdnet.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_configuration_example_loads():
    config = load_config(yaml.safe_load(_blocks("yaml")[0]), environ={})
    entry = config.birdnet[0]
    assert entry.name == "birds" and entry.threshold == 0.5 and entry.embeddings
    assert entry.species.week == "auto" and config.spectrogram.store == "none"


@pytest.fixture(scope="module")
def birdnet_run(tmp_path_factory, dask_client):
    pytest.importorskip("ai_edge_litert", reason="the BirdNET model is an extra: pip install 'opso[birdnet]'")
    from pipelines.demo import prepare_demo
    from pipelines.driver.run import run_pipeline

    config = prepare_demo(tmp_path_factory.mktemp("demo"), files_per_recorder=1, file_duration_s=30, birdnet=True)
    run_pipeline(config, dask_client, progress=False)
    return config.output.url


def test_python_examples_run(birdnet_run):
    namespace = {"RUN": birdnet_run}
    for block in _blocks("python"):
        exec(compile(block, str(DOC), "exec"), namespace)
    scores = namespace["scores"]
    assert list(scores.columns) == ["file", "recorder", "start_time", "end_time", "start_time_utc", "class", "score"]
    assert len(namespace["best"]) == 3 * 10  # 3 recorders x one 30 s file: 10 windows each, one best class each
    assert (namespace["birds"].detector == "birdnet:birds").all()
    assert namespace["vectors"].shape == (10, 1024)


def test_sql_example_runs(birdnet_run):
    duckdb = pytest.importorskip("duckdb", reason="DuckDB is optional (opso[notebooks])")
    sql = _blocks("sql")[0].replace("RUN", birdnet_run).replace("0.5", "0.01")
    table = duckdb.connect().execute(sql).fetchdf()
    assert list(table.columns) == ["recorder", "day", "class", "best", "windows"] and len(table) > 0
