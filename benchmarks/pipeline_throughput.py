"""Pipeline throughput per stage, against a plain per-file loop in the same invocation.

Generates a synthetic archive (default 2 audio-hours: 4 recorders x 6 files x 5 min at 16 kHz),
runs `opso`'s pipeline (inventory -> Zarr spectrograms -> RIBBIT, two species) on a LocalCluster,
then the reference: a single-process loop that does what an OpenSoundscape user writes (load each
file, split it into clips, `Spectrogram.from_audio` and `ribbit` per clip). Prints audio-hours
processed per wall-clock hour for each stage and the ratio to the reference.

    python benchmarks/pipeline_throughput.py [--hours 2] [--workers N] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main():
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # no shutdown chatter in the table
    from opso_core import Audio, Spectrogram
    from opso_core.ribbit import ribbit
    from opso_core.testing import make_archive
    from pipelines.cluster import open_cluster
    from pipelines.config import load_config
    from pipelines.graph import run_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0, help="audio hours to generate [2]")
    parser.add_argument("--workers", type=int, default=None, help="local Dask workers [one per core]")
    parser.add_argument("--out", default=None, help="work folder [a temporary folder]")
    args = parser.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="opso-bench-"))
    file_s, n_rec = 300.0, 4
    files_per_rec = max(1, round(args.hours * 3600 / file_s / n_rec))
    t0 = time.perf_counter()
    archive = make_archive(work / "archive", n_recorders=n_rec, files_per_recorder=files_per_rec,
                           file_duration_s=file_s, sample_rate_hz=16000, frog_calls_per_file=4, seed=1)
    hours = len(archive.files) * file_s / 3600
    print(f"generated {len(archive.files)} files, {hours:.2f} audio hours, in {time.perf_counter() - t0:.1f} s")

    species = [
        {"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
         "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02},
        {"name": "fast", "signal_band": [1800, 2200], "pulse_rate_range": [18, 22], "threshold": 0.02},
    ]
    config = load_config({"input": {"url": str(work / "archive")}, "output": {"url": str(work / "run")},
                          "clips": {"duration": 2.0}, "spectrogram": {"sample_rate": 16000, "clips_per_chunk": 64},
                          "ribbit": species,
                          "cluster": {"kind": "local", "n_workers": args.workers, "threads_per_worker": 1}})
    with open_cluster(config.cluster) as session:
        n_workers = session.n_workers()
        summary = run_pipeline(config, session.client, overwrite=True, progress=False, watch=session.check)

    t0 = time.perf_counter()
    for path in archive.files.file:
        audio = Audio.from_file(path)
        clips, _ = audio.split(2.0)
        for clip in clips:
            spec = Spectrogram.from_audio(clip)
            for sp in species:
                ribbit(spec, sp["signal_band"], sp["pulse_rate_range"], clip_duration=2.0, final_clip="full",
                       noise_bands=sp.get("noise_bands"))
    reference_s = time.perf_counter() - t0

    def rate(seconds):
        return hours / (seconds / 3600)

    print(f"\n{summary.n_clips} clips of 2 s; pipeline on {n_workers} local workers x 1 thread; "
          "reference: one process, per-clip loop")
    print(f"{'stage':<34} {'wall s':>8} {'audio-h/h':>11} {'vs ref':>8}")
    rows = [(f"pipeline: {k}", v) for k, v in summary.stage_wall_s.items()]
    rows.append(("pipeline: whole run", summary.wall_s))
    rows.append(("reference: per-file loop (all)", reference_s))
    for name, seconds in rows:
        print(f"{name:<34} {seconds:8.2f} {rate(seconds):11,.0f} {reference_s / seconds:8.2f}")
    print("(stage times overlap: RIBBIT tasks start as soon as their spectrogram chunk is written)")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
