"""opso against OpenSoundscape 0.13.2 on the same machine, in one invocation.

Each workload runs in a fresh process of its own environment: OpenSoundscape in its own virtual
environment (never the project's), opso in this one. Runs alternate (opso, reference, reference,
opso, ...), medians are printed with the ratio ``reference / opso`` (> 1: opso is faster).

Workloads (the defaults are issue 9's benchmark):

- ``pipeline``: RIBBIT over a synthetic archive (4 recorders x 3 files x 10 min, 32 kHz, 16-bit,
  frog calls): ``opso run`` on 2 local workers x 1 thread vs a one-process OpenSoundscape script (per
  file: ``Audio.from_file``, ``Spectrogram.from_audio``, ``ribbit`` for each species); whole
  processes, wall-clock and CPU seconds (all processes of the run).
- ``spectrogram``: ``Audio.from_file`` + ``Spectrogram.from_audio`` on 4 whole 10-minute files,
  inside the process (imports excluded).
- ``import``: ``from <package> import Audio, Spectrogram`` in a fresh process.
- ``cnn``: ``CNN.predict`` of a ResNet18 with the same weights, 224x224x3 input, 300 clips of 2 s,
  batch 32, CPU, inside the process, split into loading, preprocessing and the network's forward pass.
- ``store``: size of the run's ``spectrograms.zarr`` against the audio's.

    python benchmarks/versus_opensoundscape.py [--only pipeline,cnn] [--repeats 3] [--work DIR]

The reference environment: ``--oss-venv DIR`` or ``$OPSO_OSS_VENV``, default ``.bench/opensoundscape-0.13.2``;
``--create-env`` makes it (``pip install opensoundscape==0.13.2``, about 5 minutes and 6 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPECIES = [
    {"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
     "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02},
    {"name": "fast", "signal_band": [1800, 2200], "pulse_rate_range": [18, 22],
     "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02},
]
WORKLOADS = ("pipeline", "spectrogram", "import", "cnn", "store")

OSS_PIPELINE = """
import glob, sys
import pandas as pd
from opensoundscape import Audio, Spectrogram
from opensoundscape.ribbit import ribbit
SPECIES = {species!r}
rows = []
for path in sorted(glob.glob(sys.argv[1] + "/**/*.WAV", recursive=True)):
    spec = Spectrogram.from_audio(Audio.from_file(path))
    for sp in SPECIES:
        df = ribbit(spec, sp["signal_band"], sp["pulse_rate_range"], clip_duration=2.0,
                    noise_bands=sp["noise_bands"], final_clip=None)
        df["file"], df["species"] = path, sp["name"]
        rows.append(df)
pd.concat(rows).to_csv(sys.argv[2])
"""

SPECTROGRAM = """
import glob, sys, time
from {package} import Audio, Spectrogram
files = sorted(glob.glob(sys.argv[1] + "/**/*.WAV", recursive=True))[:4]
Spectrogram.from_audio(Audio.from_file(files[0], duration=2.0))  # first-call set-up outside the timing
t = time.perf_counter()
for path in files:
    Spectrogram.from_audio(Audio.from_file(path))
print(time.perf_counter() - t)
"""

IMPORT = """
import time
t = time.perf_counter()
from {package} import Audio, Spectrogram
print(time.perf_counter() - t)
"""

CNN = """
import json, sys, time, torch
torch.manual_seed(0)
{build}
path = sys.argv[1]
model.predict([path], batch_size=32, activation_layer="sigmoid")  # warm-up (allocations, first-call set-up)
t = time.perf_counter()
scores = model.predict([path], batch_size=32, activation_layer="sigmoid")
total = time.perf_counter() - t
{package_audio}
t = time.perf_counter()
for i in range(len(scores)):
    Audio.from_file(path, offset=2.0 * i, duration=2.0)
load = time.perf_counter() - t
x = torch.rand(32, 3, 224, 224)
with torch.no_grad():
    {forward}(x)
    t = time.perf_counter()
    for i in range(0, len(scores), 32):
        {forward}(x[: min(32, len(scores) - i)])
    forward_s = time.perf_counter() - t
print(json.dumps({{"clips": len(scores), "predict": total, "load": load, "forward": forward_s,
                   "preprocess": max(0.0, total - load - forward_s), "threads": torch.get_num_threads()}}))
"""

OPSO_CNN_BUILD = """
from opso_core.ml import cnn_architectures as ca
from opso_core.ml.cnn import CNN
from opso_core.ml.utils import inference_input, inference_network
net = ca.resnet18(2, weights=None)
torch.save(net.state_dict(), sys.argv[2])
model = CNN(net, ["a", "b"], 2.0, sample_shape=(224, 224, 3))
fast = inference_network(model.network)
def forward(x):
    return fast(inference_input(x))
