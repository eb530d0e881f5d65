import datetime
import io
import warnings

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from opso_core import Audio
from opso_core.audio import (
    concat,
    estimate_delay,
    load_channels_as_audio,
    mix,
    parse_opso_metadata,
    resample_samples,
)
from opso_core.errors import (
    AudioFileNotFoundError,
    AudioFormatError,
    AudioOutOfBoundsError,
    MixdownWarning,
    OpsoError,
    OpsoTypeError,
    OpsoValueError,
    OutOfBoundsWarning,
    TruncatedAudioError,
    TruncatedAudioWarning,
)
from opso_core.testing import fm_sweep, tone, write_audiomoth_wav, write_bad_files

SR = 32000


@pytest.fixture
def ramp():
    """60 s whose sample i holds i / n: every sample says where it came from."""
    n = 60 * SR
    return Audio(np.arange(n, dtype=np.float64) / n, SR)


@pytest.fixture
def wav_60s(tmp_path):
    path = tmp_path / "ramp.wav"
    samples = (np.arange(60 * SR) % 1000 / 1000 - 0.5).astype(np.float32)
    soundfile.write(path, samples, SR, subtype="FLOAT")
    return path, samples


class TestConstruction:
    def test_basic(self):
        a = Audio([0, 0.5, -0.5], 4)
        assert a.samples.dtype == np.float32 and a.sample_rate == 4 and a.duration == 0.75
        assert repr(a) == "<Audio(samples=(3,), sample_rate=4)>"

    def test_attributes_can_be_set_and_are_checked(self):
        """As in OpenSoundscape 0.9.0 attributes can be assigned; opso checks them like the constructor."""
        a = Audio(np.zeros(4), 4)
        a.metadata = {"duration": 1.0}
        a.sample_rate = 8
        assert a.metadata == {"duration": 1.0} and a.sample_rate == 8 and a.duration == 0.5
        with pytest.raises(OpsoValueError, match="positive whole number"):
            a.sample_rate = 0
        with pytest.raises(ValueError):  # 0.9.0's error type
            a.samples = "abc"
        with pytest.raises(AttributeError, match="no attribute"):
            a.rate = 8
        assert a.sample_rate == 8

    @pytest.mark.parametrize(("samples", "sr", "err"), [
        ("abc", 8000, OpsoTypeError), (np.zeros((2, 10)), 8000, OpsoValueError),
        (np.zeros(10), 0, OpsoValueError), (np.zeros(10), 44.1, OpsoValueError),
        (np.zeros(10), None, OpsoTypeError), (np.zeros(10, dtype=complex), 8000, OpsoTypeError)])
    def test_invalid(self, samples, sr, err):
        with pytest.raises(err):
            Audio(samples, sr)

    def test_errors_are_builtin_subclasses(self):
        with pytest.raises(ValueError):
            Audio(np.zeros(10), -1)

    def test_silence_and_noise(self):
        s = Audio.silence(2.5, 8000)
        assert len(s.samples) == 20000 and not s.samples.any()
        for color in ["white", "pink", "brown", "brownian", "blue", "violet"]:
            n = Audio.noise(2, 8000, color=color, dBFS=-20, seed=1)
            assert len(n.samples) == 16000
            assert n.dBFS == pytest.approx(-20, abs=0.2)
        a, b = Audio.noise(1, 8000, seed=3), Audio.noise(1, 8000, seed=3)
        np.testing.assert_array_equal(a.samples, b.samples)
        with pytest.raises(OpsoValueError):
            Audio.noise(1, 8000, color="plaid")

    def test_noise_spectral_slopes(self):
        def slope(color):
            a = Audio.noise(20, 16000, color=color, seed=0)
            fft, f = a.spectrum()
            keep = (f > 100) & (f < 6000)
            return np.polyfit(np.log10(f[keep]), np.log10(fft[keep] ** 2), 1)[0]
        assert slope("white") == pytest.approx(0, abs=0.1)
        assert slope("pink") == pytest.approx(-1, abs=0.1)
        assert slope("brown") == pytest.approx(-2, abs=0.1)
        assert slope("blue") == pytest.approx(1, abs=0.1)

    def test_measurements(self):
        a = tone(1000, 1.0, 8000, amplitude=1.0)
        assert a.rms == pytest.approx(1 / np.sqrt(2), rel=1e-4)
        assert a.dBFS == pytest.approx(0, abs=1e-3)
        assert Audio.silence(1, 8000).dBFS == -np.inf


