"""Every notebook's code cells run against a fresh demo run (the notebooks follow the output contract)."""

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from pipelines.demo import prepare_demo
from pipelines.driver.run import run_pipeline

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, dask_client):
    config = prepare_demo(tmp_path_factory.mktemp("demo"), files_per_recorder=1, file_duration_s=30)
    run_pipeline(config, dask_client, progress=False)
    return config.output.url


@pytest.fixture(scope="module")
def demo_run_s3(tmp_path_factory, dask_client, s3_server, s3_storage_options):
    """The demo's results written to a bucket of a local S3 server; returns (output URL, labels.csv)."""
    import s3fs

    from pipelines.demo import prepare_demo

    folder = tmp_path_factory.mktemp("demo-s3")
    config = prepare_demo(folder, files_per_recorder=1, file_duration_s=30)
    s3fs.S3FileSystem(**s3_storage_options).mkdir("opso-notebooks")
    output = config.output.model_copy(update={"url": "s3://opso-notebooks/demo/results",
                                               "storage_options": s3_storage_options})
    config = config.model_copy(update={"output": output})
    run_pipeline(config, dask_client, progress=False)
    return config.output.url, folder / "labels.csv"


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


@pytest.fixture(scope="module")
def localization_run(tmp_path_factory, dask_client):
    """RIBBIT and localization on a 3 x 3 recorder grid with calls at known places."""
    from opso_core.testing import make_archive
    from pipelines.config import load_config

    root = tmp_path_factory.mktemp("grid")
    archive = make_archive(root / "audio", n_recorders=9, files_per_recorder=1, file_duration_s=30.0,
                           sample_rate_hz=16000, frog_calls_per_file=4, spacing_m=40.0, layout="grid",
                           frog_pulse_jitter=0.8, other_sounds=False, seed=3)
    archive.recorders[["recorder", "x", "y"]].to_csv(root / "recorders.csv", index=False)
    config = load_config({
        "input": {"url": str(archive.root), "recorders_table": str(root / "recorders.csv")},
        "output": {"url": str(root / "results")}, "clips": {"duration": 2.0},
        "spectrogram": {"sample_rate": 16000, "store": "none"},
        "ribbit": [{"name": "frog", "signal_band": [1500, 2500], "pulse_rate_range": [9, 15],
                    "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.004}],
        "localization": {"detector": "ribbit:frog", "class": "frog", "max_receiver_dist": 60.0}}, environ={})
    run_pipeline(config, dask_client, progress=False)
    return config.output.url


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cells_run_on_an_empty_run(notebook, empty_run, monkeypatch):
    namespace = run_cells(notebook, empty_run, monkeypatch)
    assert len(namespace["detections"]) == 0


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
    import matplotlib.pyplot as plt  # a notebook without figures has not imported it

    plt.close("all")
    return namespace


def _per_hour_adds_up(ns):
    return ns["per_hour"]["clips"].sum() == len(ns["detections"])


def _gallery(ns):
    top = ns["top"]
    return len(top) > 0 and ns["n_panels"] == len(top) and set(top["class"]) == set(ns["detections"]["class"])


def _thresholds(ns):
    curve = ns["curve"]  # the demo writes labels.csv next to results/: precision and recall for frog12
    frog = curve[curve["class"] == "frog12"].iloc[0]
    return (ns["counts"][("ribbit:frog12", "frog12")] > 0 and frog["present"] > 0
            and 0 < frog["precision"] <= 1 and 0 < frog["recall"] <= 1 and frog["best F1"] >= 0.5)


#: what each notebook leaves behind after a demo run (RIBBIT, no localization)
EXPECT_ON_DEMO = {
    "read_results.ipynb": _per_hour_adds_up,
    "detections_by_recorder_and_day.ipynb": _per_hour_adds_up,
    "top_clips_gallery.ipynb": _gallery,
    "scores_vs_threshold.ipynb": _thresholds,
    "localized_events_map.ipynb": lambda ns: len(ns["events"]) == 0 and ns["localization"] is None,
    "birdnet_species_per_day.ipynb": lambda ns: ns["detector"] is None and ns["species_per_day"].size == 0,
    "calibration_curves.ipynb": lambda ns: ns["calibration"] is None and ns["curves"] == {} and not len(ns["reviews"]),
    "search_by_example.ipynb": lambda ns: ns["store"] is None and ns["model"] is None and not len(ns["found"]),
}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cells_run(notebook, demo_run, monkeypatch):
    namespace = run_cells(notebook, demo_run, monkeypatch)
    assert len(namespace["detections"]) > 0
    assert EXPECT_ON_DEMO[notebook.name](namespace), f"{notebook.name} left unexpected results"


@pytest.mark.s3
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cells_run_on_s3(notebook, demo_run_s3, s3_server, monkeypatch):
    """A run in a bucket: the notebooks read it with the endpoint and credentials from the environment
    (as the compose stack's Jupyter has them)."""
    url, labels = demo_run_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("OPSO_LABELS", str(labels))
    namespace = run_cells(notebook, url, monkeypatch)
    assert len(namespace["detections"]) > 0
    assert EXPECT_ON_DEMO[notebook.name](namespace), f"{notebook.name} left unexpected results"


def test_map_of_localized_events(localization_run, monkeypatch):
    namespace = run_cells(NOTEBOOKS[[p.name for p in NOTEBOOKS].index("localized_events_map.ipynb")],
                          localization_run, monkeypatch)
    events, recorders = namespace["events"], namespace["recorders"]
    assert len(recorders) == 9 and len(events) > 0 and len(namespace["good"]) > 0
    inside = events.x.between(recorders.x.min() - 40, recorders.x.max() + 40)
    assert inside.mean() > 0.8  # calls come from within the grid
    assert namespace["summary"].loc["frog", "events"] == len(events)


@pytest.fixture(scope="module")
def birdnet_demo_run(tmp_path_factory, dask_client):
    """``opso demo --birdnet``'s run, smaller."""
    pytest.importorskip("ai_edge_litert", reason="the BirdNET model is an extra: pip install 'opso[birdnet]'")
    config = prepare_demo(tmp_path_factory.mktemp("demo-birdnet"), files_per_recorder=1, file_duration_s=30,
                          birdnet=True)
    assert run_pipeline(config, dask_client, progress=False).status == "complete_with_failures"  # the bad files
    return config.output.url


def test_species_per_recorder_per_day_of_a_birdnet_run(birdnet_demo_run, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("OPSO_THRESHOLD", "0.02")  # the synthetic archive has few birds: count from the scores
    namespace = run_cells(NOTEBOOKS[[p.name for p in NOTEBOOKS].index("birdnet_species_per_day.ipynb")],
                          birdnet_demo_run, monkeypatch)
    assert namespace["detector"] == "birdnet:birds"
    scores = pd.read_parquet(f"{birdnet_demo_run}/scores/detector=birdnet:birds")
    kept = scores[scores.score >= 0.02]
    assert len(kept) > 0
    want = kept.groupby("recorder")["class"].nunique()  # the demo's files are all of one day
    got = namespace["species_per_day"]
    assert got.shape[1] == 1 and got.iloc[:, 0].to_dict() == want.to_dict()
    assert namespace["per_species"]["windows"].sum() == len(kept)


@pytest.fixture(scope="module")
def reviewed_demo_run(demo_run, tmp_path_factory):
    """A copy of the demo run with reviews from its true labels (two reviewers, one mistake) and a calibration."""
    import shutil

    import pandas as pd

    from pipelines.review.calibrate_run import calibrate_run
    from pipelines.review.queue import review_items
    from pipelines.review.reviews import write_review

    run = tmp_path_factory.mktemp("reviewed") / "results"
    shutil.copytree(demo_run, run)
    truth = pd.read_csv(Path(demo_run).parent / "labels.csv").set_index(["file", "start_time"])
    items = review_items(str(run), classes=["frog12"], per_bin=6)
    for reviewer in ("ana", "ben"):
        for k, item in enumerate(items.to_dict("records")):
            present = bool(truth.loc[(item["file"], item["start_time"]), "frog12"])
            if reviewer == "ben" and k == 0:
                present = not present  # ben gets the first clip wrong
            write_review(str(run), {**{c: item[c] for c in ("clip", "file", "start_time", "end_time", "detector",
                                                            "class", "score", "stratum", "stratum_size",
                                                            "stratum_sampled")},
                                    "label": "present" if present else "absent", "reviewer": reviewer})
    return str(run), calibrate_run(str(run), 0.9)


def test_calibration_curves_of_a_reviewed_run(reviewed_demo_run, monkeypatch):
    run, calibration = reviewed_demo_run
    namespace = run_cells(NOTEBOOKS[[p.name for p in NOTEBOOKS].index("calibration_curves.ipynb")], run, monkeypatch)
    frog = calibration.set_index("class_name").loc["frog12"]
    assert frog.status == "ok"
    curve = namespace["curves"][("ribbit:frog12", "frog12")]
    assert curve["threshold"] == pytest.approx(np.log10(frog.threshold))
    answered = namespace["answers"].loc[("ribbit:frog12", "frog12")]
    assert len(curve["points"]) == frog.n_reviews == answered["present"] + answered["absent"]
    assert namespace["answers"].loc[("ribbit:frog12", "frog12"), "disagreements"] == 1


def test_search_by_example_on_a_birdnet_run(birdnet_demo_run, monkeypatch):
    namespace = run_cells(NOTEBOOKS[[p.name for p in NOTEBOOKS].index("search_by_example.ipynb")],
                          birdnet_demo_run, monkeypatch)
    assert namespace["store"] == "birdnet:birds" and len(namespace["found"]) == 20
    assert namespace["found"]["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-3)  # the example's own window
    model = namespace["model"]  # the demo's labels.csv: frog12 calls (fast_pulser has none)
    assert model.classes == ("frog12",) and model.evaluation["frog12"]["n_present"] >= 2
    assert len(namespace["top"]) == 10


def test_every_notebook_has_a_check():
    assert sorted(EXPECT_ON_DEMO) == sorted(p.name for p in NOTEBOOKS)


def test_there_are_notebooks():
    assert NOTEBOOKS
