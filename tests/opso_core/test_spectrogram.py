import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from opso_core import Audio, MelSpectrogram, Spectrogram
from opso_core.errors import OpsoTypeError, OpsoValueError
from opso_core.spectrogram import SpectrogramParams, spectrograms_from_clips
from opso_core.testing import tone

# values are float32 (as OpenSoundscape's) from a float64 transform: one float32 step at -100 dB is 7.6e-6 dB
DB_ATOL = 2e-5


def scipy_db(samples, sr, limits=(-100, -20), **kwargs):
    f, t, p = scipy.signal.spectrogram(np.asarray(samples, dtype=np.float64), sr, scaling=kwargs.pop("scaling", "spectrum"),
                                       **kwargs)
    with np.errstate(divide="ignore"):
        db = 10 * np.log10(p)
    return f, t, np.clip(db, *limits)


@pytest.fixture(scope="module")
def noisy_tone():
    rng = np.random.default_rng(0)
    samples = 0.3 * np.sin(2 * np.pi * 3000 * np.arange(5 * 22050) / 22050) + 0.01 * rng.standard_normal(5 * 22050)
    return Audio(samples.astype(np.float32), 22050)


class TestFromAudio:
    def test_defaults_match_scipy(self, noisy_tone):
        spec = Spectrogram.from_audio(noisy_tone)
        f, t, db = scipy_db(noisy_tone.samples, 22050, window="hann", nperseg=512, noverlap=256)
        assert spec.spectrogram.shape == (257, (5 * 22050 - 512) // 256 + 1)
        np.testing.assert_allclose(spec.frequencies, f)
        np.testing.assert_allclose(spec.times, t)
        np.testing.assert_allclose(spec.spectrogram, db, atol=DB_ATOL)
        assert spec.window_samples == 512 and spec.overlap_samples == 256
        assert spec.audio_sample_rate == 22050 and spec.scaling == "spectrum"
        assert spec.decibel_limits == (-100, -20)

    @pytest.mark.parametrize("kwargs", [
        dict(window_samples=55, overlap_samples=0),
        dict(window_samples=1100, overlap_samples=0),
        dict(window_samples=256, overlap_fraction=0.75, window_type="hamming"),
        dict(window_samples=300, overlap_samples=100, fft_size=1024),
        dict(window_samples=511, overlap_samples=3, scaling="density"),
    ])
    def test_parameters_match_scipy(self, noisy_tone, kwargs):
        spec = Spectrogram.from_audio(noisy_tone, decibel_limits=(-150, 0), **kwargs)
        nperseg = kwargs["window_samples"]
        noverlap = kwargs.get("overlap_samples", int(nperseg * kwargs.get("overlap_fraction", 0)))
        f, t, db = scipy_db(noisy_tone.samples, 22050, limits=(-150, 0), window=kwargs.get("window_type", "hann"),
                            nperseg=nperseg, noverlap=noverlap, nfft=kwargs.get("fft_size"),
                            scaling=kwargs.get("scaling", "spectrum"))
        np.testing.assert_allclose(spec.spectrogram, db, atol=DB_ATOL)
        np.testing.assert_allclose(spec.times, t)
        np.testing.assert_allclose(spec.frequencies, f)

    def test_window_length_sec(self):
        a = tone(1000, 1.0, 22000)
        spec = Spectrogram.from_audio(a, window_length_sec=0.0025, overlap_samples=0)
        assert spec.window_samples == 55 and spec.times.shape == (400,)
        assert spec.frequencies[1] == 400

    def test_linear_power_when_not_db(self):
        a = tone(1000, 1.0, 8000, amplitude=1.0)
        spec = Spectrogram.from_audio(a, dB_scale=False, window_samples=800, overlap_samples=0)
        # a unit sine has power 0.5 in its bin with scaling="spectrum" (one-sided)
        assert spec.spectrogram[100].mean() == pytest.approx(0.5, rel=1e-3)

    def test_db_limits_clip(self):
        spec = Spectrogram.from_audio(Audio.silence(1, 8000))
        assert np.all(spec.spectrogram == -100)

    @pytest.mark.parametrize("kwargs", [dict(window_samples=512, window_length_sec=0.1),
                                        dict(overlap_samples=1, overlap_fraction=0.5),
                                        dict(overlap_fraction=1.0), dict(window_samples=512, overlap_samples=512),
                                        dict(scaling="psd"), dict(window_type="nonsense"),
                                        dict(decibel_limits=(0, -10)), dict(fft_size=256)])
    def test_invalid_parameters(self, noisy_tone, kwargs):
        with pytest.raises(OpsoValueError):
            Spectrogram.from_audio(noisy_tone, **kwargs)

    def test_too_short(self):
        with pytest.raises(OpsoValueError, match="shorter than one spectrogram window"):
            Spectrogram.from_audio(Audio(np.zeros(100), 8000))

    def test_not_audio(self):
        with pytest.raises(OpsoTypeError):
            Spectrogram.from_audio(np.zeros(1000))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(64, 4000), window=st.integers(2, 64), overlap_frac=st.floats(0, 0.95))