class TestTimeOperations:
    def test_trim(self, ramp):
        t = ramp.trim(2.3, 5.0)
        assert len(t.samples) == int(2.7 * SR) and t.duration == pytest.approx(2.7)
        assert t.samples[0] == ramp.samples[int(round(2.3 * SR))]
        assert len(ramp.trim(-1, 1).samples) == SR
        assert len(ramp.trim(59, 100).samples) == SR
        with pytest.raises(OpsoValueError):
            ramp.trim(5, 2)

    def test_trim_shifts_recording_start_time(self):
        t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        a = Audio(np.zeros(SR * 10), SR, metadata={"recording_start_time": t0, "duration": 10.0})
        t = a.trim(2, 4)
        assert t.metadata["recording_start_time"] == t0 + datetime.timedelta(seconds=2)
        assert t.metadata["duration"] == 2.0
        assert a.metadata["duration"] == 10.0  # original untouched

    def test_split_tutorial(self, ramp):
        clips, df = ramp.split(clip_duration=5, clip_overlap=0, final_clip=None)
        assert len(clips) == 12 and clips[0].duration == 5.0
        assert list(df.iloc[:3].itertuples(index=False, name=None)) == [(0.0, 5.0), (5.0, 10.0), (10.0, 15.0)]
        np.testing.assert_array_equal(clips[3].samples, ramp.samples[15 * SR:20 * SR])
        _, df = ramp.split(clip_duration=5, clip_overlap=2.5)
        assert list(df.iloc[:5]["start_time"]) == [0.0, 2.5, 5.0, 7.5, 10.0]

    @pytest.mark.parametrize(("final_clip", "n", "last_duration"), [
        (None, 2, 5.0), ("remainder", 3, 2.0), ("extend", 3, 5.0), ("full", 3, 5.0)])
    def test_split_final_clip(self, final_clip, n, last_duration):
        a = Audio(np.ones(12 * 100), 100)
        clips, df = a.split(5, final_clip=final_clip)
        assert len(clips) == n and clips[-1].duration == last_duration
        if final_clip == "extend":
            assert clips[-1].samples[-1] == 0 and clips[-1].samples[0] == 1

    def test_split_no_clips_warns(self):
        with pytest.warns(OutOfBoundsWarning, match="no clips"):
            clips, df = Audio(np.ones(100), 100).split(5)
        assert clips == [] and len(df) == 0

    def test_split_and_save(self, ramp, tmp_path):
        df = ramp.split_and_save(tmp_path, "audio_clip_", clip_duration=5)
        assert df.index.name == "file" and len(df) == 12
        assert df.index[0] == f"{tmp_path}/audio_clip__0.0s_5.0s.wav"
        back = Audio.from_file(df.index[1])
        assert back.duration == 5.0
        np.testing.assert_allclose(back.samples, ramp.samples[5 * SR:10 * SR], atol=1e-4)

    def test_split_and_save_dry_run(self, ramp, tmp_path):
        df = ramp.split_and_save(tmp_path / "t", "audio_clip_", clip_duration=5, clip_overlap=-5, dry_run=True)
        assert list(df.index) == [f"{tmp_path}/t/audio_clip__{s}.0s_{s + 5}.0s.wav" for s in range(0, 60, 10)]
        assert not (tmp_path / "t").exists()

    def test_extend_and_loop(self):
        a = Audio(np.arange(5 * 100, dtype=np.float32), 100)
        e = a.extend(10)
        assert e.duration == 10.0 and not e.samples[500:].any()
        np.testing.assert_array_equal(e.samples[:500], a.samples)
        looped = a.loop(7.5)
        assert looped.duration == 7.5 and looped.samples[500] == a.samples[0]
        assert a.loop(n=5).duration == 25.0
        with pytest.raises(OpsoValueError):
            a.loop()
        with pytest.raises(OpsoValueError):
            a.loop(length=3, n=2)
        with pytest.raises(OpsoValueError):
            a.extend(1)

    def test_resample(self):
        a = tone(1000, 2.0, SR)
        r = a.resample(48000)
        assert r.sample_rate == 48000 and len(r.samples) == 96000
        fft, f = r.spectrum()
        assert f[np.argmax(fft)] == pytest.approx(1000, abs=1)
        for kind in ["polyphase", "kaiser_best", "kaiser_fast", "fft", "soxr_vhq"]:
            rr = a.resample(22050, resample_type=kind)
            assert len(rr.samples) == pytest.approx(44100, abs=1)
            assert rr.rms == pytest.approx(a.rms, rel=0.01)
        with pytest.raises(OpsoValueError):
            a.resample(16000, resample_type="magic")

    def test_resample_samples_preserves_dtype(self):
        x = np.random.default_rng(0).standard_normal(1000)
        assert resample_samples(x, 1000, 500).dtype == np.float64
        assert resample_samples(x.astype(np.float32), 1000, 500, "polyphase").dtype == np.float32


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), sr=st.sampled_from([100, 8000, 22050, 44100]),
       start=st.floats(-1, 2), length=st.floats(0, 2))
