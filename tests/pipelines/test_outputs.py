import numpy as np
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


@pytest.mark.slow
def test_reading_a_table_never_aborts_the_process_at_exit(tmp_path):
    """pyarrow's reader threads can abort a process at exit ("terminate called without an active
    exception", exit code 134) after a read of a Parquet file (apache/arrow#34314): 4 of 60 runs of such a
    script did here. opso's reads decode in the calling thread, so a finished command exits cleanly."""
    import subprocess
    import sys

    pd.DataFrame({"file": [f"/x/rec{i}.wav" for i in range(5000)], "v": np.arange(5000.0)}).to_parquet(
        tmp_path / "t.parquet")
    script = (f"from pipelines.outputs.location import OutputLocation as L; l = L({str(tmp_path)!r}); "
              "print(len(l.read_parquet('t.parquet')), l.read_arrow('t.parquet', columns=['file']).num_rows, "
              "len(l.read_parquet_folder('.')))")
    codes = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).returncode
             for _ in range(20)]
    assert codes == [0] * 20
