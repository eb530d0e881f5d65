import numpy as np
import pytest
import scipy.signal

from opso_core.errors import OpsoValueError
from opso_core.signal_processing import gcc, tdoa, thresholded_event_durations


def test_gcc_cc_equals_scipy_correlate():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(100), rng.standard_normal(80)
    cc = gcc(x, y, cc_filter="cc")
    np.testing.assert_allclose(cc, scipy.signal.correlate(x, y, mode="full"), atol=1e-9)  # lags -79..99
    assert len(cc) == len(scipy.signal.correlation_lags(100, 80))


@pytest.mark.parametrize("cc_filter", ["phat", "cc", "scot", "roth", "ht"])
def test_gcc_peaks_at_the_lag_of_a_shifted_impulse(cc_filter):
    rng = np.random.default_rng(7)
    a, b = rng.random(1000), rng.random(1000)
    a[500:510] += 3
    b[300:310] += 3  # a lags b by 200 samples
    lags = scipy.signal.correlation_lags(len(a), len(b))
    assert lags[np.argmax(gcc(a, b, cc_filter=cc_filter))] == 200


@pytest.mark.parametrize("cc_filter", ["phat", "cc", "scot", "roth", "ht"])
def test_tdoa_recovers_integer_delay(cc_filter):
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(2000)
    sig = np.roll(ref, 37)
    assert tdoa(sig, ref, cc_filter=cc_filter, sample_rate=1000) == pytest.approx(0.037)
    assert tdoa(ref, sig, cc_filter=cc_filter, sample_rate=1000) == pytest.approx(-0.037)


def test_tdoa_max_delay_and_return_max():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal(2000)
    sig = np.roll(ref, 300)
    assert tdoa(sig, ref, sample_rate=1000) == pytest.approx(0.3)
    delay, peak = tdoa(sig, ref, sample_rate=1000, max_delay=0.1, return_max=True)
    assert abs(delay) <= 0.1 and peak > 0
    with pytest.raises(OpsoValueError):
        tdoa(sig, ref, max_delay=-1)
    with pytest.raises(OpsoValueError):
        gcc(sig, ref, cc_filter="magic")


def test_thresholded_event_durations():
    x = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 1])
    starts, durations = thresholded_event_durations(x, 0.5, sample_rate=10)
    np.testing.assert_allclose(starts, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(durations, [0.2, 0.3, 0.1])
    starts, _ = thresholded_event_durations(x * 5, 0.5, normalize=True)
    assert list(starts) == [1, 5, 9]


def _drum(duration_s=20.0, sample_rate=8000, start_s=3.0, seed=0):
    """A synthetic Ruffed Grouse drum: 50 Hz thumps whose spacing shrinks from 0.6 s to 0.12 s."""
    from opso_core.audio import Audio

    rng = np.random.default_rng(seed)
    intervals = np.linspace(0.6, 0.12, 24)
    beats = start_s + np.concatenate([[0.0], np.cumsum(intervals)])
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    samples = rng.normal(0, 0.01, t.size)
    for beat in beats:
        window = (t >= beat) & (t < beat + 0.04)
        samples[window] += 0.5 * np.sin(2 * np.pi * 50 * (t[window] - beat)) * np.hanning(window.sum())
    return Audio(samples.astype(np.float32), sample_rate), beats


def test_frequency2scale_inverts_pywt_scale2frequency():
    import pywt

    from opso_core.signal_processing import frequency2scale

    f_hz = pywt.scale2frequency("morl", 5) * 44100
    assert frequency2scale(f_hz, "morl", 44100) == pytest.approx(5)
    with pytest.raises(OpsoValueError):
        frequency2scale(0, "morl", 44100)


def test_cwt_peaks_finds_every_thump():
    from opso_core.signal_processing import cwt_peaks

    audio, beats = _drum()
    times, levels = cwt_peaks(audio.resample(400), center_frequency=50, peak_separation=15 / 400)
    assert len(times) == len(beats)
    np.testing.assert_allclose(times, beats + 0.02, atol=0.02)  # the middle of each 40 ms thump
    assert max(levels) == pytest.approx(1.0) and min(levels) >= 0.2
    with pytest.raises(OpsoValueError, match="Nyquist"):
        cwt_peaks(audio.resample(400), center_frequency=300)


def test_find_accel_sequences_keeps_the_accelerating_run_only():
    from opso_core.signal_processing import find_accel_sequences

    rng = np.random.default_rng(5)
    accelerating = 2 + np.concatenate([[0], np.cumsum(np.linspace(0.6, 0.12, 20))])
    noise = np.sort(rng.uniform(20, 40, 15))  # random clutter: no steady acceleration
    seq_t, seq_y = find_accel_sequences(np.concatenate([accelerating, noise]))
    assert len(seq_t) == 1
    np.testing.assert_allclose(seq_t[0], accelerating[1:-1])  # the first point is the reference; the last has no y
    np.testing.assert_allclose(seq_y[0], np.diff(accelerating)[1:])
    assert find_accel_sequences([1.0, 2.0]) == ([], [])
    assert find_accel_sequences(accelerating, points_range=(50, 100)) == ([], [])


def test_detect_peak_sequence_cwt_finds_the_drum():
    from opso_core.signal_processing import detect_peak_sequence_cwt

    audio, beats = _drum()
    detections = detect_peak_sequence_cwt(audio, window_len=20)
    assert len(detections) == 1
    row = detections.iloc[0]
    assert row.seq_len >= 20
    assert row.seq_start_time == pytest.approx(beats[1] + 0.02, abs=0.03)
    assert row.seq_end_time == pytest.approx(beats[-2] + 0.02, abs=0.03)
    empty = detect_peak_sequence_cwt(audio.trim(0, 1), window_len=10)
    assert len(empty) == 0 and "seq_len" in empty.columns


def test_get_ones_sequences():
    from opso_core.signal_processing import _get_ones_sequences

    assert _get_ones_sequences(np.array([1, 1, 1, 0, 1, 1, 0, 1])) == ([0, 4, 7], [3, 2, 1])
    with pytest.raises(OpsoValueError):
        _get_ones_sequences([0, 2])


def test_band_limited_gcc_keeps_out_of_band_noise_out_of_phat():
    from opso_core.signal_processing import band_limited_gcc

    sr, n, delay = 16000, 8000, 37
    sos = scipy.signal.butter(8, [1500, 2500], btype="bandpass", fs=sr, output="sos")
    lags = scipy.signal.correlation_lags(n, n)
    found = {"phat": 0, "phat in band": 0}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        call = scipy.signal.sosfilt(sos, rng.standard_normal(n + delay))
        ref = call[delay:] + 1.0 * rng.standard_normal(n)  # white noise, loud outside the call's band
        sig = call[:n] + 1.0 * rng.standard_normal(n)  # the call arrives 37 samples later here
        found["phat"] += lags[np.argmax(gcc(sig, ref, "phat"))] == delay
        found["phat in band"] += lags[np.argmax(band_limited_gcc(sig, ref, "phat", band_hz=(1500, 2500),
                                                                 sample_rate=sr))] == delay
        np.testing.assert_allclose(band_limited_gcc(sig, ref, "cc"), gcc(sig, ref, "cc"))
    assert found["phat in band"] == 10 and found["phat"] <= 7  # measured: 10 and 6
    with pytest.raises(OpsoValueError):
        band_limited_gcc(ref, ref, "phat", band_hz=(2500, 1500), sample_rate=sr)