def test_trim_duration_property(n, sr, start, length):
    a = Audio(np.zeros(n, dtype=np.float32), sr)
    t = a.trim(start, start + length)
    expected = min(a.duration, start + length) - max(0.0, start)
    assert t.duration == pytest.approx(max(0.0, expected), abs=1.5 / sr)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), sr=st.sampled_from([100, 8000, 22050]), extra=st.floats(0, 3))
def test_extend_duration_property(n, sr, extra):
    a = Audio(np.ones(n, dtype=np.float32), sr)
    e = a.extend(a.duration + extra)
    assert e.duration == pytest.approx(a.duration + extra, abs=0.5 / sr + 1e-12)
    np.testing.assert_array_equal(e.samples[:n], a.samples)


class TestFrequencyAndLevel:
    def test_spectrum_peak(self):
        fft, f = tone(440, 1.0, 8000, amplitude=0.5).spectrum()
        assert len(fft) == 4000 and f[1] == 1.0
        assert f[np.argmax(fft)] == 440 and fft.max() == pytest.approx(0.5, rel=1e-3)

    def band_level(self, audio, f0):
        fft, f = audio.spectrum()
        return fft[np.argmin(np.abs(f - f0))]

    def test_bandpass_keeps_band(self):
        mixture = mix([tone(f, 2.0, 16000) for f in (300, 2000, 6000)], gain=0)
        out = mixture.bandpass(1000, 4000, order=9)
        assert self.band_level(out, 2000) == pytest.approx(self.band_level(mixture, 2000), rel=0.02)
        assert self.band_level(out, 300) < 1e-3 * self.band_level(mixture, 300)
        assert self.band_level(out, 6000) < 1e-3 * self.band_level(mixture, 6000)
        assert out.samples.dtype == np.float32

    def test_lowpass_highpass(self):
        mixture = mix([tone(f, 2.0, 16000) for f in (300, 6000)], gain=0)
        low = mixture.lowpass(1000, order=6)
        high = mixture.highpass(1000, order=6)
        assert self.band_level(low, 6000) < 1e-3 and self.band_level(low, 300) > 0.45
        assert self.band_level(high, 300) < 1e-3 and self.band_level(high, 6000) > 0.45

    def test_bandpass_zero_phase(self):
        a = tone(2000, 1.0, 16000)
        b = a.bandpass(1000, 3000, order=4)
        # zero-phase: the filtered tone lines up with the original
        assert estimate_delay(b, a) == 0.0

    @pytest.mark.parametrize(("low", "high"), [(0, 1000), (1000, 8000), (3000, 1000)])
    def test_bandpass_invalid(self, low, high):
        with pytest.raises(OpsoValueError):
            tone(440, 1.0, 16000).bandpass(low, high, order=4)

    def test_normalize(self):
        a = tone(440, 1.0, 8000, amplitude=0.25)
        assert np.abs(a.normalize().samples).max() == pytest.approx(1.0)
        assert np.abs(a.normalize(peak_level=0.5).samples).max() == pytest.approx(0.5)
        assert np.abs(a.normalize(peak_dBFS=-6).samples).max() == pytest.approx(10 ** (-6 / 20))
        assert not Audio.silence(1, 100).normalize().samples.any()
        with pytest.raises(OpsoValueError):
            a.normalize(peak_level=1, peak_dBFS=0)

    def test_apply_gain(self):
        a = tone(440, 1.0, 8000, amplitude=0.5)
        assert a.apply_gain(-6).rms == pytest.approx(a.rms * 10 ** (-6 / 20), rel=1e-5)
        assert np.abs(a.apply_gain(20).samples).max() == 1.0
        assert np.abs(a.apply_gain(20, clip_range=None).samples).max() == pytest.approx(5, rel=1e-4)


