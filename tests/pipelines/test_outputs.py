import pandas as pd
import pytest

from pipelines.outputs.location import OutputLocation


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_atomic_files_and_listing(tmp_path, kind):
    loc = OutputLocation(str(tmp_path / "run") if kind == "local" else "memory://outputs-test/run")
    loc.write_json("run.json", {"a": 1})
    assert loc.read_json("run.json") == {"a": 1}
    df = pd.DataFrame({"x": [1, 2]})
    loc.write_parquet("scores/detector=ribbit:a/part-1.parquet", df)
    loc.write_parquet("scores/detector=ribbit:b/part-1.parquet", df.assign(x=[3, 4]))
    back = loc.read_parquet_folder("scores")
    assert sorted(back.x) == [1, 2, 3, 4] and set(back.detector) == {"ribbit:a", "ribbit:b"}
    assert loc.list("scores") == ["detector=ribbit:a", "detector=ribbit:b"]
    assert loc.list("missing") == []
    if kind == "local":
        leftovers = [p for p in (tmp_path / "run").rglob("*") if ".tmp-" in p.name]
        assert leftovers == []
    assert loc.find("scores") == ["scores/detector=ribbit:a/part-1.parquet", "scores/detector=ribbit:b/part-1.parquet"]


def test_pickles_without_filesystem_state(tmp_path):
    import pickle

    loc = OutputLocation(str(tmp_path), {"anon": True})
    clone = pickle.loads(pickle.dumps(loc))
    assert clone.url == loc.url and clone.storage_options == {"anon": True}
