import numpy as np
import pytest

from opso_core.mel import hz_to_mel, mel_filter_bank, mel_frequencies, mel_to_hz


def test_slaney_scale_known_points():
    assert hz_to_mel(0) == 0
    assert hz_to_mel(1000) == pytest.approx(15.0)
    assert hz_to_mel(200) == pytest.approx(3.0)
    # 27 mels above 1 kHz is a factor 6.4
    assert hz_to_mel(6400) == pytest.approx(15 + 27)


def test_htk_scale_known_points():
    assert hz_to_mel(700, htk=True) == pytest.approx(2595 * np.log10(2))
    assert mel_to_hz(1000, htk=True) == pytest.approx(700 * (10 ** (1000 / 2595) - 1))


@pytest.mark.parametrize("htk", [False, True])
def test_round_trip(htk):
    f = np.array([0, 50, 999.9, 1000, 4000, 20000])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f, htk=htk), htk=htk), f, atol=1e-8)


def test_mel_frequencies_endpoints():
    f = mel_frequencies(10, 0, 8000)
    assert f[0] == 0 and f[-1] == pytest.approx(8000) and len(f) == 10


def test_filter_bank_shape_and_triangles():
    fb = mel_filter_bank(16000, 512, n_mels=20, norm=None)
    assert fb.shape == (20, 257)
    assert fb.max() <= 1 + 1e-12 and fb.min() == 0
    # each frequency between the first and last centre is covered by at most two filters
    assert np.all((fb > 0).sum(0) <= 2)
    peaks = np.argmax(fb, axis=1)
    assert np.all(np.diff(peaks) >= 0)


def test_slaney_norm_equal_area():
    fb = mel_filter_bank(16000, 4096, n_mels=20, norm="slaney")
    df = 16000 / 4096
    areas = fb.sum(1) * df  # triangle area in Hz * height = 1 when normalised by width/2
    np.testing.assert_allclose(areas, 1.0, rtol=0.02)


def test_p_norm():
    fb = mel_filter_bank(16000, 512, n_mels=10, norm=2)
    np.testing.assert_allclose(np.linalg.norm(fb, axis=1), 1.0)