class TestFiles:
    def test_from_file_whole_and_segment(self, wav_60s):
        path, samples = wav_60s
        a = Audio.from_file(path)
        assert a.sample_rate == SR and len(a.samples) == len(samples)
        np.testing.assert_array_equal(a.samples, samples)
        seg = Audio.from_file(path, offset=2.0, duration=1.0)
        assert seg.duration == 1.0
        np.testing.assert_array_equal(seg.samples, samples[2 * SR:3 * SR])
        assert seg.metadata["duration"] == 1.0 and np.isnan(seg.metadata["filesize"])

    def test_from_file_resample_on_load(self, wav_60s):
        path, _ = wav_60s
        a = Audio.from_file(path, sample_rate=22050, duration=2)
        assert a.sample_rate == 22050 and len(a.samples) == 44100
        assert a.metadata["samplerate"] == 22050

    def test_dtype(self, wav_60s):
        path, _ = wav_60s
        assert Audio.from_file(path, dtype=np.float64, duration=1).samples.dtype == np.float64

    def test_out_of_bounds(self, wav_60s):
        path, _ = wav_60s
        with pytest.warns(OutOfBoundsWarning, match="shorter than requested"):
            a = Audio.from_file(path, offset=59, duration=5)
        assert a.duration == 1.0
        with pytest.raises(AudioOutOfBoundsError):
            Audio.from_file(path, offset=59, duration=5, out_of_bounds_mode="raise")
        with pytest.raises(AudioOutOfBoundsError, match="zero samples"):
            Audio.from_file(path, offset=70, out_of_bounds_mode="raise")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert Audio.from_file(path, offset=59, duration=5, out_of_bounds_mode="ignore").duration == 1
        with pytest.raises(OpsoValueError):
            Audio.from_file(path, out_of_bounds_mode="maybe")

    def test_save_and_metadata_roundtrip(self, tmp_path):
        t0 = datetime.datetime(2024, 5, 1, 6, 0, tzinfo=datetime.UTC)
        a = Audio(tone(440, 1.0, 8000).samples, 8000, metadata={"recording_start_time": t0, "site": "A1",
                                                                "artist": "me"})
        a.save(tmp_path / "x.wav")
        back = Audio.from_file(tmp_path / "x.wav")
        assert back.metadata["recording_start_time"] == t0
        assert back.metadata["site"] == "A1" and back.metadata["artist"] == "me"
        np.testing.assert_allclose(back.samples, a.samples, atol=1e-4)  # PCM_16
        offset = Audio.from_file(tmp_path / "x.wav", offset=0.5)
        assert offset.metadata["recording_start_time"] == t0 + datetime.timedelta(seconds=0.5)

    def test_save_flac_and_float(self, tmp_path):
        a = tone(440, 1.0, 8000)
        a.save(tmp_path / "x.flac")
        assert Audio.from_file(tmp_path / "x.flac").duration == 1.0
        a.save(tmp_path / "f.wav", soundfile_subtype="FLOAT")
        np.testing.assert_array_equal(Audio.from_file(tmp_path / "f.wav").samples, a.samples)

    def test_parse_opso_metadata_rejects_garbage(self):
        with pytest.raises(OpsoValueError):
            parse_opso_metadata("opso_metadata{not json")

    def test_audiomoth_metadata_and_start_timestamp(self, tmp_path):
        t0 = datetime.datetime(2020, 4, 4, 10, 25, tzinfo=datetime.UTC)
        path = write_audiomoth_wav(tmp_path / "20200404_102500.WAV", tone(1000, 10.0, 16000), t0)
        a = Audio.from_file(path)
        assert a.metadata["recording_start_time"] == t0
        assert a.metadata["device_id"] == "AudioMoth 24F319055FDF2D37"
        seg = Audio.from_file(path, start_timestamp=t0 + datetime.timedelta(seconds=3), duration=2)
        assert seg.duration == 2.0
        assert seg.metadata["recording_start_time"] == t0 + datetime.timedelta(seconds=3)
        np.testing.assert_array_equal(seg.samples, a.samples[3 * 16000:5 * 16000])
        with pytest.raises(AudioOutOfBoundsError, match="before"):
            Audio.from_file(path, start_timestamp=t0 - datetime.timedelta(seconds=3), duration=5,
                            out_of_bounds_mode="raise")
        with pytest.warns(OutOfBoundsWarning):
            early = Audio.from_file(path, start_timestamp=t0 - datetime.timedelta(seconds=3), duration=5)
        assert early.duration == 2.0
        with pytest.raises(OpsoValueError):
            Audio.from_file(path, start_timestamp=datetime.datetime(2020, 4, 4))  # naive
        with pytest.raises(OpsoValueError):
            Audio.from_file(path, start_timestamp=t0, offset=1)

    def test_start_timestamp_needs_a_start_time(self, tmp_path):
        tone(440, 1, 8000).save(tmp_path / "plain.wav", metadata_format=None)
        with pytest.raises(OpsoValueError, match="start time"):
            Audio.from_file(tmp_path / "plain.wav", start_timestamp=datetime.datetime.now(datetime.UTC))

    def test_bad_files_raise_typed_errors(self, tmp_path):
        bad = write_bad_files(tmp_path)
        for key in ("empty", "not_audio", "bad_header"):
            with pytest.raises(AudioFormatError):
                Audio.from_file(bad[key])
        with pytest.raises(AudioFileNotFoundError):
            Audio.from_file(tmp_path / "missing.wav")
        with pytest.raises(FileNotFoundError):
            Audio.from_file(tmp_path / "missing.wav")

    def test_truncated_wav_warns_or_raises(self, tmp_path):
        bad = write_bad_files(tmp_path)
        with pytest.warns(TruncatedAudioWarning, match="cut short"):
            a = Audio.from_file(bad["truncated"])
        assert a.duration == pytest.approx(1.0, abs=1e-3)
        with pytest.raises(TruncatedAudioError):
            Audio.from_file(bad["truncated"], on_truncated="raise")
        with pytest.raises(OpsoError):
            Audio.from_file(bad["truncated"], on_truncated="raise")

    def test_stereo_mixdown_warns_and_channels_load_apart(self, tmp_path):
        left, right = tone(440, 1, 8000).samples, tone(880, 1, 8000).samples
        soundfile.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
        with pytest.warns(MixdownWarning, match="2 channels"):
            a = Audio.from_file(tmp_path / "s.wav")
        np.testing.assert_allclose(a.samples, (left + right) / 2, atol=1e-7)
        chans = load_channels_as_audio(tmp_path / "s.wav")
        assert len(chans) == 2
        np.testing.assert_array_equal(chans[0].samples, left)
        np.testing.assert_array_equal(chans[1].samples, right)
        assert chans[1].metadata["channel"] == "2 of 2"
        half = load_channels_as_audio(tmp_path / "s.wav", offset=0.5, sample_rate=4000)
        assert half[0].sample_rate == 4000 and half[0].duration == 0.5

    def test_from_bytesio(self, tmp_path):
        buf = io.BytesIO()
        soundfile.write(buf, tone(440, 1, 8000).samples, 8000, format="WAV")
        buf.seek(0)
        a = Audio.from_bytesio(buf, sample_rate=4000)
        assert a.sample_rate == 4000 and len(a.samples) == 4000
        with pytest.raises(AudioFormatError):
            Audio.from_bytesio(io.BytesIO(b"nope"))

    def test_fsspec_url(self, tmp_path):
        import fsspec

        tone(440, 2, 8000).save("memory://bucket/a.wav")
        assert fsspec.filesystem("memory").exists("/bucket/a.wav")
        a = Audio.from_file("memory://bucket/a.wav", offset=0.5, duration=1)
        assert a.duration == 1.0
        tone(440, 2, 8000).save(tmp_path / "x.wav")
        assert Audio.from_file(f"file://{tmp_path}/x.wav").duration == 2.0


