"""Usage of OpenSoundscape 0.9.0 beyond its own tests, run the same way on 0.9.0 and on opso (issue 23).

Each scenario takes the package's name (``"opensoundscape"`` or ``"opso_core"``) and a scratch folder,
makes its inputs there (seeded numpy, soundfile), calls the package as ported code would, and returns
what it observed as JSON-able values. :func:`observe` runs one and also records what it raised (the
built-in exception classes, what ported ``except`` clauses catch) and whether it warned.

``make_opensoundscape_090_behaviours.py`` records 0.9.0's observations (in the reference environment);
``tests/opso_core/test_090_behaviours.py`` runs the same scenarios on opso and compares, one test per
scenario, naming each deliberate deviation. Standard library, numpy, pandas, soundfile and torch only.
"""

from __future__ import annotations

import builtins
import importlib
import warnings
from pathlib import Path

import numpy as np

SCENARIOS = {}
SAMPLE_RATE_HZ = 22050  # the default preprocessor's bandpass (0 to 11025 Hz) needs at least this


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def builtin_bases(exc: BaseException) -> list[str]:
    """The built-in exception classes ``exc`` is an instance of (what ported ``except`` clauses catch)."""
    return sorted(c.__name__ for c in type(exc).__mro__ if getattr(builtins, c.__name__, None) is c
                  and c not in (BaseException, Exception, object))


def observe(name: str, package: str, tmp: Path) -> dict:
    """``{"value", "raised", "warned", "warnings"}`` of scenario ``name`` run with ``package`` in folder
    ``tmp``: its return value (None if it raised), the built-in classes of what it raised (None if
    nothing), and the ``UserWarning``s given (not deprecations, not torch's own), their messages cut to
    160 characters."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value, raised = SCENARIOS[name](package, Path(tmp)), None
        except Exception as exc:  # recording what the package raises is the point
            value, raised = None, builtin_bases(exc)
    messages = [str(w.message).replace(str(tmp), "<tmp>")[:160] for w in caught if issubclass(w.category, UserWarning)
                and not issubclass(w.category, FutureWarning) and "torch" not in (w.filename or "")]
    return {"value": value, "raised": raised, "warned": bool(messages), "warnings": messages}


def _module(package, name):
    return importlib.import_module(f"{package}.{name}")


def _noise(path, duration_s, sample_rate_hz=SAMPLE_RATE_HZ, seed=0):
    import soundfile

    rng = np.random.default_rng(seed)
    soundfile.write(str(path), (0.1 * rng.standard_normal(int(duration_s * sample_rate_hz))).astype(np.float32),
                    sample_rate_hz)
    return str(path)


def _model(package):
    cnn = _module(package, "ml.cnn")
    architectures = _module(package, "ml.cnn_architectures")
    return cnn.CNN(architectures.resnet18(2, weights=None), classes=["a", "b"], sample_duration=2)


# ---------------------------------------------------------------- signal processing and localization

def two_signals():
    """Noise and the same noise 7 samples later plus independent noise (2,000 samples each)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000)
    return x, np.roll(x, 7) + 0.3 * rng.normal(size=2000)


@scenario
def gcc_weightings(package, tmp):
    """Position and value of the maximum of ``gcc(x, y, cc_filter)`` for each weighting."""
    sp = _module(package, "signal_processing")
    x, y = two_signals()
    out = {}
    for cc_filter in ("phat", "roth", "scot", "ht", "cc"):
        g = np.asarray(sp.gcc(x, y, cc_filter=cc_filter), dtype=float)
        out[cc_filter] = {"argmax": int(np.argmax(g)), "max": float(np.max(g)), "len": len(g)}
    return out


@scenario
def tdoa_ht_return_max(package, tmp):
    sp = _module(package, "signal_processing")
    x, y = two_signals()
    delay, cc_max = sp.tdoa(y, x, cc_filter="ht", sample_rate=1000, return_max=True)
    return [float(delay), float(cc_max)]


