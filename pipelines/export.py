"""``opso export``: a run's detections as files other tools open (Raven Pro, Audacity, Kaleidoscope, CSV).

Every format is written from the run's ``detections/`` table (the scores at or above each detector's
threshold), optionally narrowed to some detectors and classes:

- ``raven``: one Raven Pro selection table per audio file, ``<audio stem>.opso.selection.table.txt``,
  in the audio file's folder relative to the archive's root (two recorders' files often share a
  name), tab-separated: ``Selection, View, Channel, Begin Time (s), End Time (s), Low Freq (Hz),
  High Freq (Hz), Species, Common Name, Detector, Score, Begin File, File Offset (s), Begin Path``
  (``Species`` is the 8th column: :meth:`opso_core.annotations.BoxedAnnotations.from_raven_files`
  reads it as the annotation by default);
- ``audacity``: one label track per audio file, ``<audio stem>.opso.labels.txt`` (``start, end,
  "<class> <score>"``, tab-separated, no header), laid out as the Raven tables;
- ``kaleidoscope``: one CSV, ``opso.kaleidoscope.csv``, with Kaleidoscope's ``INDIR, FOLDER, IN FILE,
  CHANNEL, OFFSET, DURATION`` and ``scientific_name, common_name, confidence, detector``;
- ``csv``: one CSV, ``opso.detections.csv``, of every detection column.

Which rows (``only``):

- ``None``: every detection (the scores at or above each detector's threshold);
- ``"calibrated"``: the detections at or above their class's calibrated threshold
  (``calibration.parquet``, :mod:`pipelines.review.calibrate_run`); classes without an ``ok``
  calibration are left out, and a class whose calibrated threshold lies below the run's own is
  warned about (the detections hold no clip below the run's threshold: apply the calibration first,
  ``opso calibrate CONFIG --apply``, to export every clip above it);
- ``"reviewed-present"``: the clips reviewers marked present (every reviewer's latest answer for the
  clip and class is ``present``; ``unsure`` answers do not count), whatever their score: the
  validated calls.

Frequencies of a box (Raven): a RIBBIT species' ``signal_band``; BirdNET's 0-15 kHz (the band its
spectrograms cover); otherwise 0 Hz to the file's Nyquist frequency.

Files are written atomically to a local folder or an fsspec URL (``s3://``). An existing export file
is replaced only with ``overwrite``; nothing else in the destination is touched.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import posixpath

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError, OutputConflictError, StorageError
from pipelines.outputs.location import OutputLocation
from pipelines.outputs.results import read_detections, read_status

__all__ = ["EXPORT_FORMATS", "ExportSummary", "export_detections"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("raven", "audacity", "kaleidoscope", "csv")
#: the row selections of :func:`export_detections` (``only``)
EXPORT_SELECTIONS = ("calibrated", "reviewed-present")
#: the band BirdNET's spectrograms cover (Hz): its boxes in Raven
BIRDNET_BAND_HZ = (0.0, 15000.0)
_PER_FILE_SUFFIX = {"raven": ".opso.selection.table.txt", "audacity": ".opso.labels.txt"}
_SINGLE_FILE = {"kaleidoscope": "opso.kaleidoscope.csv", "csv": "opso.detections.csv"}


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_detections` wrote.

    Attributes
    ----------
    destination : str
    files : tuple of str
        Paths relative to ``destination``.
    detections : int
        Rows exported.
    """

    destination: str
    files: tuple[str, ...]
    detections: int


def _selected(detections: pd.DataFrame, detectors, classes) -> pd.DataFrame:
    for column, wanted, what in (("detector", detectors, "detectors"), ("class", classes, "classes")):
        if wanted:
            unknown = sorted(set(wanted) - set(detections[column]))
            if unknown:
                known = sorted(set(detections[column]))
                raise ConfigError(f"export: no detections of {what} {unknown}; the run's detections have {known}")
            detections = detections[detections[column].isin(list(wanted))]
    return detections.reset_index(drop=True)


