import numpy as np
import pytest

from opso_core import Audio, Spectrogram
from opso_core.audio import mix
from opso_core.errors import OpsoValueError
from opso_core.ribbit import RibbitParams, calculate_pulse_score, ribbit, ribbit_batch
from opso_core.testing import noise, pulse_train

SR = 22050


def frog(rate_hz, duration_s=2.0, carrier_hz=2000, start_s=0.0):
    return pulse_train(rate_hz, carrier_hz, duration_s, SR, start_s=start_s)


def test_calculate_pulse_score_peaks_at_the_true_rate():
    t = np.arange(400) / 100.0  # 4 s sampled at 100 Hz
    amp = 1 + np.sin(2 * np.pi * 12 * t)
    in_range = calculate_pulse_score(amp, 100, [10, 15])
    out_of_range = calculate_pulse_score(amp, 100, [20, 30])
    assert in_range > 100 * out_of_range
    assert calculate_pulse_score(amp, 100, [60, 70]) == 0  # above Nyquist: no bin inside
    with pytest.raises(OpsoValueError):
        calculate_pulse_score([], 100, [10, 15])
    with pytest.raises(OpsoValueError):
        calculate_pulse_score(amp, 100, [15, 10])


def test_12hz_pulse_train_scores_highest_in_10_to_15():
    spec = Spectrogram.from_audio(mix([frog(12, 4.0), noise(4.0, SR, dBFS=-60)], gain=0))
    scores = {rng: ribbit(spec, [1800, 2200], list(rng), clip_duration=2.0)["score"].mean()
              for rng in ((4, 8), (10, 15), (18, 25), (30, 40))}
    assert max(scores, key=scores.get) == (10, 15)


def test_ribbit_finds_the_call_in_time():
    call = frog(12, 2.0, start_s=0.0)
    audio = mix([Audio.silence(10, SR), call, noise(10, SR, dBFS=-60)], offsets=[0, 4.0, 0], gain=0)
    df = ribbit(Spectrogram.from_audio(audio), [1800, 2200], [10, 15], clip_duration=2.0,
                noise_bands=[[0, 1000], [4000, 5000]])
    assert list(df.columns) == ["start_time", "end_time", "score"]
    assert list(df.start_time) == [0.0, 2.0, 4.0, 6.0]  # 10 s of windows end just before 10 s
    assert df.score.idxmax() == 2
    assert df.score[2] > 10 * df.score.drop(2).max()


def test_ribbit_clip_options():
    spec = Spectrogram.from_audio(frog(12, 5.0))
    # the windows of 5 s of audio end just before 5 s, so [3, 5] is not a whole clip
    assert len(ribbit(spec, [1800, 2200], [10, 15], 2.0, clip_overlap=1.0)) == 3
    assert len(ribbit(spec, [1800, 2200], [10, 15], 2.0, clip_overlap=1.0, final_clip="full")) == 4
    assert len(ribbit(spec, [1800, 2200], [10, 15], 2.0, final_clip="remainder")) == 3
    with pytest.raises(OpsoValueError, match="extend"):
        ribbit(spec, [1800, 2200], [10, 15], 2.0, final_clip="extend")


def test_batch_equals_per_clip_ribbit():
    clips = [frog(r, 2.0) for r in (6, 12, 20)] + [noise(2.0, SR, dBFS=-30, seed=1)]
    species = [RibbitParams(name="fast", signal_band=(1800, 2200), pulse_rate_range=(15, 25)),
               RibbitParams(name="mid", signal_band=(1800, 2200), pulse_rate_range=(10, 15),
                            noise_bands=((0, 1000), (3000, 3200)))]
    specs = [Spectrogram.from_audio(c) for c in clips]
    values = np.stack([s.spectrogram for s in specs])
    batch = ribbit_batch(values, specs[0].frequencies, specs[0].window_step, species)
    for sp in species:
        for i, spec in enumerate(specs):
            expected = ribbit(spec, list(sp.signal_band), list(sp.pulse_rate_range), clip_duration=2.0,
                              final_clip="full", noise_bands=[list(b) for b in sp.noise_bands] or None)
            assert len(expected) == 1
            assert batch[sp.name][i] == pytest.approx(expected.score[0], rel=1e-12)
    assert np.argmax(batch["mid"]) == 1 and np.argmax(batch["fast"]) == 2


def test_batch_validates():
    with pytest.raises(OpsoValueError):
        RibbitParams(name="x", signal_band=(2000, 1000), pulse_rate_range=(1, 2))
    with pytest.raises(OpsoValueError):
        ribbit_batch(np.zeros((2, 3)), np.arange(3.0), 0.01, RibbitParams(name="x", signal_band=(0, 1),
                                                                              pulse_rate_range=(1, 2)))


@pytest.mark.parametrize("n", [5, 100, 249, 256, 257, 1000, 9999])
@pytest.mark.parametrize("nfft", [None, 1024])
def test_welch_equals_scipy(n, nfft):
    import scipy.signal

    from opso_core.stft import welch_psd

    x = np.random.default_rng(n).standard_normal((2, n))
    nperseg = min(256, n)
    f_ref, p_ref = scipy.signal.welch(x, fs=125.0, nperseg=nperseg, nfft=nfft, axis=-1)
    f, p = welch_psd(x, 125.0, nperseg, nfft)
    np.testing.assert_array_equal(f, f_ref)
    np.testing.assert_allclose(p, p_ref, rtol=1e-12, atol=0)
