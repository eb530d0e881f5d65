"""Every example of docs/outputs.md runs against a fresh demo run (pandas and xarray blocks in order in
one namespace; the SQL block with DuckDB when it is installed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.demo import prepare_demo
from pipelines.driver.run import run_pipeline

DOC = Path(__file__).parents[2] / "docs" / "outputs.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, dask_client):
    config = prepare_demo(tmp_path_factory.mktemp("demo"), files_per_recorder=1, file_duration_s=30)
    run_pipeline(config, dask_client, progress=False)
    return config.output.url


def test_python_examples_run(demo_run, capsys):
    namespace = {"RUN": demo_run}
    blocks = _blocks("python")
    assert len(blocks) >= 6
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["status"]["status"] in ("complete", "complete_with_failures")
    assert {"detector", "class", "recorder", "day", "detections"} <= set(namespace["per_day"].columns)
    assert namespace["per_day"]["detections"].sum() == len(namespace["detections"]) > 0
    assert list(namespace["top"].columns[:5]) == ["file", "recorder", "start_time", "end_time", "start_time_utc"]
    assert set(namespace["tables"]) == {"ribbit:frog12", "ribbit:fast_pulser"}
    assert namespace["image"].dims == ("frequency", "time")
    assert "clips," in capsys.readouterr().out


def test_sql_examples_run(demo_run):
    duckdb = pytest.importorskip("duckdb", reason="DuckDB is optional (opso[notebooks])")
    sql = _blocks("sql")[0].replace("RUN", demo_run)
    con = duckdb.connect()
    results = [con.execute(statement).fetchdf() for statement in sql.split(";") if statement.strip()]
    assert results[0]["detections"].sum() > 0 and len(results[1]) == 10
