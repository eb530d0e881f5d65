"""Checks that run before the cluster starts and before anything is deleted."""

import pytest

from opso_core.testing import make_archive
from pipelines.config import load_config
from pipelines.driver.preflight import check_locations, check_run
from pipelines.errors import ConfigError, OutputConflictError, StorageError


def config(inp, out, **sections):
    return load_config({"input": {"url": str(inp)}, "output": {"url": str(out)}, **sections}, environ={})


@pytest.mark.parametrize(("inp", "out", "relation"), [
    ("/data/aru", "/data/aru", "is"),
    ("/data/aru", "/data/aru/results", "is inside"),
    ("/data/aru/", "/data", "contains"),
    ("s3://bucket/aru", "s3://bucket/aru/runs/r1", "is inside"),
    ("s3://bucket/aru", "s3a://bucket/aru", "is"),
])
def test_nested_or_equal_locations_are_refused(inp, out, relation):
    with pytest.raises(ConfigError, match=f"output.url .* {relation} input.url"):
        check_locations(config(inp, out))


@pytest.mark.parametrize(("inp", "out"), [
    ("/data/aru", "/data/aru-results"),
    ("/data/aru", "s3://bucket/data/aru"),
    ("s3://bucket/aru", "s3://bucket/runs"),
])
def test_separate_locations_pass(inp, out):
    check_locations(config(inp, out))


def test_symlinked_output_into_input_is_refused(tmp_path):
    (tmp_path / "archive").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "archive")
    with pytest.raises(ConfigError, match="is inside"):
        check_locations(config(tmp_path / "archive", tmp_path / "link" / "results"))


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    make_archive(root, n_recorders=1, files_per_recorder=2, file_duration_s=4, sample_rate_hz=8000, seed=1)
    return root


def test_check_run_lists_the_input(small_archive, tmp_path):
    result = check_run(config(small_archive, tmp_path / "out"), check_cluster=False)
    assert len(result.files) == 2 and result.start == "new"
    assert (tmp_path / "out" / "_lock").is_dir()  # held until released
    result.release()
    assert not (tmp_path / "out").exists()  # the checks leave nothing behind


@pytest.mark.parametrize(("input_url", "pattern", "needle"), [
    ("missing", "**/*.wav", "input location does not exist"),
    ("empty", "**/*.wav", "no files match input.pattern"),
    ("archive", "**/*.flac", "no files match input.pattern"),
])
def test_input_problems(small_archive, tmp_path, input_url, pattern, needle):
    (tmp_path / "empty").mkdir()
    inp = small_archive if input_url == "archive" else tmp_path / input_url
    with pytest.raises(StorageError, match=needle):
        check_run(config(inp, tmp_path / "out", input={"url": str(inp), "pattern": pattern}), check_cluster=False)


def test_output_not_writable(small_archive, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(StorageError, match="cannot (list|write)"):
        check_run(config(small_archive, tmp_path / "a_file" / "out"), check_cluster=False)


def test_previous_run_of_another_configuration(small_archive, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"status": "complete", "fingerprint": "0123"}')
    (out / "_progress" / "ribbit").mkdir(parents=True)
    (out / "_progress" / "ribbit" / "000000000-000000064.json").write_text("{}")
    cfg = config(small_archive, out)
    with pytest.raises(OutputConflictError, match="--overwrite"):
        check_run(cfg, check_cluster=False)
    result = check_run(cfg, check_cluster=False, overwrite=True)
    result.release()
    assert result.start == "overwrite"
    assert (out / "run.json").exists()  # the checks delete nothing


def test_missing_cnn_model_is_found_before_work(small_archive, tmp_path):
    cfg = config(small_archive, tmp_path / "out",
                 cnn=[{"name": "owl", "model": str(tmp_path / "owl.model"), "threshold": 0.5}])
    with pytest.raises(ConfigError, match="cnn model file not found"):
        check_run(cfg, check_cluster=False)
    assert not (tmp_path / "out").exists()  # the lock taken before the model check leaves no trace


def test_an_unreadable_recorders_table_is_a_config_error(monkeypatch, tmp_path):
    """s3fs raises KeyError (and botocore its own types) for some failed reads: one clear error, no traceback."""
    import contextlib

    import opso_core.storage
    from pipelines.stages.localization import read_recorders_table

    @contextlib.contextmanager
    def failing_open(url, storage_options=None):
        raise KeyError("Contents")
        yield

    monkeypatch.setattr(opso_core.storage, "open_binary", failing_open)
    with pytest.raises(ConfigError, match=r"input.recorders_table: cannot read s3://b/r.csv: KeyError: 'Contents'"):
        read_recorders_table("s3://b/r.csv", {})
