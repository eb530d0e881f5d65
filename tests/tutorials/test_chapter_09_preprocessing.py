"""The seed's chapter 9 ("Preprocessing audio samples with OpenSoundscape"), code blocks [1]-[99] in
order, with ``opensoundscape`` changed to ``opso_core`` and nothing else, except:

- [2]'s ``%config`` line (IPython magic) and ``IPython.display`` (not installed) are left out;
- [4] downloads the woodcock data: the ``woodcock_labeled_data`` fixture makes a folder of the same
  layout instead (synthetic calls), and the working directory is the one that holds it;
- [91]'s ``AudioGate.go`` is printed with its indentation lost (PDF extraction); it is written with
  the evident indentation, reading ``sample.data`` as the audio;
- ``plt.show()`` runs on matplotlib's Agg backend.

Printed outputs that the tutorial shows are asserted where they are facts (pipeline contents,
parameters, labels), not pixels.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")


def test_chapter_09_runs_unchanged(woodcock_labeled_data, capsys):
    # [1]
    # Preprocessor classes are used to load, transform, and augment audio samples for use in a machine learning model
    from opso_core.preprocess.preprocessors import SpectrogramPreprocessor
    from opso_core.ml.datasets import AudioFileDataset, AudioSplittingDataset

    # helper function for displaying a sample as an image
    from opso_core.preprocess.utils import show_tensor, show_tensor_grid

    # other utilities and packages
    import torch
    import pandas as pd
    import numpy as np
    import random

    # [2]
    from matplotlib import pyplot as plt

    plt.rcParams["figure.figsize"] = [15, 5]  # for large visuals

    # [3]
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)

    # [5]
    labels = pd.read_csv("./woodcock_labeled_data/one_hot_labels.csv").set_index("file")
    labels.index = pd.Series(labels.index).apply(lambda f: "./woodcock_labeled_data/" + f)
    labels.head()
    assert list(labels.columns) == ["present", "absent"]

    # [6]
    pre = SpectrogramPreprocessor(sample_duration=2.0)
    # [7]
    dataset = AudioFileDataset(labels, pre)
    # [8]
    sample = dataset[0]  # loads and preprocesses the sample at row 0 of dataset.df
    assert (sample.start_time, sample.labels["present"]) == (0.0, 1)
    assert tuple(sample.data.shape) == (3, 224, 224)

    # [9]
    from opso_core.preprocess.utils import show_tensor_grid

    pre = SpectrogramPreprocessor(sample_duration=2.0)
    dataset = AudioFileDataset(labels, pre)
    tensors = [dataset[i].data for i in range(9)]
    sample_labels = [list(dataset[i].labels[dataset[i].labels > 0].index) for i in range(9)]
    _ = show_tensor_grid(tensors, 3, labels=sample_labels)
    assert sample_labels[0] == ["present"] and sample_labels[1] == ["absent"]

    # [10]
    dataset.bypass_augmentations = True
    tensors = [dataset[i].data for i in range(9)]
    sample_labels = [list(dataset[i].labels[dataset[i].labels > 0].index) for i in range(9)]
    _ = show_tensor_grid(tensors, 3, labels=sample_labels)

    # [15]
    prediction_df = pd.DataFrame(index=["./woodcock_labeled_data/field_data/60s_field_data_sample_1.wav"])
    # [17]
    pre = SpectrogramPreprocessor(sample_duration=2.0)
    splitting_dataset = AudioSplittingDataset(prediction_df, pre, overlap_fraction=0.5)
    splitting_dataset.bypass_augmentations = True
    # get the first 9 samples and plot them
    tensors = [splitting_dataset[i].data for i in range(9)]
    _ = show_tensor_grid(tensors, 3)
    assert [splitting_dataset[i].start_time for i in range(3)] == [0.0, 1.0, 2.0]

    # [18]
    # inspect the current pipeline (ordered sequence of Actions to take)
    preprocessor = SpectrogramPreprocessor(sample_duration=2)
    preprocessor.pipeline
    assert list(preprocessor.pipeline.index) == ["load_audio", "random_trim_audio", "trim_audio", "to_spec",
                                                 "bandpass", "to_tensor", "time_mask", "frequency_mask",
                                                 "add_noise", "rescale", "random_affine"]

    def multiply(x, n):
        return x * n

    # [19]
    # since the pipeline is a series, we can access elements like pipeline.to_spec as well as pipeline['to_spec']
    preprocessor.pipeline.to_spec.params
    assert preprocessor.pipeline.to_spec.params["window_type"] == "hann"
    assert tuple(preprocessor.pipeline.to_spec.params["decibel_limits"]) == (-100, -20)
    # [20]
    preprocessor.pipeline.to_spec.set(dB_scale=False)
    # [21]
    preprocessor.pipeline.to_spec.params.window_samples = 512
    preprocessor.pipeline.to_spec.params["overlap_fraction"] = 0.75
    preprocessor.pipeline.to_spec.params
    params = preprocessor.pipeline.to_spec.params
    assert (params["window_samples"], params["overlap_fraction"], params["dB_scale"]) == (512, 0.75, False)

    # [22]
    preprocessor = SpectrogramPreprocessor(sample_duration=2.0)
    # turn off augmentations other than noise
    preprocessor.pipeline.add_noise.bypass = True
    preprocessor.pipeline.time_mask.bypass = True
    preprocessor.pipeline.frequency_mask.bypass = True
    # printing the pipeline will show which actions are bypassed
    preprocessor.pipeline
    assert "## Bypassed ##" in repr(preprocessor.pipeline.add_noise)

    # [24]
    dataset = AudioFileDataset(labels, preprocessor)
    print("random affine off")
    preprocessor.pipeline.random_affine.bypass = True
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)
    plt.show()
    print("random affine on")
    preprocessor.pipeline.random_affine.bypass = False
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)

    # [25]
    # The AudioLoader Action that is still on
    assert preprocessor.pipeline.load_audio.bypass is False
    # [26]
    # The frequency_mask Action that we turned off
    assert preprocessor.pipeline.frequency_mask.bypass is True

    # [30]
    # initialize a preprocessor
    preprocessor = SpectrogramPreprocessor(2.0)
    print("original pipeline:")
    [print(p) for p in pre.pipeline]
    # overwrite the pipeline with a slice of the original pipeline
    print("\nnew pipeline:")
    preprocessor.pipeline = preprocessor.pipeline[0:4]
    [print(p) for p in preprocessor.pipeline]
    print("\nWe now have a preprocessor that returns Spectrograms instead of Tensors:")
    dataset = AudioFileDataset(labels, preprocessor)
    print(f"Type of returned sample: {type(dataset[0].data)}")
    dataset[0].data.plot()
    assert "Spectrogram" in capsys.readouterr().out

    # [31]
    # initialize a preprocessor
    preprocessor = SpectrogramPreprocessor(2.0)
    pre.pipeline

    # [35]
    # pass a sample through the preprocessor's pipeline
    sample = preprocessor.forward(labels.index.values[0], trace=True)
    sample.trace
    assert list(sample.trace.index) == list(preprocessor.pipeline.index)
    # [38]
    # Initial audio
    assert repr(sample.trace["load_audio"]) == "<Audio(samples=(88200,), sample_rate=44100)>"
    # [39]
    # Initial spectrogram
    sample.trace["to_spec"].plot()
    # [40]
    # After applying frequency mask
    show_tensor(sample.trace["frequency_mask"], invert=True, transform_from_zero_centered=True)

    # [41]
    pre = SpectrogramPreprocessor(sample_duration=2)
    pre.pipeline.load_audio.set(sample_rate=24000)
    assert pre.forward(labels.index.values[0], bypass_augmentations=True, trace=True).trace[
        "load_audio"].sample_rate == 24000

    # [43]
    dataset = AudioFileDataset(labels, SpectrogramPreprocessor(sample_duration=2))
    dataset.bypass_augmentations = True
    print("default parameters:")
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)
    plt.show()
    print("high time resolution, low frequency resolution:")
    dataset.preprocessor.pipeline.to_spec.set(window_samples=64)
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)

    # [44]
    dataset = AudioFileDataset(labels, SpectrogramPreprocessor(2.0))
    print("default parameters:")
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)
    print("bandpassed to 2-4 kHz:")
    dataset.preprocessor.pipeline.bandpass.set(min_f=2000, max_f=4000)
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)

    # [48]
    assert tuple(dataset.preprocessor.out_shape) == (224, 224, 3)
    # [50]
    dataset = AudioFileDataset(labels, SpectrogramPreprocessor(2.0))
    dataset.preprocessor.out_shape = [100, 500, 3]
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)
    assert tuple(dataset[0].data.shape) == (3, 100, 500)

    # [52]
    dataset = AudioFileDataset(labels, SpectrogramPreprocessor(2.0))
    dataset.bypass_augmentations = True
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)
    # [53]
    dataset.bypass_augmentations = False
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)

    # [55]
    # initialize a preprocessor
    preprocessor = SpectrogramPreprocessor(2.0)
    # turn off augmentations other than overlay
    preprocessor.pipeline.random_affine.bypass = True
    preprocessor.pipeline.time_mask.bypass = True
    preprocessor.pipeline.add_noise.bypass = True
    # allow up to 20 horizontal masks, each spanning up to 0.1x the height of the image.
    preprocessor.pipeline.frequency_mask.set(max_width=0.03, max_masks=20)
    # preprocess the same sample 4 times
    dataset = AudioFileDataset(labels, preprocessor)
    tensors = [dataset[0].data for i in range(4)]
    fig = show_tensor_grid(tensors, 2)
    plt.show()

    # [56]
    dataset.preprocessor.pipeline.add_noise.bypass = False
    dataset.preprocessor.pipeline.frequency_mask.bypass = True
    # increase the intensity of gaussian noise added to the image
    dataset.preprocessor.pipeline.add_noise.set(std=0.2)
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)

    # [57]
    preprocessor.remove_action("add_noise")
    preprocessor.pipeline
    assert "add_noise" not in preprocessor.pipeline.index

    # [58]
    from opso_core.preprocess.actions import Action, tensor_add_noise

    preprocessor.insert_action(
        action_index="add_noise_NEW",  # give it a name
        action=Action(tensor_add_noise, std=0.01),  # the action object
        after_key="to_tensor",  # where to put it (can also use before_key=...)
    )
    # [59]
    preprocessor.pipeline
    assert list(preprocessor.pipeline.index)[5:7] == ["to_tensor", "add_noise_NEW"]

    # [60]
    from opso_core.preprocess.actions import Action, tensor_add_noise

    try:
        preprocessor.insert_action(
            action_index="add_noise_NEW",  # using the same name as a current action will lead to an AssertionError
            action=Action(tensor_add_noise, std=0.01),  # the action object
            after_key="to_tensor",  # where to put it (can also use before_key=...)
        )
    except AssertionError:
        print("raised AssertionError, as expected")
    assert "raised AssertionError, as expected" in capsys.readouterr().out

    # [61]
    # initialize a preprocessor and provide a dataframe with samples to use as overlays
    preprocessor = SpectrogramPreprocessor(2.0, overlay_df=labels)
    # remove augmentations other than overlay
    for name in ["random_affine", "time_mask", "frequency_mask", "add_noise"]:
        preprocessor.remove_action(name)

    # [63]
    preprocessor.pipeline.overlay.set(overlay_class="present")
    tensors = []
    overlay_weights = [0.01, 0.4, 0.6, 0.8]
    for w in overlay_weights:
        preprocessor.pipeline.overlay.set(overlay_weight=w)
        dataset = AudioFileDataset(labels, preprocessor)
        np.random.seed(0)  # get the same overlay every time
        tensors.append(dataset[2].data)
    _ = show_tensor_grid(tensors, 2, labels=overlay_weights)

    # [64]
    dataset.preprocessor.pipeline.overlay.set(overlay_class="absent", overlay_weight=0.4)
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)
    # [65]
    dataset.preprocessor.pipeline.overlay.set(overlay_class=None)
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)
    # [66]
    dataset.preprocessor.pipeline.overlay.set(update_labels=False, overlay_class="different", overlay_weight=0.8)
    show_tensor(dataset[0].data, invert=True, transform_from_zero_centered=True)

    # [76]
    print("default: labels do not update")
    dataset.preprocessor.pipeline.overlay.set(update_labels=False, overlay_class="different")
    print(f"\t resulting labels: \n {dataset[1].labels}")
    assert dataset[1].labels.to_dict() == {"present": 0, "absent": 1}
    print("Using update_labels=True")
    dataset.preprocessor.pipeline.overlay.set(update_labels=True, overlay_class="different")
    print(f"\t resulting labels: \n {dataset[1].labels}")
    assert dataset[1].labels.to_dict() == {"present": 1, "absent": 1}  # overlaid with a 'present' sample

    # [77]
    from opso_core.preprocess.actions import Action, tensor_add_noise

    class MyPreprocessor(SpectrogramPreprocessor):
        """Child of AudioToSpectrogramPreprocessor with weird augmentation routine"""

        def __init__(
            self,
            magic_parameter,
            sample_duration,
            out_shape=[224, 224, 1],
        ):
            super(MyPreprocessor, self).__init__(
                sample_duration=sample_duration,
                out_shape=out_shape,
            )

            for i in range(magic_parameter):
                action = Action(tensor_add_noise, std=0.1 * magic_parameter)
                self.insert_action(f"noise_{i}", action)

    # [79]
    dataset = AudioFileDataset(labels, MyPreprocessor(sample_duration=2.0, magic_parameter=1))
    show_tensor(dataset[0].data, invert=False)
    # [80]
    dataset = AudioFileDataset(labels, MyPreprocessor(sample_duration=2.0, magic_parameter=4))
    show_tensor(dataset[0].data, invert=False)
    assert [k for k in dataset.preprocessor.pipeline.index if k.startswith("noise_")] == [
        "noise_0", "noise_1", "noise_2", "noise_3"]

    # [91]
    from opso_core.preprocess.actions import BaseAction

    class AudioGate(BaseAction):
        """Replace audio samples below a threshold with 0, but only if label[0]==1

        Audio in, Audio out

        Args:
            threshold: sample values below this will become 0
        """

        def __init__(self, threshold):
            super(AudioGate, self).__init__()
            self.params["threshold"] = threshold

        def go(self, sample, **kwargs):
            threshold = 0.2
            audio = sample.data
            if sample.labels[0] == 1:
                samples = np.array([0 if np.abs(s) < threshold else s for s in audio.samples])
                sample.data = Audio(samples, audio.sample_rate)

    # [96]
    from opso_core.audio import Audio
    from opso_core.sample import AudioSample

    gate_action = AudioGate(threshold=0.2)
    print("histogram of samples")
    audio = Audio.from_file("./woodcock_labeled_data/01c5d0c90bd4652f308fd9c73feb1bf5.wav")
    sample = AudioSample(source=audio, labels={0: 1, 1: 0})
    _ = plt.hist(audio.samples, bins=100)
    plt.semilogy()
    plt.show()
    print("histogram of samples after audio gate")
    gate_action.go(sample)
    _ = plt.hist(sample.data.samples, bins=100)
    plt.semilogy()
    plt.show()
    assert np.all((sample.data.samples == 0) | (np.abs(sample.data.samples) >= 0.2))
    print("histogram of samples after audio gate, when labels[0]==0")
    print("histogram of samples")
    audio = Audio.from_file("./woodcock_labeled_data/01c5d0c90bd4652f308fd9c73feb1bf5.wav")
    sample = AudioSample(source=audio, labels={0: 0, 1: 1})
    gate_action.go(sample)
    _ = plt.hist(sample.data.samples, bins=100)
    plt.semilogy()
    assert sample.data is audio  # not gated

    # [97]
    gate_action = AudioGate(threshold=0.2)
    preprocessor.insert_action(
        action_index="custom_audio_gate",  # give it a name
        action=gate_action,
        before_key="to_spec",  # where to put it (can also use before_key=...)
    )
    # [98]
    preprocessor.pipeline
    assert list(preprocessor.pipeline.index) == ["load_audio", "random_trim_audio", "trim_audio",
                                                 "custom_audio_gate", "to_spec", "bandpass", "to_tensor",
                                                 "overlay", "rescale"]
    plt.close("all")

    # [99]
    import shutil

    shutil.rmtree("./woodcock_labeled_data")