def _calibrated(detections: pd.DataFrame, run_url: str, storage_options, status: dict) -> pd.DataFrame:
    """The detections at or above their class's calibrated threshold (see the module docstring)."""
    from pipelines.review.thresholds import calibrated_thresholds

    found = calibrated_thresholds(OutputLocation(run_url, storage_options))
    if not found:
        raise ConfigError(f"export --only calibrated: the run at {run_url} has no ok calibration (run opso calibrate "
                          "after reviewing clips)")
    keep = np.zeros(len(detections), dtype=bool)
    for (detector, class_name), rows in detections.groupby(["detector", "class"], sort=False).indices.items():
        threshold = found.get(detector, {}).get(class_name)
        if threshold is not None:
            keep[rows] = detections["score"].to_numpy()[rows] >= threshold
    run_thresholds = _run_thresholds(status)
    for detector, classes in found.items():
        for class_name, threshold in classes.items():
            own = run_thresholds.get(detector, {})
            configured = own.get(class_name, own.get(None))
            if configured is not None and threshold < configured:
                logger.warning("export: %s / %s: the calibrated threshold %.4g is below the run's %.4g, so clips "
                               "between them are not among the detections; apply the calibration first "
                               "(calibrated_thresholds: true, opso calibrate CONFIG --apply)", detector, class_name,
                               threshold, configured)
    left_out = sorted({f"{d} / {c}" for d, c in zip(detections["detector"], detections["class"], strict=True)
                       if c not in found.get(d, {})})
    if left_out:
        logger.warning("export --only calibrated: left out %d class(es) without an ok calibration: %s",
                       len(left_out), ", ".join(left_out[:10]) + (" ..." if len(left_out) > 10 else ""))
    return detections[keep].reset_index(drop=True)


def _run_thresholds(status: dict) -> dict[str, dict]:
    """``{detector: {class or None: threshold}}`` the run derived its detections with (None: every class)."""
    config = status.get("config") or {}
    out: dict[str, dict] = {}
    for s in config.get("ribbit") or []:
        out[f"ribbit:{s['name']}"] = {s["name"]: s["threshold"]}
    for kind in ("cnn", "birdnet", "linear"):
        for m in config.get(kind) or []:
            threshold = m["threshold"]
            own = dict(threshold) if isinstance(threshold, dict) else {None: threshold}
            out[f"{kind}:{m['name']}"] = {**own, **(m.get("class_thresholds") or {})}
    return out


def _reviewed_present(run_url: str, storage_options) -> pd.DataFrame:
    """The clips every reviewer (latest answer) marked present, as detection rows (see the module docstring)."""
    from pipelines.outputs.results import read_scores
    from pipelines.outputs.tables import DETECTION_COLUMNS, ID_COLUMNS
    from pipelines.review.reviews import read_reviews

    reviews = read_reviews(run_url, storage_options)
    reviews = reviews[reviews["label"].isin(["present", "absent"])]
    if not len(reviews):
        raise ConfigError(f"export --only reviewed-present: the run at {run_url} has no present/absent reviews "
                          "(opso review)")
    key = ["detector", "class", "file", "start_time"]
    verdict = reviews.groupby(key, sort=True).agg(all_present=("label", lambda s: bool((s == "present").all())),
                                                 score=("score", "first")).reset_index()
    present = verdict[verdict["all_present"]]
    rows = []
    for detector, group in present.groupby("detector", sort=True):
        ids = read_scores(run_url, detector, storage_options)[ID_COLUMNS].drop_duplicates(["file", "start_time"])
        rows.append(group.drop(columns=["all_present"]).merge(ids, on=["file", "start_time"], how="left"))
    if not rows:
        return pd.DataFrame(columns=DETECTION_COLUMNS)
    table = pd.concat(rows, ignore_index=True)
    table["common_name"] = None
    birdnet = table["detector"].str.startswith("birdnet:")
    if birdnet.any():
        from pipelines.birdnet import model

        try:
            scientific, common = model.labels()
            table.loc[birdnet, "common_name"] = table.loc[birdnet, "class"].map(dict(zip(scientific, common,
                                                                                         strict=True)))
        except Exception as exc:  # the birdnet extra is not installed here: names without common names
            logger.warning("export: BirdNET's labels are not available (%s); common names left empty", exc)
    return table[DETECTION_COLUMNS]