"""

OSS_CNN_BUILD = """
from opensoundscape import CNN
from opensoundscape.ml.cnn_architectures import resnet18
model = CNN(resnet18(2, weights=None, num_channels=3), ["a", "b"], 2.0, None, height=224, width=224, channels=3)
model.network.load_state_dict(torch.load(sys.argv[2]))
model.network.eval()
forward = model.network
"""


def run(cmd, *, env=None, cwd=None):
    """Run ``cmd``; returns (wall s, CPU s of the process and every child it waited for, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def python_script(python, source, *args, env):
    return run([str(python), "-c", textwrap.dedent(source), *map(str, args)], env=env)


def ensure_venv(path: Path, create: bool, packages: list[str], missing: str, takes: str) -> Path:
    """The python of the reference environment at ``path``: created with ``packages`` when ``create``,
    else the script exits with ``missing`` (what to do). ``takes``: how long creating it takes."""
    python = path / "bin" / "python"
    if python.exists():
        return python
    if not create:
        sys.exit(missing)
    print(f"creating the reference environment in {path} ({takes}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    return python


def ensure_oss_env(path: Path, create: bool) -> Path:
    return ensure_venv(path, create, ["opensoundscape==0.13.2"],
                       f"no OpenSoundscape 0.13.2 environment at {path}; give --oss-venv, set OPSO_OSS_VENV, or add "
                       "--create-env to make it (pip install opensoundscape==0.13.2: about 5 minutes, 6 GB)",
                       "about 5 minutes")


def ensure_archive(work: Path, recorders: int, files: int, minutes: float, sample_rate_hz: int) -> Path:
    root = work / "archive"
    spec = {"recorders": recorders, "files": files, "minutes": minutes, "sample_rate_hz": sample_rate_hz, "seed": 1}
    marker = root / "archive.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    shutil.rmtree(root, ignore_errors=True)
    from opso_core.testing import make_archive

    print(f"generating the archive ({recorders} x {files} x {minutes} min at {sample_rate_hz} Hz) ...", flush=True)
    make_archive(root, n_recorders=recorders, files_per_recorder=files, file_duration_s=minutes * 60,
                 sample_rate_hz=sample_rate_hz, frog_calls_per_file=4, seed=1)
    marker.write_text(json.dumps(spec))
    return root


def opso_config(work: Path, archive: Path, out: Path, workers: int, store: str = "compact") -> Path:
    import yaml

    path = work / f"opso-{out.name}.yaml"
    path.write_text(yaml.safe_dump({
        "input": {"url": str(archive)}, "output": {"url": str(out)}, "clips": {"duration": 2.0},
        "spectrogram": {"sample_rate": None, "store": store}, "ribbit": SPECIES,
        "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1}}))
    return path


def alternate(repeats, first, second):
    """Run ``first`` and ``second`` ``repeats`` times each, alternating which goes first."""
    a, b = [], []
    for i in range(repeats):
        if i % 2 == 0:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
    return a, b


def median(values):
    return statistics.median(values)


def table(title, rows):
    """Rows of (name, opso, reference, unit[, higher_is_better]); the last column is opso's advantage."""
    print(f"\n{title}")
    print(f"{'measure':<52} {'opso':>10} {'OSS 0.13.2':>11} {'opso gain':>10}")
    for name, ours, theirs, unit, *higher in rows:
        if higher and higher[0]:
            ratio = ours / theirs if theirs else float("nan")
        else:
            ratio = theirs / ours if ours else float("nan")
        gain = f"{ratio:>9.2f}x" if ratio == ratio else f"{'-':>10}"  # '-': no ratio (a part opso hides)
        print(f"{name:<52} {ours:>9.2f}{unit:1} {theirs:>10.2f}{unit:1} {gain}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oss-venv", default=os.environ.get("OPSO_OSS_VENV", str(REPO / ".bench/opensoundscape-0.13.2")))
    parser.add_argument("--create-env", action="store_true", help="create the reference environment if missing")
    parser.add_argument("--work", default=str(REPO / ".bench/work"), help="archive and outputs [.bench/work]")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated: {','.join(WORKLOADS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recorders", type=int, default=4)
    parser.add_argument("--files-per-recorder", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=32000)
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers of the opso run [2]")
    args = parser.parse_args()
    only = set(args.only.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    oss_python = ensure_oss_env(Path(args.oss_venv), args.create_env)
    archive = ensure_archive(work, args.recorders, args.files_per_recorder, args.minutes, args.sample_rate)
    audio_bytes = sum(p.stat().st_size for p in archive.rglob("*.WAV"))
    hours = args.recorders * args.files_per_recorder * args.minutes / 60
    env = dict(os.environ, MPLBACKEND="Agg", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    opso = Path(sys.executable).parent / "opso"
    print(f"archive: {hours:.2f} audio hours, {audio_bytes / 1e6:.0f} MB; {os.cpu_count()} cores; "
          f"runs alternate, medians of {args.repeats}")

    if "pipeline" in only or "store" in only:
        config = opso_config(work, archive, work / "run", args.workers)
        ours, theirs = alternate(
            args.repeats,
            lambda: run([str(opso), "-q", "run", str(config), "--overwrite", "--no-progress"], env=env),
            lambda: python_script(oss_python, OSS_PIPELINE.format(species=SPECIES), archive, work / "oss.csv", env=env))
        if "pipeline" in only:
            table(f"RIBBIT over the archive ({len(SPECIES)} species): opso run ({args.workers} local workers x 1 thread) "
                  "vs one-process OSS script (whole processes)",
                  [("wall-clock s", median([r[0] for r in ours]), median([r[0] for r in theirs]), "s"),
                   ("CPU s, all processes", median([r[1] for r in ours]), median([r[1] for r in theirs]), "s"),
                   ("audio-hours per hour", hours / median([r[0] for r in ours]) * 3600,
                    hours / median([r[0] for r in theirs]) * 3600, "", True)])
            print("(targets: wall-clock gain >= 3x; CPU gain >= 2x, i.e. opso <= 0.5x the reference's CPU seconds)")
        if "store" in only:
            store = sum(p.stat().st_size for p in (work / "run" / "spectrograms.zarr").rglob("*") if p.is_file())
            full = opso_config(work, archive, work / "run-full", args.workers, store="full")
            run([str(opso), "-q", "run", str(full), "--overwrite", "--no-progress"], env=env)
            full_bytes = sum(p.stat().st_size for p in (work / "run-full" / "spectrograms.zarr").rglob("*") if p.is_file())
            import pandas as pd

            compact_det = pd.read_parquet(work / "run" / "detections").sort_values(["detector", "file", "start_time"])
            full_det = pd.read_parquet(work / "run-full" / "detections").sort_values(["detector", "file", "start_time"])
            same = compact_det.reset_index(drop=True).equals(full_det.reset_index(drop=True))
            print(f"\nspectrogram store: compact {store / 1e6:.0f} MB = {store / audio_bytes:.3f}x the audio "
                  f"({audio_bytes / 1e6:.0f} MB); full {full_bytes / 1e6:.0f} MB = {full_bytes / audio_bytes:.2f}x; "
                  f"RIBBIT detections identical for both: {same} ({len(compact_det)} detections)")

    if "spectrogram" in only:
        ours, theirs = alternate(
            args.repeats,
            lambda: float(python_script(sys.executable, SPECTROGRAM.format(package="opso_core"), archive, env=env)[2]),
            lambda: float(python_script(oss_python, SPECTROGRAM.format(package="opensoundscape"), archive, env=env)[2]))
        table("Audio.from_file + Spectrogram.from_audio, 4 whole 10-minute files, inside the process (target >= 2x)",
              [("seconds", median(ours), median(theirs), "s")])

    if "import" in only:
        ours, theirs = alternate(
            args.repeats,
            lambda: float(python_script(sys.executable, IMPORT.format(package="opso_core"), env=env)[2]),
            lambda: float(python_script(oss_python, IMPORT.format(package="opensoundscape"), env=env)[2]))
        table("from <package> import Audio, Spectrogram (fresh process; target < 1 s)",
              [("seconds", median(ours), median(theirs), "s")])

    if "cnn" in only:
        wav = sorted(archive.rglob("*.WAV"))[0]
        weights = work / "resnet18_2classes.pt"
        python_script(sys.executable, CNN.format(build=OPSO_CNN_BUILD, package_audio="from opso_core import Audio",
                                                 forward="forward"), wav, weights, env=env)  # writes the weights

        def ours_cnn():
            src = CNN.format(build=OPSO_CNN_BUILD.replace("torch.save(net.state_dict(), sys.argv[2])",
                                                          "net.load_state_dict(torch.load(sys.argv[2]))"),
                             package_audio="from opso_core import Audio", forward="forward")
            return json.loads(python_script(sys.executable, src, wav, weights, env=env)[2])

        def theirs_cnn():
            src = CNN.format(build=OSS_CNN_BUILD, package_audio="from opensoundscape import Audio", forward="forward")
            return json.loads(python_script(oss_python, src, wav, weights, env=env)[2].strip().splitlines()[-1])

        ours, theirs = alternate(args.repeats, ours_cnn, theirs_cnn)
        n = ours[0]["clips"]
        rows = [(f"CNN.predict, {n} clips (s)", median([r["predict"] for r in ours]),
                 median([r["predict"] for r in theirs]), "s")]
        for part in ("load", "preprocess", "forward"):
            rows.append((f"  per clip: {part} (ms)", 1000 * median([r[part] for r in ours]) / n,
                         1000 * median([r[part] for r in theirs]) / n, ""))
        table(f"CNN.predict, ResNet18, same weights, 224x224x3, batch 32, CPU ({ours[0]['threads']} torch threads; "
              "target >= 1.5x)",
              rows)


if __name__ == "__main__":
    main()
