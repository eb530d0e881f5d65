import datetime

import numpy as np
import pytest

from opso_core import Audio, Spectrogram, testing
from opso_core.errors import OpsoValueError


def test_tone():
    a = testing.tone(1000, 2.0, 16000, amplitude=0.5)
    fft, f = a.spectrum()
    assert f[np.argmax(fft)] == 1000 and a.duration == 2.0 and np.abs(a.samples).max() <= 0.5


def test_pulse_train_has_the_pulse_rate():
    a = testing.pulse_train(pulse_rate_hz=12, carrier_hz=2000, duration_s=4.0, sample_rate_hz=16000)
    spec = Spectrogram.from_audio(a, window_samples=256, overlap_samples=128)
    amp = spec.amplitude([1800, 2200])
    amp = amp - amp.mean()
    rate_hz = 1 / spec.window_step
    power = np.abs(np.fft.rfft(amp)) ** 2
    freqs = np.fft.rfftfreq(len(amp), 1 / rate_hz)
    assert freqs[np.argmax(power[1:]) + 1] == pytest.approx(12, abs=0.3)
    with pytest.raises(OpsoValueError):
        testing.pulse_train(0, 2000, 1, 16000)


def test_fm_sweep_and_clicks():
    sweep = testing.fm_sweep(1000, 4000, 1.0, 16000)
    spec = Spectrogram.from_audio(sweep)
    for column in (2, 30, -3):  # a linear sweep is at 1000 + 3000 t Hz at time t
        peak = spec.frequencies[np.argmax(spec.spectrogram[:, column])]
        assert peak == pytest.approx(1000 + 3000 * spec.times[column], abs=2 * spec.frequencies[1])
    c = testing.clicks([0.1, 0.5], 1.0, 1000)
    assert np.flatnonzero(c.samples == c.samples.max()).tolist() == [100, 500]


def test_audiomoth_comment_roundtrip(tmp_path):
    from opso_core.aru import parse_audiomoth_comment

    t = datetime.datetime(2024, 3, 1, 22, 15, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))
    parsed = parse_audiomoth_comment(testing.audiomoth_comment(t, battery_v=3.9, temperature_c=-2.0))
    assert parsed["recording_start_time"] == t and parsed["battery_state"] == 3.9
    assert parsed["temperature_C"] == -2.0
    assert testing.audiomoth_file_name(t) == "20240302_031530.WAV"


def test_make_archive(tmp_path):
    arch = testing.make_archive(tmp_path, n_recorders=2, files_per_recorder=2, file_duration_s=10,
                                sample_rate_hz=8000, frog_calls_per_file=1, seed=3)
    assert len(arch.files) == 4 and set(arch.files["recorder"]) == {"rec00", "rec01"}
    for row in arch.files.itertuples():
        a = Audio.from_file(row.file)
        assert a.duration == 10.0 and a.sample_rate == 8000
        assert a.metadata["recording_start_time"] == row.start_time_utc
    frogs = arch.events[arch.events.kind == "frog"]
    assert len(frogs) == 4  # one call per file period, heard by both recorders
    # the same call reaches the two recorders with the travel-time difference
    for _, pair in frogs.groupby("event_id"):
        a, b = pair.sort_values("recorder").itertuples()
        assert (b.start_time - a.start_time) == pytest.approx(b.delay_s - a.delay_s)
    # the archive is deterministic
    again = testing.make_archive(tmp_path / "again", n_recorders=2, files_per_recorder=2, file_duration_s=10,
                                 sample_rate_hz=8000, frog_calls_per_file=1, seed=3)
    np.testing.assert_array_equal(Audio.from_file(arch.files.file[0]).samples,
                                  Audio.from_file(again.files.file[0]).samples)
