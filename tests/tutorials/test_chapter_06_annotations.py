"""The seed's chapter 6 ("Annotations"), code blocks [1]-[87] in order, with ``opensoundscape`` changed to
``opso_core`` and nothing else, except:

- [1]'s ``%config`` line (IPython magic) is left out;
- [2] downloads the GWWA recordings and Raven tables: the ``gwwa_audio_and_raven_annotations``
  fixture makes a folder of the same layout (synthetic songs where the tables have boxes);
- the two cells the seed prints unexecuted (``[ ]``) run too; the second uses ``clip_df``, which no
  cell defines: it is the ``clip_df_short_with_overlaps`` the first one makes.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")


def test_chapter_06_runs_unchanged(gwwa_audio_and_raven_annotations, capsys):
    # [1]
    from opso_core.audio import Audio
    from opso_core.spectrogram import Spectrogram
    from opso_core.annotations import BoxedAnnotations

    import numpy as np
    import pandas as pd
    from glob import glob

    from matplotlib import pyplot as plt

    plt.rcParams["figure.figsize"] = [15, 5]  # for big visuals

    # [3]
    # specify an audio file and corresponding raven annotation file
    audio_file = "./gwwa_audio_and_raven_annotations/GWWA_XC/13738.wav"
    annotation_file = "./gwwa_audio_and_raven_annotations/GWWA_XC_AnnoTables/13738.Table.1.selections.txt"

    # [4]
    Spectrogram.from_audio(Audio.from_file(audio_file)).plot()

    # [14]
    # create an object from Raven file
    annotations = BoxedAnnotations.from_raven_files([annotation_file], audio_files=[audio_file])
    # inspect the object's .df attribute, which contains the table of annotations
    annotations.df.head()
    assert annotations.df["annotation"].tolist()[:3] == ["GWWA_song", "GWWA_song", "?"]
    assert annotations.df["start_time"].iloc[0] == 0.459636 and annotations.df["file"].iloc[0] == audio_file
    assert {"Selection", "View", "Channel", "Notes"} <= set(annotations.df.columns)

    # [24]
    annotations = BoxedAnnotations.from_raven_files([annotation_file], keep_extra_columns=["Notes"],
                                                    audio_files=[audio_file])
    annotations.df.head()
    assert list(annotations.df.columns) == ["file", "annotation", "start_time", "end_time", "low_f", "high_f",
                                            "Notes"]

    # [25]
    conversion_table = pd.read_csv("./gwwa_audio_and_raven_annotations/conversion_table.csv")
    conversion_table
    # [26]
    conversion_table = {
        "GWWA_song": "GWWA",
        "?": np.nan,
    }
    # [27]
    annotations_corrected = annotations.convert_labels(conversion_table)
    annotations_corrected.df
    converted = annotations_corrected.df["annotation"]
    assert converted.tolist()[:2] == ["GWWA", "GWWA"] and converted.iloc[2] is np.nan

    # [28]
    classes_to_keep = ["?"]
    annotations_only_unsure = annotations.subset(classes_to_keep)
    annotations_only_unsure.df
    assert annotations_only_unsure.df["annotation"].tolist() == ["?", "?"]
    # [29]
    annotations_only_unsure.to_raven_files("./gwwa_audio_and_raven_annotations/")  # 13738_unsure.txt')
    unsure = BoxedAnnotations.from_raven_files(["./gwwa_audio_and_raven_annotations/13738.selections.txt"])
    assert unsure.df["annotation"].tolist() == ["?", "?"]

    # [30]
    pd.DataFrame({
        "start_time": [0, 5, 10],
        "end_time": [5, 10, 15],
        "COYOTE": [1, 0, 0],
        "DOG": [1, 1, 0],
    })

    # [34]
    # Load the Audio and Annotations
    audio = Audio.from_file(audio_file)
    annotations = BoxedAnnotations.from_raven_files([annotation_file], audio_files=[audio_file])

    # [ ]
    # Split the audio into 5 second clips with no overlap (we use _ because we don't really need to save the
    # audio clip objects for this demo)
    _, clip_df_short_with_overlaps = audio.split(
        clip_duration=3.0,  # How long each clip should be
        clip_overlap=1.0,  # By how many seconds each subsequent clip should overlap
    )
    clip_df_short_with_overlaps.head()
    assert clip_df_short_with_overlaps["start_time"].tolist()[:3] == [0.0, 2.0, 4.0]

    # [ ]
    clip_df = clip_df_short_with_overlaps  # (no cell defines clip_df; see the module docstring)
    # Split the annotations using the returned clip_df
    labels_df = annotations.one_hot_labels_like(
        clip_df,
        min_label_overlap=0.25,  # Minimum label overlap
        class_subset=["GWWA_song"],
    )
    # the returned dataframe of one-hot labels (0/1 for each class and each clip) has rows corresponding to each
    # audio clip
    labels_df.head()
    assert labels_df["GWWA_song"].tolist()[:5] == [1, 1, 1, 1, 0]  # songs at 0.46-2.30 and 6.71-8.25 s

    # [37]
    labels_df = annotations.one_hot_clip_labels(
        full_duration=60,  # The duration of the entire audio file
        clip_duration=5,
        clip_overlap=0,
        class_subset=["GWWA_song"],
        min_label_overlap=0.25,
    )
    labels_df.head()
    assert len(labels_df) == 12 and labels_df["GWWA_song"].tolist()[:4] == [1, 1, 0, 0]

    # [54]
    # Specify folder containing Raven annotations
    raven_files_dir = "./gwwa_audio_and_raven_annotations/GWWA_XC_AnnoTables/"
    # Find all .txt files
    # We'll naively assume all files with the suffix ".txt" are Raven files!
    # A better assumption could be to search for files with the suffix ".selections.txt"
    raven_files = glob(f"{raven_files_dir}/*.txt")
    print(f"found {len(raven_files)} annotation files")
    # Specify folder containing audio files
    audio_files_dir = "./gwwa_audio_and_raven_annotations/GWWA_XC/"
    # Find all audio files (we'll assume they are .wav, .WAV, or .mp3)
    audio_files = glob(f"{audio_files_dir}/*.wav") + glob(f"{audio_files_dir}/*.WAV") + glob(
        f"{audio_files_dir}/*.mp3")
    print(f"found {len(audio_files)} audio files")
    out = capsys.readouterr().out
    assert "found 3 annotation files" in out and "found 3 audio files" in out

    # [55]
    # Pair up the Raven and audio files based on the audio file name
    from pathlib import Path

    audio_df = pd.DataFrame({"audio_file": audio_files})
    audio_df.index = [Path(f).stem for f in audio_files]
    # Check that there aren't duplicate audio file names
    print("\n audio files with duplicate names:")
    audio_df[audio_df.index.duplicated(keep=False)]

    # [56]
    raven_df = pd.DataFrame({"raven_file": raven_files})
    raven_df.index = [Path(f).stem.split(".")[0] for f in raven_files]
    # check that there aren't duplicate audio file names
    print("\n raven files with duplicate names:")
    raven_df[raven_df.index.duplicated(keep=False)]
    assert raven_df.index.duplicated(keep=False).sum() == 2
    # [57]
    # remove the second selection table for file 13738.wav
    raven_df = raven_df[raven_df.raven_file.apply(lambda x: "selections2" not in x)]
    # [58]
    paired_df = audio_df.join(raven_df, how="outer")
    # [59]
    print(f"audio files without raven file: {len(paired_df[paired_df.raven_file.apply(lambda x: x != x)])}")
    paired_df[paired_df.raven_file.apply(lambda x: x != x)]
    # [60]
    # look at unmatched raven files
    print(f"raven files without audio file: {len(paired_df[paired_df.audio_file.apply(lambda x: x != x)])}")
    paired_df[paired_df.audio_file.apply(lambda x: x != x)]
    out = capsys.readouterr().out
    assert "audio files without raven file: 2" in out and "raven files without audio file: 1" in out
    # [61]
    paired_df = paired_df.dropna()
    # [62]
    paired_df
    assert list(paired_df.index) == ["13738"]

    # [63]
    # Choose settings for audio splitting
    clip_duration = 3
    clip_overlap = 0
    final_clip = None
    # [64]
    # Choose settings for annotation splitting
    class_subset = None  # Equivalent to a list of all classes: ['GWWA_song', '?']
    min_label_overlap = 0.1

    # [71]
    boxed_annotations = BoxedAnnotations.from_raven_files(paired_df.raven_file, paired_df.audio_file)
    boxed_annotations.df.head(3)
    # [75]
    label_df = boxed_annotations.one_hot_clip_labels(
        clip_duration=clip_duration,
        clip_overlap=clip_overlap,
        min_label_overlap=min_label_overlap,
        class_subset=class_subset,
        final_clip=final_clip,
    )
    # [76]
    label_df.head(2)
    assert sorted(label_df.columns) == ["?", "GWWA_song"] and len(label_df) == 20

    # [78]
    # ignore the "?" annotations for this visualization
    label_df = label_df[label_df["?"] == 0]

    # [87]
    # plot spectrograms for 3 random positive clips
    positives = label_df[label_df["GWWA_song"] == 1].sample(3, random_state=0)
    print("spectrograms of 3 random positive clips (label=1)")
    for clip, t0, t1 in positives.index.values:
        Spectrogram.from_audio(Audio.from_file(clip, offset=t0, duration=t1 - t0)).plot()
    # plot spectrograms for 5 random negative clips
    negatives = label_df[label_df["GWWA_song"] == 0].sample(3, random_state=0)
    print("spectrogram of 3 random negative clips (label=0)")
    for clip, t0, t1 in negatives.index.values:
        Spectrogram.from_audio(Audio.from_file(clip, offset=t0, duration=t1 - t0)).plot()
    plt.close("all")