def drum_samples(duration_s=20.0, sample_rate_hz=8000, start_s=3.0, seed=0):
    """A synthetic Ruffed Grouse drum: 50 Hz thumps 0.6 s apart at first, 0.12 s at the end (float32)."""
    rng = np.random.default_rng(seed)
    beats = start_s + np.concatenate([[0.0], np.cumsum(np.linspace(0.6, 0.12, 24))])
    t = np.arange(int(duration_s * sample_rate_hz)) / sample_rate_hz
    samples = rng.normal(0, 0.01, t.size)
    for beat in beats:
        window = (t >= beat) & (t < beat + 0.04)
        samples[window] += 0.5 * np.sin(2 * np.pi * 50 * (t[window] - beat)) * np.hanning(window.sum())
    return samples.astype(np.float32), sample_rate_hz


@scenario
def cwt_peak_times(package, tmp):
    """``cwt_peaks`` at 50 Hz on the drum resampled to 400 Hz (20 s: 8,000 samples)."""
    audio_mod = _module(package, "audio")
    sp = _module(package, "signal_processing")
    samples, rate = drum_samples()
    audio = audio_mod.Audio(samples, rate).resample(400)
    times, levels = sp.cwt_peaks(audio, 50)
    import pywt

    return {"n": len(audio.samples), "times": [float(t) for t in times], "levels": [float(v) for v in levels],
            "pywavelets": pywt.__version__}


@scenario
def rugr_sequences(package, tmp):
    """``detect_peak_sequence_cwt`` on the drum, in one 20-s window."""
    audio_mod = _module(package, "audio")
    sp = _module(package, "signal_processing")
    samples, rate = drum_samples()
    found = sp.detect_peak_sequence_cwt(audio_mod.Audio(samples, rate), window_len=20)
    return [{"seq_len": int(r.seq_len), "seq_start_time": float(r.seq_start_time),
             "seq_end_time": float(r.seq_end_time), "sequence_t": [float(t) for t in r.sequence_t]}
            for r in found.itertuples()]


@scenario
def spatial_event_delays(package, tmp):
    """A 3-receiver event: noise reaching receiver 1 2.5 ms and receiver 2 5 ms after receiver 0."""
    import soundfile

    localization = _module(package, "localization")
    rng = np.random.default_rng(3)
    rate = 16000
    source = rng.standard_normal(4 * rate)
    files = []
    for k, delay_samples in enumerate((0, 40, 80)):
        delayed = np.concatenate([np.zeros(delay_samples), source])[: source.size]
        files.append(str(tmp / f"receiver{k}.wav"))
        soundfile.write(files[-1], (0.1 * (delayed + 0.2 * rng.standard_normal(source.size))).astype(np.float32), rate)
    event = localization.SpatialEvent(files, [[0, 0], [10, 0], [0, 10]], start_time=1.0, duration=1.0)
    tdoas, cc_maxs = event.estimate_delays(max_delay=0.02)
    return {"tdoas": [float(t) for t in tdoas], "cc_maxs": [float(c) for c in cc_maxs]}


# ---------------------------------------------------------------- machine learning

@scenario
def predict_file_shorter_than_a_clip(package, tmp):
    scores = _model(package).predict([_noise(tmp / "short.wav", 1.0)])
    return list(scores.shape)


@scenario
def predict_label_columns_differ_from_classes(package, tmp):
    import pandas as pd

    labels = pd.DataFrame({"x": [1], "y": [0]}, index=pd.Index([_noise(tmp / "long.wav", 5.0)], name="file"))
    return list(_model(package).predict(labels).shape)


@scenario
def predict_only_file_missing(package, tmp):
    return list(_model(package).predict([str(tmp / "missing.wav")]).shape)


@scenario
def predict_one_file_missing(package, tmp):
    scores = _model(package).predict([str(tmp / "missing.wav"), _noise(tmp / "long.wav", 5.0)])
    return {"shape": list(scores.shape), "nan_rows": int(scores.isna().all(axis=1).sum())}


