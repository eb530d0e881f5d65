"""How the pipeline scales: 1 -> 2 workers, thousands of small files, one 24-hour file.

- ``workers``: the RIBBIT run of ``versus_opensoundscape.py``'s archive (4 x 3 x 10 min, 32 kHz)
  on 1 and on 2 local workers; speed-up of the whole run and of the spectrogram stage.
- ``files``: 5,000 one-minute files (16 kHz, hard links of a few generated files, so the disk holds
  little): inventory and driver time, the scheduler's task rate, the graph's size, and the share
  of the run that is not task work.
- ``long``: one 24-hour file (16 kHz 16-bit WAV, 2.8 GB; at 32 kHz it would pass the 4 GiB that a
  WAV header can describe): peak memory of each worker.

    python benchmarks/pipeline_scaling.py [--only workers,files,long] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPECIES = [{"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
            "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02}]


def _worker_peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(archive: Path, out: Path, *, workers: int, sample_rate_hz: int, extra=None) -> dict:
    """One pipeline run in this process's cluster; the summary, task records and worker peak memory."""
    from pipelines.config import load_config
    from pipelines.driver.cluster import open_cluster
    from pipelines.driver.run import run_pipeline
    from pipelines.outputs.location import OutputLocation

    cfg = {"input": {"url": str(archive)}, "output": {"url": str(out)}, "clips": {"duration": 2.0},
           "spectrogram": {"sample_rate": sample_rate_hz}, "ribbit": SPECIES,
           "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1}}
    cfg.update(extra or {})
    config = load_config(cfg, environ={})
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: --overwrite's deletions are not the run's work
    started = time.perf_counter()
    with open_cluster(config.cluster) as session:
        summary = run_pipeline(config, session.client, progress=False, watch=session.check)
        peaks = session.client.run(_worker_peak_rss_mb)
    wall = time.perf_counter() - started
    loc = OutputLocation(str(out))
    records = [loc.read_json(f"_progress/spectrograms/{n}") for n in loc.list("_progress/spectrograms")]
    return {"summary": summary, "wall_s": wall, "records": records, "peak_rss_mb": peaks}


def workers_table(work: Path):
    # this folder is on sys.path when the script runs
    from versus_opensoundscape import ensure_archive

    archive = ensure_archive(work, recorders=4, files=3, minutes=10.0, sample_rate_hz=32000)
    results = {n: run(archive, work / f"scale-{n}", workers=n, sample_rate_hz=32000) for n in (1, 2)}
    print("\nRIBBIT run, 2 audio hours (32 kHz): 1 vs 2 local workers x 1 thread (cluster start included)")
    print(f"{'workers':>8} {'whole run s':>12} {'spectrogram stage s':>20} {'task CPU s':>11}")
    for n, r in results.items():
        task_s = sum(rec["task_s"] for rec in r["records"])
        print(f"{n:>8} {r['wall_s']:>12.2f} {r['summary'].stage_wall_s['spectrograms']:>20.2f} {task_s:>11.2f}")
    one, two = results[1], results[2]
    print(f"speed-up 1 -> 2 workers: whole run {one['wall_s'] / two['wall_s']:.2f}x, spectrogram stage "
          f"{one['summary'].stage_wall_s['spectrograms'] / two['summary'].stage_wall_s['spectrograms']:.2f}x")


def many_files(work: Path, n_files: int, distinct: int = 10, sample_rate_hz: int = 16000) -> Path:
    root = work / f"many-{n_files}"
    marker = root / "archive.json"
    if marker.exists():
        return root
    import soundfile

    sources = []
    rng = np.random.default_rng(0)
    for i in range(distinct):
        path = work / f"source-{i}.wav"
        soundfile.write(path, (0.01 * rng.standard_normal(60 * sample_rate_hz)).astype(np.float32),
                        sample_rate_hz, subtype="PCM_16")
        sources.append(path)
    for k in range(n_files):
        folder = root / f"rec{k // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(1714543200 + 60 * (k % 100)))
        os.link(sources[k % distinct], folder / f"{stamp}.WAV")
    marker.write_text(json.dumps({"files": n_files}))
    return root


def files_table(work: Path, n_files: int):
    archive = many_files(work, n_files)
    r = run(archive, work / "many-run", workers=2, sample_rate_hz=16000)
    s = r["summary"]
    task_s = sum(rec["task_s"] for rec in r["records"])
    stage = s.stage_wall_s["spectrograms"]
    n_tasks = len(r["records"])
    busy = task_s / 2  # two workers
    print(f"\n{n_files} one-minute files ({s.audio_hours:.1f} audio hours, 16 kHz), 2 local workers x 1 thread")
    print(f"whole run {r['wall_s']:.1f} s: inventory {s.stage_wall_s['inventory']:.1f} s, spectrogram stage "
          f"{stage:.1f} s ({n_tasks} tasks, graph of {n_tasks} tasks), task work {busy:.1f} s per worker")
    overhead = s.wall_s - busy  # inventory, driver (plan, store metadata, submission, summary) and scheduling
    print(f"the scheduler ran {n_tasks / stage:.1f} tasks/s; inventory + driver + scheduling: {overhead:.1f} s = "
          f"{overhead / r['wall_s']:.1%} of the run (target <= 10%); cluster start and shut-down: "
          f"{r['wall_s'] - s.wall_s:.1f} s ({(r['wall_s'] - s.wall_s) / r['wall_s']:.1%})")


def long_file(work: Path, hours: float = 24.0, sample_rate_hz: int = 16000) -> Path:
    root = work / f"long-{sample_rate_hz}"
    path = root / "rec00" / "20240501_000000.WAV"
    if path.exists():
        return root
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    block = (0.01 * rng.standard_normal(600 * sample_rate_hz)).astype(np.float32)
    with soundfile.SoundFile(path, "w", samplerate=sample_rate_hz, channels=1, subtype="PCM_16") as f:
        for _ in range(int(hours * 6)):
            f.write(block)
    return root


def long_table(work: Path):
    archive = long_file(work)
    r = run(archive, work / "long-run", workers=2, sample_rate_hz=16000)
    s = r["summary"]
    print(f"\none {s.audio_hours:.0f}-hour file (16 kHz): {r['wall_s']:.0f} s, "
          f"{s.audio_hours / r['wall_s'] * 3600:,.0f} audio-hours per hour on 2 workers")
    for worker, mb in sorted(r["peak_rss_mb"].items()):
        print(f"  worker {worker}: peak resident memory {mb:,.0f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / ".bench/work"))
    parser.add_argument("--only", default="workers,files,long")
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    only = set(args.only.split(","))
    if "workers" in only:
        workers_table(work)
    if "files" in only:
        files_table(work, args.files)
    if "long" in only:
        long_table(work)


if __name__ == "__main__":
    main()
