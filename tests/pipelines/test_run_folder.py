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


EMBEDDING_STORE = ["embeddings.zarr/cnn-birds/.zgroup", "embeddings.zarr/cnn-birds/.zmetadata",
                   "embeddings.zarr/cnn-birds/embedding/0.0", "embeddings.zarr/cnn-birds/clip/0"]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_embedding_stores_are_removed_with_their_product_and_by_clear(tmp_path, kind):
    """A store in a folder (``embeddings.zarr/<detector>``) is deleted like a top-level one: a stale store
    would otherwise be reused by the next run and mix two runs' embeddings."""
    from pipelines.outputs.run_folder import OutputName

    others = ["embeddings.zarr/birdnet-all/.zgroup", "embeddings.zarr/birdnet-all/embedding/0.0"]
    foreign = ["embeddings.zarr/mine/.zgroup", "embeddings.zarr/notes.txt"]
    if kind == "local":
        make_folder(tmp_path, EMBEDDING_STORE + others + foreign + ["run.json"])
        location = OutputLocation(str(tmp_path))
    else:
        import fsspec

        location = OutputLocation("memory://run-folder-emb/run")
        fs = fsspec.filesystem("memory")
        for name in EMBEDDING_STORE + others + foreign + ["run.json"]:
            fs.pipe(f"/run-folder-emb/run/{name}", b"x")
    product = [OutputName("embeddings.zarr", "cnn-birds", store=True)]
    assert remove_outputs(location, product, within=NAMES) == 1
    assert sorted(location.find("")) == sorted(others + foreign + ["run.json"])
    assert clear_run_outputs(location, NAMES) == 2  # birdnet-all and run.json; "mine" is no name of opso's
    assert sorted(location.find("")) == sorted(foreign)


def test_a_folder_with_embedding_stores_but_no_run_json_is_refused(tmp_path):
    make_folder(tmp_path, EMBEDDING_STORE)
    with pytest.raises(OutputConflictError, match="holds embeddings.zarr but no run.json"):
        read_previous_run(OutputLocation(str(tmp_path)), NAMES)


def test_a_store_deletion_cut_short_is_finished_by_the_next_one(tmp_path, monkeypatch):
    """The store's own metadata is deleted last: a deletion stopped after its first batch leaves a store
    that is still recognised, so the next clean-up deletes the rest (chunks are never orphaned)."""
    from pipelines.errors import StorageError

    make_folder(tmp_path, ["run.json", "spectrograms.zarr/.zgroup", "spectrograms.zarr/.zmetadata",
                           *(f"spectrograms.zarr/spectrogram/{i}.0.0" for i in range(5))])
    location = OutputLocation(str(tmp_path))
    monkeypatch.setattr(OutputLocation, "DELETE_BATCH", 2)
    real_rm = location.fs.rm
    store_batches = []

    def fail_second_store_batch(paths, **kwargs):
        if any("spectrograms.zarr" in p for p in paths):
            store_batches.append(paths)
            if len(store_batches) == 2:
                raise OSError("the connection dropped")
        return real_rm(paths, **kwargs)

    monkeypatch.setattr(location.fs, "rm", fail_second_store_batch)
    with pytest.raises(StorageError):
        clear_run_outputs(location, NAMES)
    assert len(store_batches) == 2 and not any(p.endswith(".zgroup") for p in store_batches[0])
    assert (tmp_path / "spectrograms.zarr" / ".zgroup").exists()
    monkeypatch.setattr(location.fs, "rm", real_rm)
    clear_run_outputs(location, NAMES)
    assert location.find("") == []


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
