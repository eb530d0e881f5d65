"""How the pipeline scales: 1 -> 2 workers, thousands of small files, one 24-hour file, a million audio-hours.

- ``workers``: the RIBBIT run of ``versus_opensoundscape.py``'s archive (4 x 3 x 10 min, 32 kHz)
  on 1 and on 2 local workers; speed-up of the whole run and of the spectrogram stage.
- ``files``: 5,000 one-minute files (16 kHz, hard links of a few generated files, so the disk holds
  little): inventory and driver time, the scheduler's task rate, the graph's size, and the share
  of the run that is not task work.
- ``long``: one 24-hour file (16 kHz 16-bit WAV, 2.8 GB; at 32 kHz it would pass the 4 GiB that a
  WAV header can describe): peak memory of each worker.
- ``interrupt``: ``opso run`` (RIBBIT, 2 local workers) on an archive of 10,000 one-hour FLAC files
  (hard links of one generated file, so the disk holds one hour): the driver's peak resident memory
  after the inventory, the planning and ``--interrupt-after-s`` seconds of tasks, then the seconds from
  a Ctrl-C (SIGINT to the process group, as a terminal sends it) to the end of the process.
- ``plan``: the driver's planning path over a generated inventory of 10,000 / 100,000 / 1,000,000
  one-hour files (a fake reader: no audio, the inventory as the workers would return it; RIBBIT, 2 s
  clips at 32 kHz): planning time, the driver process's peak memory, tasks, and the pickled size of a
  task's description, each size in a fresh process. With ``--before REV`` the same sizes (up to
  ``--before-max-files``) are planned by the code of commit REV (a git worktree in the work folder) as
  its driver did (the whole clip table, and each task's rows of it), for the before -> after table.

    python benchmarks/pipeline_scaling.py [--only workers,files,long,interrupt,plan] [--work DIR]
                                          [--files 5000] [--flac-files 10000] [--interrupt-after-s 30]
                                          [--plan-sizes 10000,100000,1000000] [--before REV]
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
          f"{stage:.1f} s ({n_tasks} tasks), task work {busy:.1f} s per worker")
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


def flac_archive(work: Path, n_files: int, sample_rate_hz: int = 16000) -> Path:
    root = work / f"flac-{n_files}"
    marker = root / "archive.json"
    if marker.exists():
        return root
    import soundfile

    source = work / "one-hour.flac"
    if not source.exists():
        rng = np.random.default_rng(2)
        with soundfile.SoundFile(source, "w", samplerate=sample_rate_hz, channels=1, format="FLAC",
                                 subtype="PCM_16") as f:
            for _ in range(60):
                f.write((0.001 * rng.standard_normal(60 * sample_rate_hz)).astype(np.float32))
    for k in range(n_files):
        folder = root / f"site{k // 1000:02d}" / f"rec{k // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(1714543200 + 3600 * (k % 100)))
        os.link(source, folder / f"{stamp}.flac")
    marker.write_text(json.dumps({"files": n_files}))
    return root


def _peak_kb(pid: int) -> int:
    """Peak resident memory (kB) of a process (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def interrupt_table(work: Path, n_files: int, interrupt_after_s: float):
    import signal
    import subprocess
    import sys

    import yaml

    archive = flac_archive(work, n_files)
    out = work / "flac-run"
    shutil.rmtree(out, ignore_errors=True)
    config = work / "flac-run.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"url": str(archive), "pattern": "**/*.flac"}, "output": {"url": str(out)},
        "clips": {"duration": 2.0}, "spectrogram": {"sample_rate": 16000, "store": "none"}, "ribbit": SPECIES,
        "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1}}))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(config), "--no-progress"],
                            cwd=str(REPO), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines, tasks_at = [], None
    import threading

    def read():
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _peak_kb(proc.pid))
        if tasks_at is None and any("tasks to run" in line for line in lines):
            tasks_at = time.monotonic()
        if tasks_at is not None and time.monotonic() - tasks_at >= interrupt_after_s:
            break
        time.sleep(0.2)
    markers = len(list((out / "_progress" / "spectrograms").glob("*.json")))
    peak = max(peak, _peak_kb(proc.pid))
    signalled = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait()
    stopped_s = time.monotonic() - signalled
    reader.join(5)
    info = json.loads((out / "run.json").read_text())
    print(f"\nopso run on {n_files:,} one-hour FLAC files ({n_files:,} audio hours, 16 kHz; RIBBIT, store none), "
          "2 local workers x 1 thread")
    print(f"tasks announced {tasks_at - started if tasks_at else float('nan'):.1f} s after the start; "
          f"{markers} tasks finished in the next {interrupt_after_s:g} s")
    print(f"driver peak resident memory: {peak / 1024:,.0f} MB (target <= 1,000 MB)")
    print(f"Ctrl-C -> process ended: {stopped_s:.1f} s (target <= 10 s); exit code {proc.returncode}, run.json "
          f"status {info['status']!r}")
    print("".join(lines[-3:]).rstrip())


def generated_inventory(n_files: int, sample_rate_hz: int = 32000):
    """The inventory the workers would return for ``n_files`` one-hour FLAC files on object storage:
    100 consecutive hours per recorder, 10 recorders per site."""
    import pandas as pd

    k = np.arange(n_files)
    recorders = np.array([f"site{r // 10:04d}-rec{r % 10}" for r in range(-(-n_files // 100))], dtype=object)
    recorder = recorders[k // 100]
    start = pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(k % 100, unit="h")
    files = [f"s3://nwfp-archive/{r.split('-')[0]}/{r}/{t:%Y%m%d_%H%M%S}.flac" for r, t in zip(recorder, start,
                                                                                                strict=True)]
    frames = 3600 * sample_rate_hz
    return pd.DataFrame({
        "file": files, "recorder": recorder, "start_time_utc": start, "start_time_source": "file_name",
        "sample_rate": pd.array([sample_rate_hz] * n_files, dtype="Int64"), "channels": pd.array([1] * n_files,
                                                                                               dtype="Int64"),
        "frames": pd.array([frames] * n_files, dtype="Int64"), "duration_s": 3600.0,
        "size_bytes": pd.array([frames] * n_files, dtype="Int64"), "n_clips": pd.array([None] * n_files, dtype="Int64"),
        "status": "ok", "error": None, "warning": None})


def _plan_config(work: Path):
    from pipelines.config import load_config

    return load_config({"input": {"url": str(work / "no-archive")}, "output": {"url": str(work / "plan-out")},
                        "clips": {"duration": 2.0}, "spectrogram": {"sample_rate": 32000}, "ribbit": SPECIES},
                       environ={})


def plan_child(n_files: int, work: Path, before: bool) -> dict:
    """Plan a run over a generated inventory in this (fresh) process; before: as the old driver did."""
    import pickle

    inventory = generated_inventory(n_files)
    config = _plan_config(work)
    baseline_mb = _worker_peak_rss_mb()
    started = time.perf_counter()
    if not before:
        from pipelines.driver.plan_only import plan_summary

        plan = plan_summary(config, inventory)
        stage = plan.stages[0]
        return {"plan_s": time.perf_counter() - started, "peak_mb": _worker_peak_rss_mb(), "baseline_mb": baseline_mb,
                "clips": stage.n_items, "tasks": stage.n_tasks, "task_bytes": stage.task_bytes}
    from pipelines.driver.clip_plan import plan_clips
    from pipelines.driver.inventory import add_clip_counts_and_warnings
    from pipelines.driver.tasks import task_ranges

    plan = plan_clips(inventory, clip_duration=2.0)
    add_clip_counts_and_warnings(inventory, plan.groupby("file", sort=False).size())
    ranges = task_ranges(len(plan), round(config.spectrogram.task_audio_s / 2.0), align=config.spectrogram.clips_per_chunk)
    rows = [plan.iloc[r.start : r.stop] for r in ranges]  # what submit_tasks sent, one slice per task
    task_bytes = max(len(pickle.dumps(rows[i])) for i in (0, len(rows) // 2, len(rows) - 1))
    return {"plan_s": time.perf_counter() - started, "peak_mb": _worker_peak_rss_mb(), "baseline_mb": baseline_mb,
            "clips": len(plan), "tasks": len(ranges), "task_bytes": task_bytes}


def _checkout(work: Path, rev: str) -> Path:
    import subprocess

    where = work / f"code-{rev}"
    if not where.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(where), rev], check=True,
                       capture_output=True)
    return where


def plan_table(work: Path, sizes: list[int], before: str | None, before_max_files: int):
    import subprocess
    import sys

    def child(n, code: Path, old: bool):
        env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, str(code / "benchmarks/pipeline_scaling.py") if not old else str(Path(__file__)),
               "--plan-child", str(n), "--work", str(work)] + (["--old"] if old else [])
        out = subprocess.run(cmd, env=env, cwd=str(code), capture_output=True, text=True)
        if out.returncode:
            return {"error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
        return json.loads(out.stdout.strip().splitlines()[-1])

    old_code = _checkout(work, before) if before else None
    print("\nplanning a RIBBIT run (2 s clips, 32 kHz) over N one-hour files: driver process, fresh per size")
    print(f"{'files = audio-hours':>20} {'code':>7} {'clips':>15} {'tasks':>11} {'plan s':>8} {'peak MB':>9} "
          f"{'bytes per task':>15}")
    for n in sizes:
        rows = [("after", child(n, REPO, False))]
        if old_code is not None:
            rows.insert(0, ("before", child(n, old_code, True) if n <= before_max_files else
                            {"error": f"not run (over --before-max-files {before_max_files:,})"}))
        for label, r in rows:
            if "error" in r:
                print(f"{n:>20,} {label:>7}   {r['error']}")
                continue
            print(f"{n:>20,} {label:>7} {r['clips']:>15,} {r['tasks']:>11,} {r['plan_s']:>8.1f} {r['peak_mb']:>9,.0f} "
                  f"{r['task_bytes']:>15,}")
    print("(peak MB: the whole driver process, the generated inventory and the imports included; "
          "the targets for 1,000,000 audio-hours: <= 2,000 MB and <= 60 s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / ".bench/work"))
    parser.add_argument("--only", default="workers,files,long,interrupt,plan")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--plan-sizes", default="10000,100000,1000000")
    parser.add_argument("--flac-files", type=int, default=10000)
    parser.add_argument("--interrupt-after-s", type=float, default=30.0)
    parser.add_argument("--before", default=None, help="a commit to plan the same sizes with (git worktree)")
    parser.add_argument("--before-max-files", type=int, default=10000)
    parser.add_argument("--plan-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.plan_child is not None:
        print(json.dumps(plan_child(args.plan_child, work, args.old)))
        return
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    only = set(args.only.split(","))
    if "workers" in only:
        workers_table(work)
    if "files" in only:
        files_table(work, args.files)
    if "long" in only:
        long_table(work)
    if "interrupt" in only:
        interrupt_table(work, args.flac_files, args.interrupt_after_s)
    if "plan" in only:
        plan_table(work, [int(n) for n in args.plan_sizes.split(",")], args.before, args.before_max_files)


if __name__ == "__main__":
    main()