def _bands(detections: pd.DataFrame, status: dict, inventory: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Low and high frequency (Hz) of each detection's box."""
    ribbit = {f"ribbit:{s['name']}": tuple(map(float, s["signal_band"]))
              for s in (status.get("config") or {}).get("ribbit") or []}
    nyquist = (inventory.set_index("file")["sample_rate"] / 2.0).to_dict() if len(inventory) else {}
    low = np.zeros(len(detections))
    high = np.array(detections["file"].map(nyquist), dtype=float)  # a writable copy
    detector = detections["detector"].to_numpy()
    for name, (band_low, band_high) in ribbit.items():
        rows = detector == name
        low[rows], high[rows] = band_low, band_high
    birdnet = detections["detector"].astype(str).str.startswith("birdnet:").to_numpy(dtype=bool)
    low[birdnet] = BIRDNET_BAND_HZ[0]
    high[birdnet] = np.fmin(high[birdnet], BIRDNET_BAND_HZ[1])  # at most Nyquist; 15 kHz where the rate is unknown
    return low, high


def _archive_root(input_url: str) -> str:
    """The archive's root as the inventory spells its files: an absolute local path, or a URL with its protocol."""
    import fsspec

    if not input_url:
        return ""
    fs, path = fsspec.core.url_to_fs(input_url)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        import os

        return os.path.abspath(path)
    return fs.unstrip_protocol(path).rstrip("/")


def _relative_folders(files: pd.Series, input_url: str) -> pd.Series:
    """Each audio file's folder relative to the archive's root ('' for files at the root)."""
    root = _archive_root(input_url)

    def folder(file: str) -> str:
        parent = posixpath.dirname(file.replace("\\", "/"))
        if root and (parent == root or parent.startswith(root + "/")):
            return parent[len(root):].lstrip("/")
        return posixpath.basename(parent)  # a file outside the recorded root: its own folder's name

    return files.map(folder)


def _raven_table(group: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Selection": np.arange(1, len(group) + 1), "View": "Spectrogram 1", "Channel": 1,
        "Begin Time (s)": group["start_time"].to_numpy(), "End Time (s)": group["end_time"].to_numpy(),
        "Low Freq (Hz)": group["low_hz"].to_numpy(), "High Freq (Hz)": group["high_hz"].to_numpy(),
        "Species": group["class"].to_numpy(), "Common Name": group["common_name"].fillna("").to_numpy(),
        "Detector": group["detector"].to_numpy(), "Score": group["score"].to_numpy(),
        "Begin File": group["file"].map(posixpath.basename).to_numpy(),
        "File Offset (s)": group["start_time"].to_numpy(), "Begin Path": group["file"].to_numpy()})


def _audacity_table(group: pd.DataFrame) -> pd.DataFrame:
    labels = [f"{c} {s:.4g}" for c, s in zip(group["class"], group["score"], strict=True)]
    return pd.DataFrame({"start": group["start_time"].to_numpy(), "end": group["end_time"].to_numpy(),
                         "label": labels})


def _kaleidoscope_table(detections: pd.DataFrame, input_url: str) -> pd.DataFrame:
    return pd.DataFrame({
        "INDIR": input_url, "FOLDER": detections["folder"], "IN FILE": detections["file"].map(posixpath.basename),
        "CHANNEL": 0, "OFFSET": detections["start_time"], "DURATION": detections["end_time"] - detections["start_time"],
        "scientific_name": detections["class"], "common_name": detections["common_name"],
        "confidence": detections["score"], "detector": detections["detector"]})