@scenario
def predict_preprocessor_as_samples(package, tmp):
    model = _model(package)
    return list(model.predict(model.preprocessor).shape)


@scenario
def cams_of_an_unknown_class(package, tmp):
    _model(package).generate_cams([_noise(tmp / "long.wav", 5.0)], classes=["not_a_class"])
    return "made"


@scenario
def cam_target_layers(package, tmp):
    """The default CAM layers the architectures carry (types), and that ResNet's is ``layer4``."""
    architectures = _module(package, "ml.cnn_architectures")
    out = {}
    for name in ("resnet18", "vgg11_bn", "alexnet", "squeezenet1_0", "densenet121", "inception_v3"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = getattr(architectures, name)(2, weights=None)
        layers = network.cam_target_layers
        out[name] = {"container": type(layers).__name__, "types": [type(layer).__name__ for layer in layers]}
        if name == "resnet18":
            out[name]["is_layer4"] = [layer is network.layer4 for layer in layers]
    return out


@scenario
def datasets_label_df(package, tmp):
    import pandas as pd

    datasets = _module(package, "ml.datasets")
    preprocessor = _model(package).preprocessor
    path = _noise(tmp / "long.wav", 5.0)
    files = datasets.AudioFileDataset(pd.DataFrame({"a": [1], "b": [0]}, index=pd.Index([path], name="file")),
                                      preprocessor)
    clips = datasets.AudioSplittingDataset([path], preprocessor)
    return {"file": [type(files.label_df).__name__, list(files.label_df.columns), len(files.label_df)],
            "clips": [type(clips.label_df).__name__, list(clips.label_df.index.names), len(clips.label_df)]}


def _three_samples(package, tmp):
    import pandas as pd

    good = _noise(tmp / "long.wav", 5.0)
    index = pd.Index([good, str(tmp / "missing.wav"), good], name="file")
    return _module(package, "ml.datasets").AudioFileDataset(pd.DataFrame({"a": [1, 0, 1], "b": [0, 1, 0]}, index=index),
                                                            _model(package).preprocessor)


@scenario
def safe_dataset_substitute(package, tmp):
    """A SafeDataset's record of samples tried, after asking for the failing sample (index 1)."""
    safe = _module(package, "ml.safe_dataset").SafeDataset(_three_samples(package, tmp),
                                                          invalid_sample_behavior="substitute")
    sample = safe[1]
    report = safe.report()
    return {"sample": type(sample).__name__, "sample_source": Path(sample.source).name,
            "valid_indices": [type(safe._valid_indices).__name__, list(safe._valid_indices)],
            "invalid_indices": [type(safe._invalid_indices).__name__, list(safe._invalid_indices)],
            "invalid_samples": [type(safe._invalid_samples).__name__, sorted(Path(s).name for s in safe._invalid_samples)],
            "report": type(report).__name__}


@scenario
def safe_dataset_nothing_loads(package, tmp):
    dataset = _three_samples(package, tmp)
    dataset.label_df = dataset.label_df.iloc[[1]]
    _module(package, "ml.safe_dataset").SafeDataset(dataset, invalid_sample_behavior="substitute")[0]
    return "loaded"


# ---------------------------------------------------------------- annotations

RAVEN_HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)"


def _raven_without_annotations(tmp):
    path = tmp / "no_annotation_column.selections.txt"
    path.write_text(RAVEN_HEADER + "\n1\tSpectrogram 1\t1\t0.5\t1.5\t100\t2000\n"
                    "2\tSpectrogram 1\t1\t60.0\t61.0\t100\t2000\n")
    return str(path)


def _raven_with_file_columns(tmp):
    path = tmp / "file_columns.selections.txt"
    path.write_text(RAVEN_HEADER + "\tBegin Path\tFile Offset (s)\tBegin File\tSpecies\n"
                    "1\tSpectrogram 1\t1\t0.5\t1.5\t100\t2000\t/x/a.wav\t0.5\ta.wav\tEATO\n"
                    "2\tSpectrogram 1\t1\t3\t4\t100\t2000\t/x/b.wav\t1\tb.wav\tNOCA\n")
    return str(path)


