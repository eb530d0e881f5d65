"""Boxed (time x frequency) annotations, e.g. Raven selection tables (``opensoundscape.annotations``).

:class:`BoxedAnnotations` loads Raven ``.txt`` tables, trims/bandpasses/subsets/relabels boxes,
writes Raven files back, and turns annotations into one-hot clip labels for training.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from opso_core.errors import OpsoAssertionError, OpsoTypeError, OpsoValueError, OpsoValueIndexError
from opso_core.utils import generate_clip_times_df, make_clip_df

__all__ = ["BoxedAnnotations", "categorical_to_one_hot", "diff", "one_hot_labels_on_time_interval",
           "one_hot_to_categorical"]

_RAVEN_COLUMNS = {"Begin Time (s)": "start_time", "End Time (s)": "end_time", "Low Freq (Hz)": "low_f",
                  "High Freq (Hz)": "high_f"}
_CORE = ["file", "annotation", "start_time", "end_time", "low_f", "high_f"]
_EDGE_MODES = ("trim", "keep", "remove")


class BoxedAnnotations:
    """A table of annotation boxes: ``file, annotation, start_time, end_time, low_f, high_f`` (+ extras).

    Times are seconds from the start of each file; frequencies Hz. Methods return new objects.

    Parameters
    ----------
    df : pandas.DataFrame
        Must have columns ``annotation``, ``start_time``, ``end_time`` (``file``, ``low_f``,
        ``high_f`` are added as NaN when missing).
    """

    def __init__(self, df):
        if not isinstance(df, pd.DataFrame):
            raise OpsoTypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
        missing = {"annotation", "start_time", "end_time"} - set(df.columns)
        if missing:
            raise OpsoAssertionError(f"annotation table lacks columns {sorted(missing)}")
        df = df.copy()
        for col in ("file", "low_f", "high_f"):
            if col not in df.columns:
                df[col] = np.nan
        if not pd.api.types.is_object_dtype(df["annotation"]):
            # labels as Python objects, None where missing, as pandas < 3 made ["a", None] (pandas 3 makes
            # it a string column whose missing value is NaN); Raven tables keep NaN, as in 0.9.0
            labels = df["annotation"].astype(object)
            df["annotation"] = labels.where(labels.notna(), None)
        self.df = df[_CORE + [c for c in df.columns if c not in _CORE]].reset_index(drop=True)

    def __repr__(self):
        return f"<BoxedAnnotations with {len(self.df)} annotations>"

    # ------------------------------------------------------------------ I/O

    @classmethod
    def from_raven_files(cls, raven_paths, audio_files=None, annotation_column_idx=7, keep_extra_columns=True):
        """Load Raven selection tables (tab-separated ``.txt``).

        Parameters
        ----------
        raven_paths : list of str or path-like
        audio_files : list, optional
            The audio file of each table (goes to the ``file`` column); same length as ``raven_paths``.
        annotation_column_idx : int or None
            0-based position of the column holding labels (7: the first column added in Raven);
            None leaves ``annotation`` NaN.
        keep_extra_columns : bool or list of str
            Keep all other Raven columns, none, or the listed ones.
        """
        if isinstance(raven_paths, str | Path):
            raven_paths = [raven_paths]
        raven_paths = list(raven_paths)
        if audio_files is not None:
            audio_files = [audio_files] if isinstance(audio_files, str | Path) else list(audio_files)  # Series too
        if audio_files is not None and len(audio_files) != len(raven_paths):
            raise OpsoValueError(f"{len(audio_files)} audio_files for {len(raven_paths)} raven_paths")
        frames = []
        for i, path in enumerate(raven_paths):
            df = pd.read_csv(path, sep="\t")
            if annotation_column_idx is not None:
                if annotation_column_idx >= len(df.columns):  # an IndexError in 0.9.0, also one here
                    raise OpsoValueIndexError(f"{path} has {len(df.columns)} columns; no annotation column at "
                                              f"position {annotation_column_idx} (use annotation_column_idx=None "
                                              "for a table without labels)")
                df = df.rename(columns={df.columns[annotation_column_idx]: "annotation"})
            else:
                df["annotation"] = np.nan
            missing = set(_RAVEN_COLUMNS) - set(df.columns)
            if missing:
                raise OpsoValueError(f"{path} is not a Raven selection table: no columns {sorted(missing)}")
            df = df.rename(columns=_RAVEN_COLUMNS)
            df["annotation"] = df["annotation"].astype(object)  # missing labels stay NaN
            df["file"] = audio_files[i] if audio_files is not None else np.nan
            extras = [c for c in df.columns if c not in _CORE]
            if keep_extra_columns is False or keep_extra_columns is None:
                df = df[_CORE]
            elif keep_extra_columns is not True:
                df = df[_CORE + [c for c in extras if c in set(keep_extra_columns)]]
            frames.append(df)
        if not frames:
            return cls(pd.DataFrame(columns=_CORE))
        return cls(pd.concat(frames, ignore_index=True))

    def to_raven_files(self, save_dir):
        """Write one Raven selection table per audio file into ``save_dir`` (created if missing).

        Files are named ``<audio file stem>.selections.txt`` (``unspecified_audio.selections.txt`` for
        annotations without a file), as OpenSoundscape 0.9.0 names them; tab-separated, with Raven's
        ``Selection``, ``View``, ``Channel``, ``Begin Time (s)``, ``End Time (s)``, ``Low Freq (Hz)``,
        ``High Freq (Hz)`` columns, then ``annotation`` and any other columns of ``df``.

        Returns
        -------
        list of pathlib.Path
            The files written.
        """
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        files = self.df["file"]
        named = files.dropna().unique()
        stems = [Path(str(f)).stem for f in named]
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        if repeated or "unspecified_audio" in stems and files.isna().any():
            raise OpsoValueError(f"audio files in different folders share the names {repeated or ['unspecified_audio']}; "
                                 "their tables would overwrite each other: subset .df and save each part "
                                 "to its own folder")
        extra = [c for c in self.df.columns if c not in _CORE]
        written = []
        for file, group in self.df.groupby(files.fillna("\0unspecified"), sort=False):
            table = pd.DataFrame({
                "Selection": np.arange(1, len(group) + 1), "View": "Spectrogram 1", "Channel": 1,
                "Begin Time (s)": group["start_time"].to_numpy(), "End Time (s)": group["end_time"].to_numpy(),
                "Low Freq (Hz)": group["low_f"].to_numpy(), "High Freq (Hz)": group["high_f"].to_numpy(),
                "annotation": group["annotation"].to_numpy()})
            for col in extra:
                if col not in table.columns:
                    table[col] = group[col].to_numpy()
            stem = "unspecified_audio" if file == "\0unspecified" else Path(str(file)).stem
            path = save_dir / f"{stem}.selections.txt"
            table.to_csv(path, sep="\t", index=False)
            written.append(path)
        return written

    # ------------------------------------------------------------------ selection

    def subset(self, classes):
        """Only annotations whose label is in ``classes`` (include None/NaN to keep unlabelled boxes)."""
        classes = list(classes)
        keep = self.df["annotation"].isin([c for c in classes if c is not None and c == c])
        if any(c is None or c != c for c in classes):
            keep |= self.df["annotation"].isna()
        return BoxedAnnotations(self.df[keep])

    def _edges(self, lo_col, hi_col, lo, hi, edge_mode, shift=0.0):
        if edge_mode not in _EDGE_MODES:
            raise OpsoValueError(f"edge_mode must be one of {_EDGE_MODES}, got {edge_mode!r}")
        df = self.df
        zero = df[lo_col] == df[hi_col]
        overlaps = ((df[lo_col] < hi) & (df[hi_col] > lo)) | (zero & (df[lo_col] >= lo) & (df[lo_col] < hi))
        df = df[overlaps].copy()
        if edge_mode == "remove":
            df = df[(df[lo_col] >= lo) & (df[hi_col] <= hi)]
        elif edge_mode == "trim":
            df[lo_col] = df[lo_col].clip(lower=lo)
            df[hi_col] = df[hi_col].clip(upper=hi)
        if shift:
            df[lo_col] -= shift
            df[hi_col] -= shift
        return BoxedAnnotations(df)

    def trim(self, start_time, end_time, edge_mode="trim"):
        """Annotations between ``start_time`` and ``end_time`` (s), with times relative to ``start_time``.

        ``edge_mode``: "trim" cuts boxes at the bounds, "keep" keeps them whole, "remove" drops
        boxes that cross a bound. Zero-length boxes count on ``[start_time, end_time)``.
        """
        if end_time < start_time:
            raise OpsoValueError("end_time must not be before start_time")
        return self._edges("start_time", "end_time", start_time, end_time, edge_mode, shift=start_time)

    def bandpass(self, low_f, high_f, edge_mode="trim"):
        """Annotations overlapping ``low_f``-``high_f`` Hz (see :meth:`trim` for ``edge_mode``)."""
        if high_f < low_f:
            raise OpsoValueError("high_f must not be below low_f")
        return self._edges("low_f", "high_f", low_f, high_f, edge_mode)

    def unique_labels(self):
        """The distinct non-null labels."""
        return list(self.df["annotation"].dropna().unique())

    def convert_labels(self, conversion_table):
        """Relabel with a dict ``{old: new}`` or a 2-column DataFrame (old, new); others stay as they are."""
        if isinstance(conversion_table, pd.DataFrame):
            if conversion_table.shape[1] != 2:
                raise OpsoValueError("a conversion DataFrame needs exactly two columns (current, new)")
            conversion_table = dict(zip(conversion_table.iloc[:, 0], conversion_table.iloc[:, 1], strict=True))
        elif not isinstance(conversion_table, dict):
            raise OpsoTypeError("conversion_table must be a dict or a DataFrame")
        df = self.df.copy()
        # built as Python objects so None and NaN stay what they were (pandas 3 would infer a string column)
        df["annotation"] = pd.Series([conversion_table.get(a, a) for a in df["annotation"]], index=df.index,
                                     dtype=object)
        return BoxedAnnotations(df)

    # ------------------------------------------------------------------ labels

    def global_one_hot_labels(self, classes):
        """0/1 per class: whether any annotation (of any file, any time) has that label."""
        present = set(self.unique_labels())
        return [int(c in present) for c in classes]

    one_hot_labels = global_one_hot_labels

    def one_hot_labels_like(self, clip_df, min_label_overlap, min_label_fraction=None, class_subset=None,
                            warn_no_annotations=False):
        """One-hot labels for the clips of ``clip_df`` (MultiIndex ``file, start_time, end_time``).

        A class is 1 for a clip if an annotation of it overlaps the clip by at least
        ``min_label_overlap`` seconds, or by at least ``min_label_fraction`` of the annotation's length.
        When the annotations are of one file, ``clip_df`` may also be the table ``Audio.split`` returns
        (``start_time``, ``end_time`` columns), as chapter 6 of the manual uses it; the clips are that file's.
        """
        if not isinstance(clip_df.index, pd.MultiIndex) and {"start_time", "end_time"} <= set(clip_df.columns):
            files = self.df["file"].unique()
            if len(files) != 1:
                raise OpsoValueError("clip_df has no 'file': give it a (file, start_time, end_time) MultiIndex "
                                     f"(the annotations are of {len(files)} files)")
            clip_df = pd.DataFrame(index=pd.MultiIndex.from_arrays(
                [[files[0]] * len(clip_df), clip_df["start_time"].to_numpy(), clip_df["end_time"].to_numpy()],
                names=["file", "start_time", "end_time"]))
        if not isinstance(clip_df.index, pd.MultiIndex) or clip_df.index.nlevels != 3:
            raise OpsoValueError("clip_df must have a (file, start_time, end_time) MultiIndex")
        classes = list(class_subset) if class_subset is not None else self.unique_labels()
        clips = clip_df.index.to_frame(index=False)
        clips.columns = ["file", "start_time", "end_time"]
        out = np.zeros((len(clips), len(classes)), dtype=int)
        df = self.df[self.df["annotation"].isin(classes)]
        if warn_no_annotations:
            missing = set(clips["file"]) - set(self.df["file"])
            if missing:
                warnings.warn(f"{len(missing)} files of clip_df have no annotations", stacklevel=2)
        for file, idx in clips.groupby("file", sort=False, dropna=False).groups.items():
            ann = df[df["file"].isna()] if file != file else df[df["file"] == file]  # NaN: annotations without a file
            if ann.empty:
                continue
            c_start = clips.loc[idx, "start_time"].to_numpy()[:, None]
            c_end = clips.loc[idx, "end_time"].to_numpy()[:, None]
            a_start, a_end = ann["start_time"].to_numpy()[None, :], ann["end_time"].to_numpy()[None, :]
            overlap = np.minimum(c_end, a_end) - np.maximum(c_start, a_start)
            hit = overlap >= min_label_overlap
            if min_label_fraction is not None:
                length = np.maximum(a_end - a_start, 1e-12)
                hit |= (overlap / length) >= min_label_fraction
            hit &= overlap >= 0
            labels = ann["annotation"].to_numpy()
            for k, cls in enumerate(classes):
                cols = labels == cls
                if cols.any():
                    out[np.asarray(idx), k] = hit[:, cols].any(axis=1).astype(int)
        return pd.DataFrame(out, index=clip_df.index, columns=classes)

    def one_hot_clip_labels(self, clip_duration, clip_overlap, min_label_overlap, min_label_fraction=1,
                            full_duration=None, class_subset=None, final_clip=None):
        """One-hot labels for even-length clips of every annotated file (``Audio.split`` clips).

        ``full_duration`` (s) is used for every file; None reads each file's duration from its header.
        With ``full_duration``, annotations without a file (``file`` NaN, e.g. a Raven table read without
        ``audio_files``) get clips too, indexed by file NaN, as in OpenSoundscape 0.9.0.

        Returns
        -------
        pandas.DataFrame
            0/1 (int) per class, MultiIndex ``(file, start_time, end_time)``, a row per clip.
        """
        if full_duration is None:
            files = list(self.df["file"].dropna().unique())
            if not files:
                raise OpsoAssertionError("the annotations name no audio file, so the clips' durations cannot be "
                                         "read: give full_duration (seconds), or set the 'file' column "
                                         "(from_raven_files(..., audio_files=...))")
            clip_df = make_clip_df(files, clip_duration=clip_duration, clip_overlap=clip_overlap,
                                   final_clip=final_clip, raise_exceptions=True)
        else:
            template = generate_clip_times_df(full_duration, clip_duration, clip_overlap, final_clip)
            files = list(self.df["file"].unique())  # NaN included: annotations without a file
            clip_df = pd.DataFrame(index=pd.MultiIndex.from_arrays(
                [np.repeat(np.asarray(files, dtype=object), len(template)),
                 np.tile(template["start_time"].to_numpy(), len(files)),
                 np.tile(template["end_time"].to_numpy(), len(files))], names=["file", "start_time", "end_time"]))
        return self.one_hot_labels_like(clip_df, min_label_overlap=min_label_overlap,
                                        min_label_fraction=min_label_fraction, class_subset=class_subset)


def one_hot_labels_on_time_interval(df, class_subset, start_time, end_time, min_label_overlap,
                                    min_label_fraction=None):
    """``{class: 0/1}`` for one time interval (see ``BoxedAnnotations.one_hot_labels_like``)."""
    overlap = np.minimum(df["end_time"], end_time) - np.maximum(df["start_time"], start_time)
    hit = overlap >= min_label_overlap
    if min_label_fraction is not None:
        hit |= overlap / np.maximum(df["end_time"] - df["start_time"], 1e-12) >= min_label_fraction
    hit &= overlap >= 0
    present = set(df.loc[hit, "annotation"])
    return {c: int(c in present) for c in class_subset}


def categorical_to_one_hot(labels, class_subset=None):
    """Lists of labels per sample -> (one-hot array (n_samples, n_classes), classes)."""
    if class_subset is None:
        class_subset = sorted({label for sample in labels for label in sample}, key=str)
    index = {c: i for i, c in enumerate(class_subset)}
    one_hot = np.zeros((len(labels), len(class_subset)), dtype=int)
    for row, sample in enumerate(labels):
        for label in sample:
            if label in index:
                one_hot[row, index[label]] = 1
    return one_hot, list(class_subset)


def one_hot_to_categorical(one_hot, classes):
    """One-hot array (n_samples, n_classes) -> list of label lists."""
    one_hot = np.asarray(one_hot)
    return [[classes[i] for i in np.flatnonzero(row)] for row in one_hot]


def diff(base_annotations, comparison_annotations):
    """Not implemented (as in OpenSoundscape 0.9.0)."""
    raise NotImplementedError("diff of annotation tables is not implemented")
