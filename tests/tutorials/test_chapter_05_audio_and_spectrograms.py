"""The seed's chapter 5 ("Audio and spectrograms"), code blocks [1]-[79] in order, with ``opensoundscape``
changed to ``opso_core`` and nothing else, except:

- [1] downloads ``lmin_audio.wav`` (the seed's spelling): the ``one_minute_audio`` fixture writes a
  recording of the same kind (60 s, 32 kHz) there instead;
- the ``%config`` lines (IPython magic) are left out, and [38]'s player widget goes to a stand-in for
  ``IPython.display`` for that cell (IPython is not a test dependency);
- [42] imports ``pytz`` (a test dependency; it ships with most notebook environments).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")


def test_chapter_05_runs_unchanged(one_minute_audio, ipython_display, capsys):
    # [2]
    audio_filename = "./lmin_audio.wav"
    # [3]
    # import Audio and Spectrogram classes from OpenSoundscape
    from opso_core import Audio, Spectrogram

    # [4]
    from pathlib import Path

    # Settings
    image_shape = (224, 224)  # (height, width) not (width, height)
    image_save_path = Path("./saved_spectrogram.png")
    # Load audio file as Audio object
    audio = Audio.from_file(audio_filename)
    # Create Spectrogram object from Audio object
    spectrogram = Spectrogram.from_audio(audio)
    # Convert Spectrogram object to Python Imaging Library (PIL) Image
    image = spectrogram.to_image(shape=image_shape, invert=True)
    # Save image to file
    image.save(image_save_path)
    # [5]
    Spectrogram.from_audio(Audio.from_file(audio_filename)).to_image(shape=image_shape, invert=True).save(
        image_save_path)
    assert image_save_path.exists()
    # [6]
    image_save_path.unlink()

    # [34]
    audio_object = Audio.from_file(audio_filename)
    audio_object
    # [38]
    with ipython_display() as shown:
        # create playback widget with normalized playback level
        audio_object.show_widget(normalize=True)
    assert shown == [("audio", 60 * 32000, 32000)]
    # [39]
    audio_segment = Audio.from_file(audio_filename, offset=2.0, duration=1.0)
    assert audio_segment.duration == 1.0
    # [40]
    print(f"How many samples does this audio object have? {len(audio_object.samples)}")
    print(f"What is the sampling rate? {audio_object.sample_rate}")
    assert "What is the sampling rate? 32000" in capsys.readouterr().out
    # [41]
    audio_object_resample = Audio.from_file(audio_filename, sample_rate=22050)
    assert audio_object_resample.sample_rate == 22050
    # [42]
    from datetime import datetime; import pytz

    start_time = pytz.timezone("UTC").localize(datetime(2020, 4, 4, 10, 25))
    audio_length = 5  # seconds
    path = "/path/to/audiomoth_recording.WAV"  # an AudioMoth recording
    # this line is commented because it will fail unless you specify a valid path in the line above
    # Audio.from_file(path, start_timestamp=start_time,duration=audio_length)

    # [43]
    audio_object.save("./my_audio.wav")
    # [44]
    from pathlib import Path

    Path("./my_audio.wav").unlink()
    # [45]
    print(f"duration: {audio_object.duration}")
    print(f"rms: {audio_object.rms:0.3f}")
    print(f"dBFS: {audio_object.dBFS:0.1f}")
    assert "duration: 60.0" in capsys.readouterr().out
    # [46]
    trimmed = audio_object.trim(0, 5)
    assert trimmed.duration == 5.0
    # [47]
    # split into 5-second clips with no overlap between adjacent clips
    clips, clip_df = audio_object.split(clip_duration=5, clip_overlap=0, final_clip=None)
    # check the duration of the Audio object in the first returned element
    print(f"duration of first clip: {clips[0].duration}")
    print(f"head of clip_df")
    clip_df.head(3)
    assert clip_df.head(3).values.tolist() == [[0.0, 5.0], [5.0, 10.0], [10.0, 15.0]]
    # [48]
    _, clip_df = audio_object.split(clip_duration=5, clip_overlap=2.5, final_clip=None)
    print(f"head of clip_df")
    clip_df.head()
    assert clip_df["start_time"].head().tolist() == [0.0, 2.5, 5.0, 7.5, 10.0]
    # [49]
    # split into 5-second clips with no overlap between adjacent clips
    Path("./temp_audio").mkdir(exist_ok=True)
    clip_df = audio_object.split_and_save(
        destination="./temp_audio",
        prefix="audio_clip_",
        clip_duration=5,
        clip_overlap=0,
        final_clip=None,
    )
    print(f"head of clip_df")
    clip_df.head()
    assert Path(clip_df.index[0]).name == "audio_clip__0.0s_5.0s.wav" and Path(clip_df.index[0]).exists()
    # [50]
    from shutil import rmtree

    rmtree("./temp_audio")
    # [51]
    clip_df = audio_object.split_and_save(
        destination="./temp_audio",
        prefix="audio_clip_",
        clip_duration=5,
        clip_overlap=-5,
        final_clip=None,
        dry_run=True,
    )
    clip_df
    assert clip_df["start_time"].tolist()[:3] == [0.0, 10.0, 20.0] and not Path("./temp_audio").exists()

    # [55]
    import matplotlib.pyplot as plt

    # create an audio object twice as long, extending the end with silence (zero-values)
    extended = trimmed.extend(trimmed.duration * 2)
    print(f"duration of original clip: {trimmed.duration}")
    print(f"duration of extended clip: {extended.duration}")
    print(f"samples of extended clip:")
    plt.plot(extended.samples)
    plt.show()
    assert extended.duration == 10.0
    # [56]
    looped = trimmed.loop(trimmed.duration * 1.5)
    print(looped.duration)
    plt.plot(looped.samples)
    assert looped.duration == 7.5
    # [57]
    looped = trimmed.loop(n=5)
    print(looped.duration)
    plt.plot(looped.samples)
    assert looped.duration == 25.0
    # [58]
    resampled = trimmed.resample(sample_rate=48000)
    assert resampled.sample_rate == 48000
    # [59]
    # calculate the fft
    fft_spectrum, frequencies = trimmed.spectrum()
    # plot settings
    from matplotlib import pyplot as plt

    plt.rcParams["figure.figsize"] = [15, 5]  # for big visuals
    # plot
    plt.plot(frequencies, fft_spectrum)
    plt.ylabel("Fast Fourier Transform (V**2/Hz)")
    plt.xlabel("Frequency (Hz)")
    # [60]
    # apply a bandpass filter
    bandpassed = trimmed.bandpass(low_f=1000, high_f=5000, order=9)
    # calculate the bandpassed audio's spectrum
    fft_spectrum, frequencies = bandpassed.spectrum()
    # plot
    print("spectrum after bandpassing the audio:")
    plt.plot(frequencies, fft_spectrum)
    plt.ylabel("Fast Fourier Transform (V**2/Hz)")
    plt.xlabel("Frequency (Hz)")

    # [61]
    audio_object = Audio.from_file(audio_filename)
    spectrogram_object = Spectrogram.from_audio(audio_object)
    # [62]
    spec = Spectrogram.from_audio(Audio.from_file(audio_filename))
    print(f"the first few times: {spec.times[0:5]}")
    print(f"the first few frequencies: {spec.frequencies[0:5]}")
    out = capsys.readouterr().out
    assert "the first few times: [0.008 0.016 0.024 0.032 0.04 ]" in out
    assert "the first few frequencies: [  0.   62.5 125.  187.5 250. ]" in out
    # [63]
    audio_object = Audio.from_file(audio_filename)
    spectrogram_object = Spectrogram.from_audio(audio_object)
    spectrogram_object.plot()
    # [64]
    # Load audio
    audio = Audio.from_file(audio_filename, sample_rate=22000).trim(0, 5)
    # [65]
    spec = Spectrogram.from_audio(audio, window_samples=55, overlap_samples=0)
    spec.plot()
    # [66]
    spec = Spectrogram.from_audio(audio, window_samples=1100, overlap_samples=0)
    spec.plot()
    # [67]
    audio_object = Audio.from_file(audio_filename)
    spectrogram_object = Spectrogram.from_audio(audio_object)
    spectrogram_object.plot()
    # [68]
    # Trim the original audio
    trimmed = audio_object.trim(0, 5)
    # Create a spectrogram from the trimmed audio
    spec = Spectrogram.from_audio(trimmed)
    # Plot the spectrogram
    spec.plot()
    # [69]
    print("Type of `spectrogram_audio` (before conversion):", type(spectrogram_object))
    spectrogram_image = spectrogram_object.to_image()
    print("Type of `spectrogram_image` (after conversion):", type(spectrogram_image))
    assert "<class 'PIL.Image.Image'>" in capsys.readouterr().out
    # [70]
    image_path = Path("./saved_spectrogram.png")
    spectrogram_image.save(image_path)
    # [71]
    image_shape = (512, 512)
    large_image_path = Path("./saved_spectrogram_large.png")
    spectrogram_image = spectrogram_object.to_image(shape=image_shape)
    spectrogram_image.save(large_image_path)
    assert spectrogram_image.size == (512, 512)
    # [72]
    image_path.unlink()
    large_image_path.unlink()
    # [73]
    spec_trimmed = spec.trim(1.7, 3.9)
    spec_trimmed.plot()
    # [74]
    baww_low_freq = 5500
    baww_high_freq = 9500
    # [75]
    spec_bandpassed = spec_trimmed.bandpass(baww_low_freq, baww_high_freq)
    spec_bandpassed.plot()
    # [76]
    # calculate amplitude signal
    high_freq_amplitude = spec_trimmed.amplitude()
    # plot
    from matplotlib import pyplot as plt

    plt.plot(spec_trimmed.times, high_freq_amplitude)
    plt.xlabel("time (sec)")
    plt.ylabel("amplitude")
    plt.show()
    # [77]
    spec_bandpassed = spec_trimmed.bandpass(8000, 8500)
    spec_bandpassed.plot()
    # [78]
    # Get amplitude signal
    high_freq_amplitude = spec_trimmed.amplitude(freq_range=[8000, 8500])
    # Get amplitude signal
    high_freq_amplitude = spec_trimmed.amplitude(freq_range=[8000, 8500])
    # Plot signal
    plt.plot(spec_trimmed.times, high_freq_amplitude)
    plt.xlabel("time (sec)")
    plt.ylabel("amplitude")
    plt.show()
    plt.close("all")
    # [79]
    # delete the file we downloaded for the tutorial
    Path("lmin_audio.wav").unlink()