def test_shape_is_a_function_of_window_and_overlap(n, window, overlap_frac):
    overlap = int(window * overlap_frac)
    spec = Spectrogram.from_audio(Audio(np.ones(n, dtype=np.float32), 1000), window_samples=window,
                                  overlap_samples=overlap)
    assert spec.spectrogram.shape == (window // 2 + 1, (n - window) // (window - overlap) + 1)
    assert spec.duration <= n / 1000 + 1e-9


class TestBatch:
    def test_batch_equals_per_clip(self, noisy_tone):
        clips, _ = noisy_tone.split(1.0)
        batch = np.stack([c.samples for c in clips])
        values, f, t = spectrograms_from_clips(batch, 22050)
        assert values.shape == (5, 257, (22050 - 512) // 256 + 1)
        for i, clip in enumerate(clips):
            spec = Spectrogram.from_audio(clip)
            np.testing.assert_array_equal(values[i], spec.spectrogram)
            np.testing.assert_array_equal(t, spec.times)
        np.testing.assert_array_equal(f, spec.frequencies)

    def test_batch_of_audio_split_clips(self, noisy_tone):
        """What Audio.split returns (a list of Audio) is taken as it is, as the README shows."""
        clips, _ = noisy_tone.split(1.0, clip_overlap=0.25, final_clip="full")
        values, _, _ = spectrograms_from_clips(clips, 22050)
        stacked, _, _ = spectrograms_from_clips(np.stack([c.samples for c in clips]), 22050)
        np.testing.assert_array_equal(values, stacked)
        assert len(values) == len(clips) == 7
        np.testing.assert_array_equal(values[3], Spectrogram.from_audio(clips[3]).spectrogram)
        ragged, _ = noisy_tone.split(1.0, final_clip="remainder")
        with pytest.raises(OpsoValueError, match="of one length"):
            spectrograms_from_clips([*clips, ragged[-1].trim(0, 0.3)], 22050)
        with pytest.raises(OpsoValueError, match="sample rate 16000 Hz"):
            spectrograms_from_clips([clips[0].resample(16000)], 22050)

    def test_batch_with_params_and_float32(self, noisy_tone):
        params = SpectrogramParams.resolve(22050, window_samples=256, overlap_fraction=0.5,
                                           decibel_limits=(-120, 0))
        batch = noisy_tone.samples[: 4 * 11025].reshape(4, 11025)
        values, _, _ = spectrograms_from_clips(batch, 22050, params=params)
        assert values.dtype == np.float32
        ref = Spectrogram.from_audio(Audio(batch[2], 22050), window_samples=256, overlap_fraction=0.5,
                                     decibel_limits=(-120, 0))
        np.testing.assert_allclose(values[2], ref.spectrogram, atol=1e-4)
        with pytest.raises(OpsoValueError):
            spectrograms_from_clips(batch, 22050, params=params, window_samples=128)
        with pytest.raises(OpsoValueError):
            spectrograms_from_clips(batch[0], 22050)

    def test_params_are_hashable(self):
        p = SpectrogramParams.resolve(32000)
        assert hash(p) == hash(SpectrogramParams.resolve(32000, window_samples=512, overlap_fraction=0.5))
        assert p.as_dict()["window_samples"] == 512


class TestMethods:
    @pytest.fixture
    def spec(self):
        return Spectrogram.from_audio(mix_tones())

    def test_geometry(self, spec):
        assert spec.window_length == 512 / 16000
        assert spec.window_step == 256 / 16000
        np.testing.assert_allclose(spec.window_start_times, spec.times - 256 / 16000)
        assert spec.window_start_times[0] == 0
        assert spec.duration == pytest.approx(spec.times[-1] + 256 / 16000)
        assert spec.duration <= 4.0

    def test_trim(self, spec):
        trimmed = spec.trim(1.0, 2.0)
        assert trimmed.times[0] == pytest.approx(1.0, abs=spec.window_step / 2 + 1e-9)
        assert trimmed.times[-1] == pytest.approx(2.0, abs=spec.window_step / 2 + 1e-9)
        assert trimmed.spectrogram.shape == (257, len(trimmed.times))
        assert trimmed.window_samples == 512  # settings survive
        with pytest.raises(OpsoValueError):
            spec.trim(2, 1)

    def test_bandpass(self, spec):
        band = spec.bandpass(1000, 3000)
        assert band.frequencies[0] == 1000 and band.frequencies[-1] == 3000
        assert band.spectrogram.shape == (len(band.frequencies), len(spec.times))
        assert spec.bandpass(-100, 99999).spectrogram.shape == spec.spectrogram.shape
        with pytest.raises(OpsoValueError):
            spec.bandpass(-100, 3000, out_of_bounds_ok=False)
        with pytest.raises(OpsoValueError):
            spec.bandpass(3000, 1000)

    def test_amplitude(self, spec):
        amp = spec.amplitude()
        np.testing.assert_allclose(amp, spec.spectrogram.sum(0))
        band = spec.amplitude(freq_range=[1900, 2100])
        assert band.shape == spec.times.shape
        np.testing.assert_allclose(band, spec.bandpass(1900, 2100).spectrogram.sum(0))

    def test_net_amplitude(self, spec):
        net = spec.net_amplitude([1500, 2500])
        np.testing.assert_allclose(net, spec.amplitude([1500, 2500]) / 1000)
        net = spec.net_amplitude([1500, 2500], reject_bands=[[100, 600], [5000, 6000]])
        expected = (spec.amplitude([1500, 2500]) / 1000 - spec.amplitude([100, 600]) / 1500
                    - spec.amplitude([5000, 6000]) / 1500)
        np.testing.assert_allclose(net, np.maximum(expected, 0))
        assert np.all(net >= 0)

    def test_scaling(self, spec):
        lin = spec.linear_scale((0, 1))
        assert lin.spectrogram.min() >= 0 and lin.spectrogram.max() <= 1
        np.testing.assert_allclose(lin.spectrogram, (spec.spectrogram + 100) / 80)
        mm = spec.min_max_scale((-1, 1))
        assert mm.spectrogram.min() == -1 and mm.spectrogram.max() == 1
        limited = spec.limit_db_range(-80, -30)
        assert limited.spectrogram.min() == -80 and limited.spectrogram.max() == -30
        with pytest.raises(OpsoValueError):
            spec.limit_db_range(-20, -80)
        with pytest.raises(OpsoValueError):
            spec.linear_scale((1, 0))

    def test_immutable(self, spec):
        with pytest.raises(AttributeError):
            spec.times = np.zeros(3)

    def test_to_image_types(self, spec):
        img = spec.to_image()
        assert isinstance(img, Image.Image) and img.size == (len(spec.times), 257) and img.mode == "L"
        img = spec.to_image(shape=(224, 224), channels=3, colormap="jet")
        assert img.size == (224, 224) and img.mode == "RGB"
        arr = spec.to_image(shape=(100, 200), return_type="np")
        assert arr.shape == (1, 100, 200) and arr.dtype == np.float32
        assert arr.min() >= 0 and arr.max() <= 1
        ten = spec.to_image(shape=(64, 32), channels=3, return_type="torch")
        assert isinstance(ten, torch.Tensor) and tuple(ten.shape) == (3, 64, 32)
        assert float(ten.min()) >= 0 and float(ten.max()) <= 1
        assert spec.to_image(shape=(None, 50), return_type="np").shape == (1, 257, 50)

    def test_to_image_orientation_and_values(self):
        values = np.full((4, 3), -100.0)
        values[3, :] = -20.0  # loud top frequency row
        spec = Spectrogram(values, np.arange(4.0), np.arange(3.0), (-100, -20))
        arr = spec.to_image(return_type="np")[0]
        assert arr[0].tolist() == [1.0, 1.0, 1.0]  # high frequencies at the top, loud is 1
        assert arr[1:].max() == 0
        inv = spec.to_image(return_type="np", invert=True)[0]
        assert inv[0].tolist() == [0.0, 0.0, 0.0]
        pil = np.asarray(spec.to_image())
        assert pil[0].tolist() == [255, 255, 255] and pil[1:].max() == 0

    def test_to_image_invalid(self, spec):
        with pytest.raises(OpsoValueError):
            spec.to_image(return_type="jpeg")
        with pytest.raises(OpsoValueError):
            spec.to_image(colormap="jet", channels=1)

    def test_plot(self, spec, tmp_path):
        spec.plot(fname=tmp_path / "s.png")
        assert (tmp_path / "s.png").stat().st_size > 1000

    def test_constructor_validation(self):
        with pytest.raises(OpsoValueError, match="shape mismatch"):
            Spectrogram(np.zeros((3, 4)), np.zeros(3), np.zeros(5), (-100, -20))
        with pytest.raises(OpsoTypeError):
            Spectrogram([[0]], np.zeros(1), np.zeros(1), (-100, -20))


def mix_tones():
    from opso_core.audio import mix

    return mix([tone(f, 4.0, 16000) for f in (500, 2000, 5000)], gain=-6)


class TestMel:
    def test_shape_and_frequencies(self):
        a = tone(1000, 2.0, 22050)
        mel = MelSpectrogram.from_audio(a, n_mels=64)
        assert mel.spectrogram.shape == (64, (44100 - 512) // 256 + 1)
        assert mel.frequencies[0] == 0 and mel.frequencies[-1] == pytest.approx(11025)
        assert np.all(np.diff(mel.frequencies) > 0)
        assert mel.spectrogram.max() <= -20 and mel.spectrogram.min() >= -100
        assert repr(mel).startswith("<MelSpectrogram")

    def test_tone_lands_in_its_band(self):
        for f0 in (500, 2000, 6000):
            mel = MelSpectrogram.from_audio(tone(f0, 1.0, 22050), n_mels=40, dB_scale=False)
            peak_band = int(np.argmax(mel.spectrogram.mean(1)))
            from opso_core.mel import mel_frequencies
            edges = mel_frequencies(42, 0, 11025)
            assert edges[peak_band] <= f0 <= edges[peak_band + 2]

    def test_trim_keeps_class(self):
        mel = MelSpectrogram.from_audio(tone(1000, 2.0, 22050))
        assert isinstance(mel.trim(0.5, 1.0), MelSpectrogram)

    def test_plot(self, tmp_path):
        MelSpectrogram.from_audio(tone(1000, 2.0, 22050)).plot(fname=tmp_path / "m.png")
        assert (tmp_path / "m.png").exists()


@pytest.mark.parametrize("name", ["hann", "hamming", "blackman", ("tukey", 0.3)])
@pytest.mark.parametrize("n", [1, 2, 55, 256, 511, 512, 1100])
def test_windows_are_scipys_to_the_bit(name, n):
    from opso_core.stft import _window

    np.testing.assert_array_equal(_window(name, n), scipy.signal.get_window(name, n))


def test_values_are_float32_for_float32_audio_and_float64_for_float64(noisy_tone):
    assert Spectrogram.from_audio(noisy_tone).spectrogram.dtype == np.float32
    as64 = Audio(noisy_tone.samples.astype(np.float64), noisy_tone.sample_rate)
    spec64 = Spectrogram.from_audio(as64)
    assert spec64.spectrogram.dtype == np.float64
    np.testing.assert_allclose(spec64.spectrogram, Spectrogram.from_audio(noisy_tone).spectrogram, atol=DB_ATOL)


def test_resize_matrix_small_cases():
    from opso_core.image_resize import resize_image, resize_matrix

    np.testing.assert_array_equal(resize_matrix(5, 5), np.eye(5))
    # upsampling 2 -> 4: samples at -0.25, 0.25, 0.75, 1.25, mirrored about the edge samples
    np.testing.assert_allclose(resize_matrix(2, 4) @ np.array([0.0, 1.0]), [0.25, 0.25, 0.75, 0.75])
    for n_in, n_out in [(257, 224), (171, 224), (513, 100), (1, 3), (7, 1)]:
        m = resize_matrix(n_in, n_out)
        assert m.shape == (n_out, n_in) and (m >= 0).all()
        np.testing.assert_allclose(m.sum(axis=1), 1.0)
    image = np.full((30, 40, 2), 0.3)
    np.testing.assert_allclose(resize_image(image, (7, 90)), 0.3)
