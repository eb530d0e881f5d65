"""What a changed setting costs on a run that has finished: a new threshold, an added species.

The 2-hour archive of ``versus_opensoundscape.py`` (4 recorders x 3 files x 10 min, 32 kHz), RIBBIT
with one species and the compact store, 2 local workers x 1 thread. Each row is a rerun in the same
output folder with one change; its time is the whole ``run_pipeline`` call (the cluster is started
once, before, and shared), against the full run in the same invocation:

- ``full run``: the first run in an empty folder;
- ``threshold``: ``ribbit[frog12].threshold`` 0.02 -> 0.01 (detections re-derived from the stored scores);
- ``same configuration``: nothing to do;
- ``species added``: a second species (its scores need the spectrograms again: read and computed,
  the store untouched).

    python benchmarks/rerun_after_a_change.py [--work DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FROG = {"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
        "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02}
TOAD = {"name": "toad", "signal_band": [900, 1300], "pulse_rate_range": [4, 8], "noise_bands": [[300, 700]],
        "threshold": 0.02}


def _config(archive: Path, out: Path, species):
    from pipelines.config import load_config

    return load_config({"input": {"url": str(archive)}, "output": {"url": str(out)}, "clips": {"duration": 2.0},
                        "spectrogram": {"sample_rate": 32000}, "ribbit": species,
                        "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1}}, environ={})


def _files_written_since(out: Path, t0: float) -> int:
    return sum(1 for p in out.rglob("*") if p.is_file() and p.stat().st_mtime >= t0 and "_lock" not in p.parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / ".bench"), help="where the archive and runs go")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the whole sequence (median reported)")
    args = parser.parse_args()
    work = Path(args.work)
    # this folder is on sys.path when the script runs
    from versus_opensoundscape import ensure_archive

    from pipelines.driver.cluster import open_cluster
    from pipelines.driver.run import run_pipeline

    archive = ensure_archive(work, recorders=4, files=3, minutes=10.0, sample_rate_hz=32000)
    steps = [("full run", [FROG]), ("threshold", [{**FROG, "threshold": 0.01}]),
             ("same configuration", [{**FROG, "threshold": 0.01}]),
             ("species added", [{**FROG, "threshold": 0.01}, TOAD])]
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    written: dict[str, int] = {}
    summaries: dict = {}
    with open_cluster(_config(archive, work / "rerun-after-a-change", [FROG]).cluster) as session:
        for repeat in range(args.repeat):
            out = work / f"rerun-after-a-change-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            for name, species in steps:
                t0 = time.time()
                started = time.perf_counter()
                summaries[name] = run_pipeline(_config(archive, out, species), session.client, progress=False,
                                               watch=session.check)
                times[name].append(time.perf_counter() - started)
                written[name] = _files_written_since(out, t0)
            shutil.rmtree(out, ignore_errors=True)
    full_s = statistics.median(times["full run"])
    first = summaries["full run"]
    print(f"\nRerun after a change: {first.audio_hours:.1f} audio hours at 32 kHz, {first.n_clips} clips, "
          f"2 local workers x 1 thread (cluster started once); median of {args.repeat} (min-max)")
    print(f"{'rerun':<20} {'wall s':>16} {'vs full run':>12} {'files written':>14}  detections")
    for name, _ in steps:
        t = times[name]
        print(f"{name:<20} {statistics.median(t):>6.2f} ({min(t):.2f}-{max(t):.2f}) "
              f"{statistics.median(t) / full_s:>11.1%} {written[name]:>14}  "
              f"{', '.join(f'{k}: {v}' for k, v in summaries[name].detections.items())}")


if __name__ == "__main__":
    main()