def _table(annotations):
    df = annotations.df
    return {"columns": sorted(map(str, df.columns)), "rows": len(df),
            "annotation": [None if v != v else v for v in df["annotation"].tolist()],
            "start_time": df["start_time"].tolist()}


@scenario
def raven_without_annotation_column(package, tmp):
    """The default ``annotation_column_idx=7`` on a table of 7 columns."""
    BoxedAnnotations = _module(package, "annotations").BoxedAnnotations
    return _table(BoxedAnnotations.from_raven_files([_raven_without_annotations(tmp)]))


@scenario
def raven_without_annotation_column_idx_none(package, tmp):
    BoxedAnnotations = _module(package, "annotations").BoxedAnnotations
    return _table(BoxedAnnotations.from_raven_files([_raven_without_annotations(tmp)], annotation_column_idx=None))


@scenario
def raven_without_annotation_column_no_extra_columns(package, tmp):
    BoxedAnnotations = _module(package, "annotations").BoxedAnnotations
    return _table(BoxedAnnotations.from_raven_files([_raven_without_annotations(tmp)], annotation_column_idx=None,
                                                    keep_extra_columns=False))


@scenario
def raven_with_file_name_columns(package, tmp):
    """Raven's ``Begin Path``/``Begin File`` columns: the default column 7 (``Begin Path``), the species
    column (10), and keeping only ``Begin Path``."""
    BoxedAnnotations = _module(package, "annotations").BoxedAnnotations
    path = _raven_with_file_columns(tmp)
    return {"default": _table(BoxedAnnotations.from_raven_files([path])),
            "species": _table(BoxedAnnotations.from_raven_files([path], annotation_column_idx=10)),
            "keep_begin_path": _table(BoxedAnnotations.from_raven_files([path], annotation_column_idx=10,
                                                                        keep_extra_columns=["Begin Path"]))}


def _two_minute_annotations(package, tmp, with_file=True):
    import pandas as pd
    import soundfile

    path = str(tmp / "two_minutes.wav")
    soundfile.write(path, np.zeros(120 * 8000, dtype=np.float32), 8000)
    df = pd.DataFrame({"file": [path if with_file else np.nan] * 2, "start_time": [0.5, 60.0],
                       "end_time": [1.5, 61.0], "low_f": [100, 100], "high_f": [2000, 2000],
                       "annotation": ["EATO", "NOCA"]})
    return _module(package, "annotations").BoxedAnnotations(df)


def _labels(labels):
    return {"shape": list(labels.shape), "sums": {str(k): float(v) for k, v in labels.sum().items()},
            "positive_starts": {str(c): [float(i[1]) for i in labels.index[labels[c] > 0]] for c in labels.columns},
            "dtypes": sorted({str(d) for d in labels.dtypes})}


@scenario
def one_hot_clip_labels_two_minutes(package, tmp):
    """5-s clips of a 2-minute file, its duration read from the file and given as ``full_duration``."""
    annotations = _two_minute_annotations(package, tmp)
    return {"read": _labels(annotations.one_hot_clip_labels(clip_duration=5, clip_overlap=0, min_label_overlap=0.25)),
            "given": _labels(annotations.one_hot_clip_labels(full_duration=120, clip_duration=5, clip_overlap=0,
                                                             min_label_overlap=0.25))}


@scenario
def one_hot_clip_labels_without_files(package, tmp):
    """Annotations that name no audio file, with ``full_duration`` given."""
    annotations = _two_minute_annotations(package, tmp, with_file=False)
    return _labels(annotations.one_hot_clip_labels(full_duration=120, clip_duration=5, clip_overlap=0,
                                                   min_label_overlap=0.25))


@scenario
def one_hot_clip_labels_without_files_or_duration(package, tmp):
    annotations = _two_minute_annotations(package, tmp, with_file=False)
    return _labels(annotations.one_hot_clip_labels(clip_duration=5, clip_overlap=0, min_label_overlap=0.25))