def export_detections(run_url: str, destination: str, fmt: str, *, storage_options=None,
                      destination_storage_options=None, detectors=None, classes=None,
                      overwrite: bool = False, only: str | None = None) -> ExportSummary:
    """Write the run's detections in ``fmt`` (one of :data:`EXPORT_FORMATS`) under ``destination``.

    Parameters
    ----------
    run_url : str
        The run's output folder or URL.
    destination : str
        Folder or fsspec URL to write into (created if missing).
    fmt : {"raven", "audacity", "kaleidoscope", "csv"}
    storage_options, destination_storage_options : dict, optional
        fsspec options of the run and of the destination.
    detectors, classes : list of str, optional
        Only these detectors (``ribbit:<name>``, ...) and classes.
    overwrite : bool
        Replace export files of the same names already in ``destination`` (nothing else is touched).
    only : {None, "calibrated", "reviewed-present"}
        Every detection, those at or above their class's calibrated threshold, or the clips reviewed
        present (see the module docstring).

    Returns
    -------
    ExportSummary

    Raises
    ------
    ConfigError
        Unknown format, detector or class.
    OutputConflictError
        An export file exists and ``overwrite`` is false (nothing was written).
    StorageError
        The run or the destination cannot be read or written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export: format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    status = read_status(run_url, storage_options)
    input_url = ((status.get("config") or {}).get("input") or {}).get("url", "")
    location = OutputLocation(run_url, storage_options)
    inventory = location.read_parquet("inventory.parquet") if location.exists("inventory.parquet") else \
        pd.DataFrame(columns=["file", "sample_rate"])
    if only is not None and only not in EXPORT_SELECTIONS:
        raise ConfigError(f"export: only is one of {list(EXPORT_SELECTIONS)}, got {only!r}")
    if only == "reviewed-present":
        detections = _reviewed_present(run_url, storage_options)
    else:
        detections = read_detections(run_url, storage_options)
        if only == "calibrated":
            detections = _calibrated(detections, run_url, storage_options, status)
    detections = _selected(detections, detectors, classes)
    low, high = _bands(detections, status, inventory)
    detections = detections.assign(low_hz=low, high_hz=high,
                                   folder=_relative_folders(detections["file"].astype(str), input_url))
    detections = detections.sort_values(["file", "start_time", "detector", "class"], kind="stable",
                                        ignore_index=True)

    outputs: dict[str, bytes] = {}
    if fmt in _PER_FILE_SUFFIX:
        for file, group in detections.groupby("file", sort=True):
            stem = posixpath.splitext(posixpath.basename(str(file)))[0]
            rel = posixpath.join(group["folder"].iloc[0], stem + _PER_FILE_SUFFIX[fmt])
            if rel in outputs:
                raise ConfigError(f"export: two audio files would share {rel} (one folder, names differing only "
                                  "in their extension); use --format kaleidoscope or csv, which name every file")
            buffer = io.StringIO()
            if fmt == "raven":
                _raven_table(group).to_csv(buffer, sep="\t", index=False)
            else:
                _audacity_table(group).to_csv(buffer, sep="\t", index=False, header=False, float_format="%.6f")
            outputs[rel] = buffer.getvalue().encode("utf-8")
    else:
        table = _kaleidoscope_table(detections, input_url) if fmt == "kaleidoscope" else \
            detections.drop(columns=["low_hz", "high_hz", "folder"])
        outputs[_SINGLE_FILE[fmt]] = table.to_csv(index=False).encode("utf-8")

    target = OutputLocation(destination, destination_storage_options)
    if not overwrite:
        present = [rel for rel in outputs if target.exists(rel)]
        if present:
            raise OutputConflictError(f"export: {len(present)} file(s) already in {destination} (e.g. {present[0]}); "
                                      "add --overwrite to replace them (nothing else there is touched), or choose "
                                      "another destination")
    for rel, data in outputs.items():
        try:
            target.write_bytes_unguarded(rel, data)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"export: cannot write {target.url_of(rel)}: {exc}") from exc
    logger.debug("exported %d detections to %d %s file(s) in %s", len(detections), len(outputs), fmt, destination)
    return ExportSummary(destination=target.url, files=tuple(outputs), detections=len(detections))
