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


def test_status_tells_a_clear_in_progress_from_one_cut_short():
    """``clearing`` in run.json: a live run is removing the previous outputs; otherwise the clear stopped
    half-way and the next run finishes it."""
    from pipelines.outputs.results import status_lines

    class Holder:
        released, host, pid, user, lease_s = None, "node1", 42, "me", 120.0

        def __init__(self, stale):
            self.stale = stale

        def stale_reason(self):
            return self.stale

        def driver_gone(self):
            return False

        def describe(self):
            return "host node1, pid 42"

    running = {"status": "running", "clearing": True, "started": "2026-12-07T19:00:00Z"}
    live = "\n".join(status_lines("/runs/a", running, Holder(None)))
    assert "removing the previous run's outputs (--overwrite)" in live and "stopped" not in live
    dead = "\n".join(status_lines("/runs/a", running, Holder("no heartbeat for 300 s")))
    assert "it stopped while removing the previous run's outputs" in dead
    failed = {**running, "status": "failed", "finished": "2026-12-07T19:01:00Z"}
    lines = "\n".join(status_lines("/runs/a", failed, None))
    assert "it stopped while removing" in lines and "stopped 2026-12-07T19:01:00Z" in lines
