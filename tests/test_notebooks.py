"""Every notebook's code cells run against a fresh demo run (the notebooks follow the output contract)."""

import json
from pathlib import Path

import matplotlib
import pytest

from pipelines.demo import prepare_demo
from pipelines.graph import run_pipeline

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, dask_client):
    config = prepare_demo(tmp_path_factory.mktemp("demo"), files_per_recorder=1, file_duration_s=30)
    run_pipeline(config, dask_client, progress=False)
    return config.output.url


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory, dask_client):
    """A run in which no file held readable audio: every table is there, with zero rows."""
    from opso_core.testing import write_bad_files
    from pipelines.config import load_config
    from pipelines.demo import DEMO_SPECIES

    root = tmp_path_factory.mktemp("empty")
    write_bad_files(root / "archive" / "rec00")
    (root / "archive" / "rec00" / "truncated.wav").unlink()
    config = load_config({"input": {"url": str(root / "archive")}, "output": {"url": str(root / "results")},
                          "ribbit": DEMO_SPECIES}, environ={})
    run_pipeline(config, dask_client, progress=False)
    return config.output.url


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cells_run_on_an_empty_run(notebook, empty_run, monkeypatch):
    namespace = run_cells(notebook, empty_run, monkeypatch)
    assert len(namespace["detections"]) == 0 and len(namespace["per_hour"]) == 0


def run_cells(notebook, run_url, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.setenv("OPSO_RUN", run_url)
    cells = json.loads(notebook.read_text())["cells"]
    namespace = {"__name__": "__notebook__"}
    for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{notebook.name}[{i}]", "exec"), namespace)
        except Exception as exc:  # report which cell broke
            pytest.fail(f"{notebook.name} code cell {i} failed: {type(exc).__name__}: {exc}")
    matplotlib.pyplot.close("all")
    return namespace


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cells_run(notebook, demo_run, monkeypatch):
    namespace = run_cells(notebook, demo_run, monkeypatch)
    assert len(namespace["detections"]) > 0 and namespace["per_hour"]["clips"].sum() == len(namespace["detections"])


def test_there_are_notebooks():
    assert NOTEBOOKS
