import numpy as np
import pytest
import scipy.signal

from opso_core.errors import OpsoValueError
from opso_core.signal_processing import gcc, tdoa, thresholded_event_durations


def test_gcc_cc_equals_scipy_correlate():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(100), rng.standard_normal(80)
    cc = gcc(x, y, cc_filter="cc")
    ref = scipy.signal.correlate(x, y, mode="full")  # lags -(79)..99
    for lag in (-5, 0, 7, 42):
        assert cc[lag] == pytest.approx(ref[lag + 79], abs=1e-9)


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