class TestModuleFunctions:
    def test_concat(self):
        a = Audio(np.ones(100), 100)
        b = Audio(np.zeros(200), 200)
        c = concat([a, b])
        assert c.sample_rate == 100 and len(c.samples) == 200
        with pytest.raises(OpsoTypeError):
            concat([a, np.zeros(3)])

    def test_mix(self):
        a = Audio(np.full(100, 0.25), 100)
        b = Audio(np.full(50, 0.25), 100)
        m = mix([a, b], gain=0, offsets=[0, 0.5])
        assert m.duration == 1.0
        np.testing.assert_allclose(m.samples[:50], 0.25)
        np.testing.assert_allclose(m.samples[50:], 0.5)
        m2 = mix([a, b], duration=2.0, gain=[0, -6])
        assert m2.duration == 2.0 and m2.samples[0] == pytest.approx(0.25 + 0.25 * 10 ** (-6 / 20))
        assert mix([a, a, a, a, a], gain=0).samples.max() == 1.0  # clipped
        with pytest.raises(OpsoValueError):
            mix([a, b], gain=[0])

    @pytest.mark.parametrize("cc_filter", ["phat", "cc", "scot", "roth"])
    def test_estimate_delay(self, cc_filter):
        sr = 16000
        src = fm_sweep(1000, 5000, 0.5, sr)
        ref = mix([src], duration=2.0, offsets=[0.3], gain=0)
        delayed = mix([src], duration=2.0, offsets=[0.3 + 0.0125], gain=0)
        assert estimate_delay(delayed, ref, cc_filter=cc_filter) == pytest.approx(0.0125, abs=1 / sr)
        assert estimate_delay(ref, delayed, cc_filter=cc_filter) == pytest.approx(-0.0125, abs=1 / sr)
        d, cc_max = estimate_delay(delayed, ref, bandpass_range=(500, 6000), return_cc_max=True, max_delay=0.05)
        assert d == pytest.approx(0.0125, abs=1 / sr) and cc_max > 0


def test_small_helpers(tmp_path):
    from opso_core.audio import bandpass_filter, butter_bandpass, clipping_detector
    from opso_core.errors import MissingDependencyError

    assert clipping_detector([0.1, 0.7, -0.9, 0.95], threshold=0.6) == 2
    sos = butter_bandpass(500, 1500, 8000, order=4)
    assert sos.shape == (4, 6)
    x = tone(1000, 1.0, 8000).samples
    y = bandpass_filter(x, 500, 1500, 8000, order=4)
    assert np.std(y) == pytest.approx(np.std(x), rel=0.02)
    with pytest.raises(OpsoValueError):
        butter_bandpass(500, 1500, 8000, order=0)
    tone(440, 1.0, 8000).save(tmp_path / "u.wav")
    assert Audio.from_url(f"file://{tmp_path}/u.wav").duration == 1.0
    a = tone(440, 0.1, 8000)
    try:
        import IPython  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="notebooks"):
            a._to_ipdisplay_audio()
        assert a._repr_html_() is None
    else:
        assert "audio" in a._repr_html_().lower()
