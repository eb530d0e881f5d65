"""--overwrite and replacing a run delete only what a run writes."""

import pytest

from pipelines.errors import OutputConflictError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.run_folder import (
    clear_run_outputs,
    is_run_output,
    read_previous_run,
    remove_outputs,
    remove_temporaries,
)
from pipelines.stages import output_names

NAMES = output_names()

RUN_OUTPUTS = ["run.json", "inventory.parquet", "failures.parquet",
               "scores/detector=ribbit:frog/part-000000000-000000064.parquet",
               "scores/detector=cnn:owl/part-000000000-000000064.parquet",
               "detections/part-ribbit-frog-000000000-000000064.parquet",
               "_progress/spectrograms/000000000-000000064.json",
               "_progress/ribbit/000000000-000000064.json",
               "detections/part-none-000000000-000000000.parquet",
               "localizations/part-000000000-000000064.parquet",
               "inventory.parquet.tmp-0123456789abcdef0123456789abcdef",
               "scores/detector=ribbit:frog/.part-000000064-000000128.parquet.tmp-0123456789abcdef0123456789abcdef"]
FOREIGN = ["notes.txt", "scores/README.md", "detections/mine.csv", "models/owl.model", "rec00/20240501_060000.WAV",
           "spectrograms.zarr.bak/x", "my.zarr/.zgroup", "_progress/note.txt", "detections/part-mine.parquet",
           "scores/detector=ribbit:frog/notes.parquet", "localizations/part-final.parquet"]


def make_folder(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_patterns():
    for name in RUN_OUTPUTS:
        assert is_run_output(name, NAMES), name
    for name in FOREIGN:
        assert not is_run_output(name, NAMES), name


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_clear_removes_run_outputs_only(tmp_path, kind):
    if kind == "local":
        root = tmp_path / "run"
        make_folder(root, RUN_OUTPUTS + FOREIGN + ["spectrograms.zarr/.zgroup", "spectrograms.zarr/spectrogram/0.0.0"])
        location = OutputLocation(str(root))
    else:
        import fsspec

        location = OutputLocation("memory://run-folder-test/run")
        fs = fsspec.filesystem("memory")
        for name in RUN_OUTPUTS + FOREIGN + ["spectrograms.zarr/.zgroup", "spectrograms.zarr/spectrogram/0.0.0"]:
            fs.pipe(f"/run-folder-test/run/{name}", b"x")
    n = clear_run_outputs(location, NAMES)
    assert n == len(RUN_OUTPUTS) + 1
    left = location.find("")
    assert sorted(left) == sorted(FOREIGN)
    if kind == "local":  # folders emptied by the clean-up go too; the user's stay
        assert not (root / "_progress" / "ribbit").exists() and not (root / "scores" / "detector=cnn:owl").exists()
        assert (root / "scores" / "README.md").exists()


def test_a_folder_with_outputs_but_no_run_json_is_refused(tmp_path):
    make_folder(tmp_path, ["scores/x.parquet", "notes.txt"])
    with pytest.raises(OutputConflictError, match="holds scores but no run.json"):
        read_previous_run(OutputLocation(str(tmp_path)), NAMES)


def test_empty_or_foreign_folder_is_new(tmp_path):
    make_folder(tmp_path, ["notes.txt"])
    location = OutputLocation(str(tmp_path))
    assert read_previous_run(location, NAMES) is None


def test_remove_outputs_removes_one_products_names_only(tmp_path):
    from pipelines.outputs.run_folder import OutputName

    make_folder(tmp_path, RUN_OUTPUTS + FOREIGN + ["detections/part-ribbit-toad-000000000-000000064.parquet"])
    names = [OutputName("detections", r"part-ribbit-frog-\d{9}-\d{9}\.parquet"),
             OutputName("scores/detector=ribbit:frog", r"part-\d{9}-\d{9}\.parquet")]
    assert remove_outputs(OutputLocation(str(tmp_path)), names) == 3  # with the scores' hidden temporary
    assert not (tmp_path / "detections/part-ribbit-frog-000000000-000000064.parquet").exists()
    assert (tmp_path / "detections/part-ribbit-toad-000000000-000000064.parquet").exists()
    assert (tmp_path / "scores/detector=ribbit:frog/notes.parquet").exists()
    assert (tmp_path / "scores/detector=cnn:owl/part-000000000-000000064.parquet").exists()


def test_temporaries_of_interrupted_writes_are_removed_and_never_read(tmp_path):
    """A process killed between a write and its rename leaves a temporary; pandas never reads the hidden
    kind, and a run removes both kinds (and only those) before it writes."""
    import pandas as pd

    location = OutputLocation(str(tmp_path))
    table = pd.DataFrame({"x": [1.0, 2.0]})
    location.write_parquet("detections/part-ribbit-a-000000000-000000004.parquet", table)
    hidden = tmp_path / "detections" / ".part-ribbit-a-000000004-000000008.parquet.tmp-0123456789abcdef0123456789abcdef"
    hidden.write_bytes(b"")  # a disk-full write: 0 bytes
    store_chunk = tmp_path / "spectrograms.zarr" / "spectrogram" / ".0.0.0.tmp-0123456789abcdef0123456789abcdef"
    make_folder(tmp_path, ["spectrograms.zarr/.zgroup", "spectrograms.zarr/spectrogram/0.0.0",
                           "_progress/spectrograms/000000000-000000004.json"])
    store_chunk.write_bytes(b"partial")
    old_style = tmp_path / "_progress" / "spectrograms" / "000000004-000000008.json.tmp-0123456789abcdef0123456789abcdef"
    old_style.write_text("{")
    mine = tmp_path / "notes.txt.tmp-0123456789abcdef0123456789abcdef"  # not the temporary of a run file
    mine.write_text("a user's file")
    assert len(pd.read_parquet(tmp_path / "detections")) == 2  # the hidden temporary is skipped
    assert remove_temporaries(location, NAMES) == 3
    assert not hidden.exists() and not store_chunk.exists() and not old_style.exists() and mine.exists()
    assert remove_temporaries(location, NAMES) == 0


def test_a_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    import builtins
    import errno

    from pipelines.errors import StorageError

    location = OutputLocation(str(tmp_path))
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda path, mode="r", *a, **k: Full(real_open(path, mode, *a, **k))
                        if ".tmp-" in str(path) else real_open(path, mode, *a, **k))
    with pytest.raises(StorageError, match="No space left on device"):
        location.write_bytes("detections/part-a.parquet", b"x" * 100)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "detections").iterdir()] == []
