"""The stage registry: the driver names no stage kind, a new kind is one module and one registry line,
and every registered kind keeps the contract (tasks pickle, deterministic ranges, markers after
outputs, zero-row tables, names ``--overwrite`` may delete)."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch

import pipelines
from pipelines import stages as registry
from pipelines.config import load_config
from pipelines.driver import run as driver_run
from pipelines.driver.run import run_pipeline
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import OutputName, is_run_output

DRIVER = Path(pipelines.__file__).parent / "driver"


def _module_beside(name: str):
    """A module of this folder (the tests import in importlib mode: no folder is on sys.path)."""
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its task pickles by reference
        spec.loader.exec_module(module)
    return sys.modules[name]


raven_stage = _module_beside("raven_stage")


def test_no_driver_module_imports_a_stage_module():
    allowed = {"pipelines.stages"}
    for path in sorted(DRIVER.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                         if node.module == "pipelines.stages" else [])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("pipelines.stages") and name not in allowed and name not in (
                        "pipelines.stages.enabled_kinds", "pipelines.stages.output_names"):
                    pytest.fail(f"{path.name} imports {name}: the driver must reach stage kinds through the registry")


def test_every_kind_is_registered_once_with_a_name_and_phase():
    names = [kind.name for kind in registry.STAGE_KINDS]
    assert names == ["spectrograms", "cnn", "birdnet", "linear", "localization"]
    assert [kind.phase for kind in registry.STAGE_KINDS] == [1, 1, 1, 2, 2]


def ribbit_config(root, out):
    return load_config({"input": {"url": str(root)}, "output": {"url": str(out)}, "clips": {"duration": 0.5},
                        "spectrogram": {"sample_rate": 16000, "window_samples": 256, "clips_per_chunk": 16,
                                        "task_audio_s": 8.0},
                        "ribbit": [{"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
                                    "threshold": 0.005}]}, environ={})


def test_a_new_phase_two_kind_is_one_module_and_one_line(archive, dask_client, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "STAGE_KINDS", [*registry.STAGE_KINDS, raven_stage.KIND])  # the one line
    out = tmp_path / "run"
    summary = run_pipeline(ribbit_config(archive.root, out), dask_client, progress=False)
    detections = pd.read_parquet(out / "detections")
    assert len(detections) > 50  # more than one raven task
    parts = sorted((out / "raven").iterdir())
    assert len(parts) == -(-len(detections) // 50)
    rows = pd.concat([pd.read_csv(p, sep="\t") for p in parts])
    assert len(rows) == len(detections) == summary.detections["raven:selections"]
    assert rows["Selection"].tolist() == list(range(1, len(detections) + 1))
    assert sorted(os.listdir(out / "_progress" / "raven")) == [p.name.replace("part-", "").replace(".txt", ".json")
                                                                 for p in parts]

    # --overwrite deletes its names (a stale part too), and only those
    (out / "raven" / "part-999999999-999999999.txt").write_text("stale")
    (out / "raven" / "notes.txt").write_text("a user's file")
    run_pipeline(ribbit_config(archive.root, out), dask_client, progress=False, overwrite=True)
    assert not (out / "raven" / "part-999999999-999999999.txt").exists()
    assert (out / "raven" / "notes.txt").read_text() == "a user's file"
    assert len(list((out / "raven").glob("part-*.txt"))) == len(parts)


@pytest.fixture(scope="module")
def every_kind_config(tmp_path_factory, archive):
    from opso_core.ml import cnn_architectures as ca
    from opso_core.ml.cnn import CNN

    root = tmp_path_factory.mktemp("every-kind")
    torch.manual_seed(0)
    model = CNN(ca.resnet18(2, weights=None), ["frog", "other"], 1.0, sample_shape=(32, 32, 3))
    model.preprocessor.pipeline.bandpass.set(min_f=500, max_f=7000)
    model.save(root / "toy.model")
    table = root / "recorders.csv"
    archive.recorders[["recorder", "x", "y"]].to_csv(table, index=False)

    def make(input_root, out):
        return load_config({
            "input": {"url": str(input_root), "recorders_table": str(table)}, "output": {"url": str(out)},
            "clips": {"duration": 1.0},
            "spectrogram": {"sample_rate": 16000, "window_samples": 256, "clips_per_chunk": 16, "task_audio_s": 16.0},
            "ribbit": [{"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
                        "threshold": 0.002}],
            "cnn": [{"name": "toy", "model": str(root / "toy.model"), "activation": "sigmoid", "threshold": 0.5,
                     "batch_size": 8, "clips_per_task": 16}],
            "localization": {"detector": "ribbit:frog12", "class": "frog12", "max_receiver_dist": 1000.0,
                             "events_per_task": 4, "residual_threshold_m": None}}, environ={})

    return make


def test_every_registered_kind_keeps_the_contract(archive, dask_client, tmp_path, every_kind_config, monkeypatch):
    planned = []
    submit = driver_run.run_tasks

    def recording(client, location, stages, *args, **kwargs):
        planned.append(list(stages))
        return submit(client, location, stages, *args, **kwargs)

    monkeypatch.setattr(driver_run, "run_tasks", recording)
    out = tmp_path / "run"
    config = every_kind_config(archive.root, out)
    run_pipeline(config, dask_client, progress=False)
    first = [s for phase in planned for s in phase]
    assert {s.name for s in first} == {"spectrograms", "cnn:toy", "localization"}
    assert all(len(s.ranges) > 1 for s in first), [(s.name, len(s.ranges)) for s in first]

    for stage in first:  # tasks pickle (they go to other processes) and know their products
        assert repr(pickle.loads(pickle.dumps(stage.task))) == repr(stage.task)
        assert stage.products
    names = registry.output_names()
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "_lock" not in p.parts]
    outside = [f for f in files if not is_run_output(f, names) and not any(
        n.store and n.matches(f) for n in names)]
    assert not outside, f"files no registered kind declares (--overwrite would leave them): {outside}"

    # each marker is written after its outputs (the stage's products' files that carry the range's name)
    info = OutputLocation(str(out)).read_json("run.json")
    for stage in first:
        own = [OutputName(*n) for p in info["outputs"].values() if p["stage"] == stage.name for n in p["outputs"]]
        assert own, stage.name
        for r in stage.ranges:
            marker = out / stage.marker(r)
            outputs = [out / f for f in files if r.name in f and any(n.matches(f) for n in own)]
            assert outputs or stage.name == "localization", (stage.name, r.name)
            assert all(o.stat().st_mtime_ns <= marker.stat().st_mtime_ns for o in outputs), (stage.name, r.name)

    # ranges are deterministic: the same configuration plans the same ranges (and runs nothing)
    planned.clear()
    run_pipeline(config, dask_client, progress=False)
    again = [s for phase in planned for s in phase]
    assert [(s.name, s.ranges) for s in again] == [(s.name, s.ranges) for s in first]

    # zero-row tables: an archive where nothing can be read still leaves every table readable
    broken = tmp_path / "broken-archive" / "rec00"
    broken.mkdir(parents=True)
    (broken / "20240501_060000.WAV").write_bytes(b"")
    (broken / "20240501_060100.WAV").write_text("not audio")
    broken = broken.parent
    empty_out = tmp_path / "empty"
    summary = run_pipeline(every_kind_config(broken, empty_out), dask_client, progress=False)
    assert summary.n_clips == 0
    assert len(pd.read_parquet(empty_out / "detections")) == 0
    for detector, columns in (("ribbit:frog12", ["frog12"]), ("cnn:toy", ["frog", "other"])):
        table = pd.read_parquet(empty_out / "scores" / f"detector={detector}")
        assert len(table) == 0 and list(table.columns)[-len(columns):] == columns
    assert len(pd.read_parquet(empty_out / "localizations")) == 0
